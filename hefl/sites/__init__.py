"""The sites of a cluster: one hospital identity per site, each holding only its own keys.

A cluster's key ceremony issues its hospital identities once (``hospital-1`` ... ``hospital-M``);
the cluster runs N <= M sites, one per identity, each a separate service (compose) or Deployment
(Kubernetes) that receives only its own key share and its own broker login. This package writes
those per-site definitions from one template each, so no script decides which site gets what:

- ``compose``: the sites override of ``docker/compose.yaml`` (``python -m hefl.sites compose``);
- ``kubernetes``: one Deployment per site from ``k8s/templates/hospital-site.yaml``;
- ``broker``: one RabbitMQ user per participant, confined by ``common.transport.brokerconf``.

It imports neither Pyfhel nor TensorFlow: the host tools run it before any image exists.
"""

from __future__ import annotations

from typing import Final

from common.errors import ConfigError

__all__ = ["SITE_PREFIX", "SiteError", "check_sites", "site_names"]

#: Hospital identities are ``hospital-1`` ... (``common.protocol.runconfig.hospital_names``).
SITE_PREFIX: Final = "hospital-"


class SiteError(ConfigError):
    """More sites than identities issued, or none: the cluster cannot run them."""


def site_names(count: int) -> tuple[str, ...]:
    """``hospital-1`` ... ``hospital-<count>``: the identities, and the sites that run them."""
    return tuple(f"{SITE_PREFIX}{k}" for k in range(1, count + 1))


def check_sites(sites: int, issued: int) -> tuple[str, ...]:
    """The names of ``sites`` sites, which must be between 1 and the ``issued`` identities."""
    if sites < 1:
        raise SiteError(f"HOSPITALS={sites}: a cluster runs at least one hospital site")
    if sites > issued:
        raise SiteError(
            f"HOSPITALS={sites} is more than the {issued} identities this cluster's keys hold; "
            f"keys are issued once per cluster: make clean, then make up HOSPITALS={sites} (or "
            f"HEFL_HOSPITALS=M HOSPITALS={sites} for room to scale to M)"
        )
    return site_names(sites)
