"""The compose cluster's sites: one service per hospital identity, each with only its own keys.

``docker/compose.yaml`` holds two templates, ``x-site-keys`` (a one-shot ``hefl keys-install``
of one site's share) and ``x-hospital-site`` (the site itself). ``override`` repeats them for
``hospital-1`` ... ``hospital-N`` into an override file that compose reads after the base file:

- ``keys-hospital-K``: installs hospital-K's share (the hospital HE bundle, ``trust.json`` and
  its own identity file: its signing key and its masking key) from the ceremony's
  ``hospital-keys`` volume into ``keys-hospital-K``;
- ``hospital-K``: mounts ``keys-hospital-K`` read-only at ``/keys`` and no other key volume,
  reads its broker password from its own file (a compose secret), and runs as ``HEFL_HOSPITAL``;
- the coordinator's ``HEFL_PARTICIPANTS``: the identities issued for this cluster (the sites it
  may run), not whatever else a ceremony's ``trust.json`` might list.
- with a broker cluster (``broker_nodes`` 3: ``docker/compose.broker-cluster.yaml``), every
  participant's ``HEFL_BROKER_URL``: the URLs of the three nodes (``broker.compose_broker_urls``).

Key volumes and broker secrets are declared for every issued identity, so scaling down leaves
a site's keys in place for scaling up again, and ``down --volumes`` removes them all.

``scrape_targets`` lists the same sites for Prometheus (its file-based discovery): each site's
``/metrics`` at the port the site template gives ``HEFL_HTTP_PORT``, labelled with the site.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from common.errors import ConfigError
from hefl.sites import check_sites, site_names
from hefl.sites.broker import compose_broker_urls

SITE_KEYS_TEMPLATE: Final = "x-site-keys"
SITE_TEMPLATE: Final = "x-hospital-site"
#: Where the broker password files are, relative to docker/ (the base file's folder, which
#: compose resolves every file's relative paths against).
SECRETS_DIR: Final = "./.secrets/broker"
PASSWORD_TARGET: Final = "broker-password"  # /run/secrets/broker-password
KEYS_MOUNT: Final = "/keys"
#: The site template's variable naming the port of its /metrics (hefl --http-port).
METRICS_PORT_VARIABLE: Final = "HEFL_HTTP_PORT"
DONE: Final = {"condition": "service_completed_successfully"}


def key_volume(site: str) -> str:
    return f"keys-{site}"


def keys_service(site: str) -> str:
    return f"keys-{site}"


def password_secret(name: str) -> str:
    return f"broker-{name}"


def password_file(name: str) -> str:
    """A participant's broker password file, relative to docker/ (written by
    ``docker/broker_credentials.py``)."""
    return f"{SECRETS_DIR}/{name}.password"


def override(
    base: Mapping[str, Any], *, sites: int, issued: int, broker_nodes: int = 1
) -> dict[str, Any]:
    """The override that runs ``sites`` sites of a cluster whose keys hold ``issued`` identities
    on ``broker_nodes`` broker nodes (1, or 3 with ``docker/compose.broker-cluster.yaml``).

    ``base`` is ``docker/compose.yaml`` as loaded (anchors resolved); only its templates are used.
    """
    names = check_sites(sites, issued)
    everyone = site_names(issued)
    broker_url = compose_broker_urls(broker_nodes)
    coordinator = {"HEFL_PARTICIPANTS": ",".join(everyone)}
    if broker_nodes != 1:
        coordinator["HEFL_BROKER_URL"] = broker_url
    services: dict[str, Any] = {"coordinator": {"environment": coordinator}}
    for site in names:
        services[keys_service(site)] = _keys_step(_template(base, SITE_KEYS_TEMPLATE), site)
        services[site] = _site(_template(base, SITE_TEMPLATE), site)
        if broker_nodes != 1:
            services[site]["environment"]["HEFL_BROKER_URL"] = broker_url
    return {
        "services": services,
        "volumes": {key_volume(site): {} for site in everyone},
        "secrets": {password_secret(site): {"file": password_file(site)} for site in everyone},
    }


def scrape_targets(base: Mapping[str, Any], *, sites: int, issued: int) -> list[dict[str, Any]]:
    """Prometheus's file-based discovery of the ``sites`` sites that ``override`` runs: one
    group per site (``hospital-K:PORT``, label ``site``), none when the template serves no
    metrics (no ``HEFL_HTTP_PORT``)."""
    names = check_sites(sites, issued)
    port = _template(base, SITE_TEMPLATE).get("environment", {}).get(METRICS_PORT_VARIABLE)
    if port in (None, ""):
        return []
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"the {SITE_TEMPLATE} template's {METRICS_PORT_VARIABLE} is {port!r}")
    return [{"targets": [f"{site}:{int(port)}"], "labels": {"site": site}} for site in names]


def site_services(override_: Mapping[str, Any]) -> list[str]:
    """The services of the sites (key steps first), for ``compose up`` of the sites alone."""
    services = [name for name in override_["services"] if name != "coordinator"]
    return sorted(services, key=lambda name: not name.startswith("keys-"))


def _template(base: Mapping[str, Any], name: str) -> dict[str, Any]:
    try:
        template = base[name]
    except KeyError:
        raise ConfigError(f"the compose file has no {name} template") from None
    return copy.deepcopy(dict(template))


def _keys_step(service: dict[str, Any], site: str) -> dict[str, Any]:
    service["environment"] = {**service.get("environment", {}), "HEFL_HOSPITAL": site}
    service["volumes"] = [*service.get("volumes", []), f"{key_volume(site)}:{KEYS_MOUNT}"]
    return service


def _site(service: dict[str, Any], site: str) -> dict[str, Any]:
    volumes = service.get("volumes", [])
    if any(_target(v) == KEYS_MOUNT for v in volumes):
        raise ConfigError(f"the {SITE_TEMPLATE} template mounts {KEYS_MOUNT}: the site's own")
    service["environment"] = {**service.get("environment", {}), "HEFL_HOSPITAL": site}
    service["volumes"] = [f"{key_volume(site)}:{KEYS_MOUNT}:ro", *volumes]
    service["secrets"] = [{"source": password_secret(site), "target": PASSWORD_TARGET}]
    service["depends_on"] = {**service.get("depends_on", {}), keys_service(site): dict(DONE)}
    return service


def _target(volume: str | Mapping[str, Any]) -> str:
    if isinstance(volume, Mapping):
        return str(volume.get("target", ""))
    parts = volume.split(":")
    return parts[1] if len(parts) > 1 else parts[0]
