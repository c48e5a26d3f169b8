"""A real Prometheus (Debian's package) scrapes a running server; promtool checks our config, rules and exposition.

`make test` and `.ci/run` install the `prometheus` package when it is missing (as root); these tests
fail, rather than skip, when the binaries are absent, so a green run always includes a real scrape.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml
from instahide_client import InstaHideClient
from serverproc import start_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs Debian's prometheus package (as root)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def query(prometheus: str, expression: str) -> float | None:
    """The single value of an instant query, or None while it has no result."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    result = get_json(url)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.fixture
def metrics_server(tmp_path, small_pool_path):
    port_file = tmp_path / "metrics-port"
    with start_server(tmp_path, "--pool", str(small_pool_path), "--metrics-port", "0",
                      "--metrics-port-file", str(port_file)) as server:
        yield server, int(port_file.read_text())


def test_prometheus_scrapes_the_encode_counters(tmp_path, metrics_server):
    server, metrics_port = metrics_server
    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: instahide\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n")
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web_port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{web_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if query(url, 'up{job="instahide"}') == 1.0:
                    break
            except OSError:
                pass
            assert prometheus.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.3)
        before = query(url, "sum(instahide_images_encoded_total)") or 0.0
        rng = np.random.default_rng(0)
        with InstaHideClient(server.target) as client:
            client.encode(rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 96),
                          batch_size=32)
        deadline = time.monotonic() + 30
        while (after := query(url, "sum(instahide_images_encoded_total)") or 0.0) < before + 96:
            assert time.monotonic() < deadline, f"Prometheus saw {after - before} of 96 encoded images"
            time.sleep(0.3)
        assert after == before + 96
        handled = query(url, 'sum(grpc_server_handled_total{grpc_method="Encode",grpc_code="OK"})')
        assert handled is not None and handled >= 1
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        log.close()


def test_promtool_accepts_the_exposition(metrics_server):
    server, metrics_port = metrics_server
    with InstaHideClient(server.target) as client:
        client.encode(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4))
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        exposition = response.read()
    result = subprocess.run([binary("promtool"), "check", "metrics"], input=exposition, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_promtool_accepts_the_config_and_the_alert_rules():
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")]):
        result = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_leakage_alert_fires_per_attack_without_keys(tmp_path):
    # promtool replays hand-made series through the real rule. One audit each, an hour's worth of scrapes:
    # pool-aware above 0.8 (fires), ciphertext-only at or below 0.8 (quiet), the key-aware bound above
    # 0.8 (left out: it holds the keys).
    rule = next(rule for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
                for rule in group["rules"] if rule.get("alert") == "InstahideAuditLeakageHigh")
    series = []
    for attack, at_or_below in (("pool_aware", False), ("ciphertext_only", True), ("key_aware", False)):
        bound = "true" if attack == "key_aware" else "false"  # as the server labels its rows
        labels = f'job="instahide",instance="host:9464",attack="{attack}",bound="{bound}"'
        series.append({"series": f"instahide_audit_max_ssim_count{{{labels}}}", "values": "0x5 1x60"})
        series.append({"series": f'instahide_audit_max_ssim_bucket{{{labels},le="0.8"}}',
                       "values": "0x5 1x60" if at_or_below else "0x65"})
    description = (rule["annotations"]["description"].replace("{{ $value | humanize }}", "1")
                   .replace("{{ $labels.attack }}", "pool_aware"))
    fired = {"exp_labels": {"severity": "warning", "attack": "pool_aware"},
             "exp_annotations": {"summary": rule["annotations"]["summary"], "description": description}}
    tests = tmp_path / "leakage-test.yml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "3m", "alertname": "InstahideAuditLeakageHigh", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "InstahideAuditLeakageHigh", "exp_alerts": [fired]},
        ]}],
    }))
    result = subprocess.run([binary("promtool"), "test", "rules", str(tests)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
