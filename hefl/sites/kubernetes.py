"""The Kubernetes sites: one Deployment per hospital identity, each mounting only its own Secrets.

A StatefulSet's pods all mount the Secrets of one pod template, so a hospital StatefulSet would
hand every pod every site's signing key. Instead ``k8s/templates/hospital-site.yaml`` describes
one site (``${site}``: its Deployment, naming the Secrets ``hefl-${site}-keys`` and
``hefl-${site}-broker``, and its models volume), and ``manifests`` repeats it for ``hospital-1``
... ``hospital-N``, with the ``hefl-sites`` ConfigMap telling the coordinator which sites take
part. ``make k8s-sites HOSPITALS=N`` writes the result to ``k8s/hospitals.yaml``, a resource of
the kustomize base (so it gets the base's namespace and image tags).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Final

import yaml

from common.errors import ConfigError
from hefl.sites import site_names

SITES_CONFIG: Final = "hefl-sites"
HEADER: Final = (
    "# Generated from k8s/templates/hospital-site.yaml by `make k8s-sites HOSPITALS={count}`\n"
    "# (python -m hefl.sites k8s): one Deployment per hospital site. Do not edit: edit the\n"
    "# template and generate again.\n"
)


class _Dumper(yaml.SafeDumper):
    """Block YAML without anchors: each site's manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def site_manifests(template: str, site: str) -> list[dict[str, Any]]:
    """The template's documents for one site."""
    try:
        text = string.Template(template).substitute(site=site)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"the site template names something other than ${{site}}: {exc}") from exc
    return [doc for doc in yaml.safe_load_all(text) if doc]


def sites_config(sites: Sequence[str]) -> dict[str, Any]:
    """The coordinator's view of the sites: who takes part, and how many round 1 waits for."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": SITES_CONFIG},
        "data": {
            "HEFL_PARTICIPANTS": ",".join(sites),
            "HEFL_EXPECT_HOSPITALS": str(len(sites)),
        },
    }


def manifests(template: str, count: int) -> list[dict[str, Any]]:
    """``hefl-sites`` and every site's documents, ``hospital-1`` first."""
    if count < 1:
        raise ConfigError(f"HOSPITALS={count}: a cluster runs at least one hospital site")
    sites = site_names(count)
    return [sites_config(sites), *(doc for site in sites for doc in site_manifests(template, site))]


def render(documents: Sequence[dict[str, Any]], count: int) -> str:
    """``k8s/hospitals.yaml``: the header, then the documents."""
    body = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return HEADER.format(count=count) + "---\n" + body


def count_in(rendered: str) -> int:
    """How many sites a rendered file holds (its ``hefl-sites`` ConfigMap says)."""
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == SITES_CONFIG:
            return int(doc["data"]["HEFL_EXPECT_HOSPITALS"])
    raise ConfigError(f"no {SITES_CONFIG} ConfigMap: not a file `make k8s-sites` wrote")
