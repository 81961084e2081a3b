"""The Kubernetes sites: one Deployment per hospital identity, each mounting only its own Secrets.

A StatefulSet's pods all mount the Secrets of one pod template, so a hospital StatefulSet would
hand every pod every site's signing key. Instead ``k8s/templates/hospital-site.yaml`` describes
one site (``${site}``: its Deployment, naming the Secrets ``hefl-${site}-keys`` and
``hefl-${site}-broker``, and its models volume), and ``manifests`` repeats it for ``hospital-1``
... ``hospital-N``, with the ``hefl-sites`` ConfigMap telling the coordinator which sites take
part. ``make k8s-sites HOSPITALS=N`` writes the result to ``k8s/hospitals.yaml``, a resource of
the kustomize base (so it gets the base's namespace and image tags).

The same file carries Prometheus's target list of the sites (``hefl-prometheus-sites``, in the
file-based discovery format): each site's Service port named ``metrics``, labelled with the site.
Debian's Prometheus (the hefl-prometheus image) has no Kubernetes discovery; this list changes
with the sites, and Prometheus rereads the mounted ConfigMap by itself.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any, Final

import yaml

from common.errors import ConfigError
from hefl.sites import site_names

SITES_CONFIG: Final = "hefl-sites"
SCRAPE_CONFIG: Final = "hefl-prometheus-sites"
SCRAPE_FILE: Final = "sites.json"
METRICS_PORT: Final = "metrics"  # the name of a site Service's port that serves /metrics
HEADER: Final = (
    "# Generated from k8s/templates/hospital-site.yaml by `make k8s-sites HOSPITALS={count}`\n"
    "# (python -m hefl.sites k8s): one Deployment per hospital site. Do not edit: edit the\n"
    "# template and generate again.\n"
)


class _Dumper(yaml.SafeDumper):
    """Block YAML without anchors: each site's manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    """Multi-line text (a file a ConfigMap holds) as a literal block, readable as it is."""
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|" if "\n" in data else None
    )


_Dumper.add_representer(str, _text)


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


def scrape_targets(site: str, documents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prometheus's targets of one site: each of its Services' ports named ``metrics``."""
    return [
        {"targets": [f"{doc['metadata']['name']}:{port['port']}"], "labels": {"site": site}}
        for doc in documents
        if doc.get("kind") == "Service"
        for port in doc.get("spec", {}).get("ports", [])
        if port.get("name") == METRICS_PORT
    ]


def scrape_config(targets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``hefl-prometheus-sites``: the sites' targets, one file for Prometheus's file discovery."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": SCRAPE_CONFIG},
        "data": {SCRAPE_FILE: "[\n" + ",\n".join(json.dumps(t) for t in targets) + "\n]\n"},
    }


def manifests(template: str, count: int) -> list[dict[str, Any]]:
    """``hefl-sites``, ``hefl-prometheus-sites`` and every site's documents, ``hospital-1``
    first."""
    if count < 1:
        raise ConfigError(f"HOSPITALS={count}: a cluster runs at least one hospital site")
    sites = site_names(count)
    per_site = {site: site_manifests(template, site) for site in sites}
    targets = [target for site, docs in per_site.items() for target in scrape_targets(site, docs)]
    return [
        sites_config(sites),
        scrape_config(targets),
        *(doc for docs in per_site.values() for doc in docs),
    ]


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
