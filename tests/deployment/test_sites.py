"""One identity per site: the compose services and Kubernetes Deployments that hefl.sites writes
give each hospital site its own key volume or Secret and its own broker login, and nothing of
another site's. The running cluster is checked in tests/containers/test_compose.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.errors import ConfigError
from common.protocol.runconfig import hospital_names
from hefl.sites import SiteError, check_sites, site_names
from hefl.sites import compose as compose_sites
from hefl.sites import kubernetes as k8s_sites

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
TEMPLATE = (ROOT / "k8s" / "templates" / "hospital-site.yaml").read_text()


def test_sites_are_named_as_the_ceremony_names_hospitals() -> None:
    assert site_names(12) == hospital_names(12)
    assert check_sites(3, 4) == ("hospital-1", "hospital-2", "hospital-3")
    with pytest.raises(SiteError, match="more than the 4 identities"):
        check_sites(5, 4)
    with pytest.raises(SiteError, match="at least one"):
        check_sites(0, 4)


# -- compose -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return compose_sites.override(BASE, sites=3, issued=4)


def key_volumes(service: dict[str, Any]) -> list[str]:
    """The service's mounts of key volumes (the ceremony's or a site's)."""
    return [v for v in service.get("volumes", []) if "keys" in v.split(":")[0]]


def tls_mounts(service: dict[str, Any]) -> list[str]:
    """The service's mounts of the broker's TLS files (docker/.secrets/tls/)."""
    return [v for v in service.get("volumes", []) if v.startswith("./.secrets/tls/")]


def test_each_compose_site_mounts_only_its_own_key_volume_and_broker_secret(
    override: dict[str, Any],
) -> None:
    services = override["services"]
    sites = [name for name in services if name.startswith("hospital-")]
    assert sites == ["hospital-1", "hospital-2", "hospital-3"]
    for site in sites:
        service = services[site]
        assert service["environment"]["HEFL_HOSPITAL"] == site
        assert key_volumes(service) == [f"keys-{site}:/keys:ro"]  # no ceremony, no other site
        assert service["secrets"] == [{"source": f"broker-{site}", "target": "broker-password"}]
        environment = service["environment"]
        assert environment["HEFL_BROKER_PASSWORD_FILE"] == "/run/secrets/broker-password"
        assert environment["HEFL_BROKER_URL"] == "amqps://rabbitmq:5671/hefl"  # user: the site
        assert environment["HEFL_BROKER_CA"] == "/etc/hefl/broker-ca.pem"
        assert tls_mounts(service) == ["./.secrets/tls/ca.pem:/etc/hefl/broker-ca.pem:ro"]
        assert "HEFL_IDENTITY" not in service["environment"]  # named, never claimed
        assert service["depends_on"][f"keys-{site}"] == {
            "condition": "service_completed_successfully"
        }
        step = services[f"keys-{site}"]
        assert step["environment"]["HEFL_HOSPITAL"] == site
        assert key_volumes(step) == ["hospital-keys:/ceremony:ro", f"keys-{site}:/keys"]
        assert step["network_mode"] == "none" and step["command"] == ["install-keys"]


def test_the_coordinator_plans_for_the_issued_sites_and_every_one_has_a_volume_and_login(
    override: dict[str, Any],
) -> None:
    everyone = ["hospital-1", "hospital-2", "hospital-3", "hospital-4"]
    participants = override["services"]["coordinator"]["environment"]["HEFL_PARTICIPANTS"]
    assert participants.split(",") == everyone
    assert set(override["services"]["coordinator"]) == {"environment"}  # nothing else changes
    assert list(override["volumes"]) == [f"keys-{site}" for site in everyone]
    assert override["secrets"] == {
        f"broker-{site}": {"file": f"./.secrets/broker/{site}.password"} for site in everyone
    }
    coordinator = BASE["services"]["coordinator"]
    assert coordinator["secrets"] == [{"source": "broker-coordinator", "target": "broker-password"}]
    assert BASE["secrets"]["broker-coordinator"] == {
        "file": "./.secrets/broker/coordinator.password"
    }
    assert compose_sites.site_services(override) == [
        "keys-hospital-1",
        "keys-hospital-2",
        "keys-hospital-3",
        "hospital-1",
        "hospital-2",
        "hospital-3",
    ]


def test_every_compose_participant_trusts_the_cluster_ca_and_only_the_broker_has_its_key(
    override: dict[str, Any],
) -> None:
    services = {**BASE["services"], **override["services"]}
    services["coordinator"] = BASE["services"]["coordinator"]
    ca_only = ["./.secrets/tls/ca.pem:/etc/hefl/broker-ca.pem:ro"]
    for name in ("coordinator", "hospital-1", "hospital-2", "hospital-3"):
        assert tls_mounts(services[name]) == ca_only, name
        assert services[name]["environment"]["HEFL_BROKER_CA"] == "/etc/hefl/broker-ca.pem"
    assert tls_mounts(services["rabbitmq"]) == [
        f"./.secrets/tls/{name}:/etc/rabbitmq/tls/{name}:ro"
        for name in ("ca.pem", "server.pem", "server.key")
    ]
    others = set(services) - {"coordinator", "rabbitmq", "hospital-1", "hospital-2", "hospital-3"}
    assert others and not [n for n in others if tls_mounts(services[n])]  # no network anyway
    assert not [n for n, s in services.items() if "BROKER_URL" in json.dumps(s) and n in others]


def test_no_compose_container_gets_a_password_in_its_environment(override: dict[str, Any]) -> None:
    services = {**BASE["services"], **override["services"]}
    for name, service in services.items():
        environment = service.get("environment", {})
        assert not [v for v in environment if "PASSWORD" in v and not v.endswith("_FILE")], name
        assert not re.search(r"://[^/@]*:[^/@]*@", yaml.safe_dump(environment)), name
    assert "${HEFL_" not in json.dumps(BASE["x-broker"])  # nothing comes from compose variables


def test_a_site_template_that_mounts_keys_itself_is_refused() -> None:
    base = {**BASE, "x-hospital-site": {**BASE["x-hospital-site"], "volumes": ["x:/keys:ro"]}}
    with pytest.raises(ConfigError, match="/keys"):
        compose_sites.override(base, sites=1, issued=1)
    with pytest.raises(ConfigError, match="x-site-keys"):
        compose_sites.override({"x-hospital-site": {}}, sites=1, issued=1)


def run_sites(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hefl.sites", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_sites_tool_writes_the_override_and_refuses_more_sites_than_identities(
    tmp_path: Path,
) -> None:
    out = tmp_path / "generated" / "hefl.yaml"
    done = run_sites("compose", "--sites", "2", "--issued", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["keys-hospital-1", "keys-hospital-2", "hospital-1", "hospital-2"]
    written = yaml.safe_load(out.read_text())
    assert written == compose_sites.override(BASE, sites=2, issued=4)
    refused = run_sites("compose", "--sites", "5", "--issued", "4", "--out", str(out))
    assert refused.returncode == 2 and "4 identities" in refused.stderr
    assert yaml.safe_load(out.read_text()) == written  # left as it was


# -- Kubernetes ----------------------------------------------------------------------------------


def mounted_secrets(document: dict[str, Any]) -> set[str]:
    volumes = document["spec"]["template"]["spec"]["volumes"]
    return {v["secret"]["secretName"] for v in volumes if "secret" in v}


def test_each_kubernetes_site_is_a_deployment_mounting_only_its_own_secrets() -> None:
    documents = k8s_sites.manifests(TEMPLATE, 3)
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == [
        "hefl-hospital-1",
        "hefl-hospital-2",
        "hefl-hospital-3",
    ]
    for k, deployment in enumerate(deployments, start=1):
        site = f"hospital-{k}"
        assert deployment["spec"]["replicas"] == 1
        assert mounted_secrets(deployment) == {
            f"hefl-{site}-keys",
            f"hefl-{site}-broker",
            "hefl-broker-ca",  # the cluster's CA certificate: no key
        }
        assert f"hospital-{k % 3 + 1}" not in yaml.safe_dump(deployment)  # no other site
    config = next(d for d in documents if d["kind"] == "ConfigMap")
    assert config["metadata"]["name"] == k8s_sites.SITES_CONFIG
    assert config["data"]["HEFL_PARTICIPANTS"] == "hospital-1,hospital-2,hospital-3"
    with pytest.raises(ConfigError, match="site"):
        k8s_sites.manifests(TEMPLATE + "\n# ${other}\n", 1)


def test_the_committed_kubernetes_sites_are_what_the_template_gives() -> None:
    """k8s/hospitals.yaml is generated (make k8s-sites HOSPITALS=N): never edited by hand."""
    committed = (ROOT / "k8s" / "hospitals.yaml").read_text()
    count = k8s_sites.count_in(committed)
    assert committed == k8s_sites.render(k8s_sites.manifests(TEMPLATE, count), count)
    done = run_sites("k8s", "--sites", str(count))
    assert done.returncode == 0 and done.stdout == committed, done.stderr
