"""Membership audits and output defenses as a user runs them over a real instahide-server: the CLI and the Python
client."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from instahide_client import InstaHideClient, InstaHideError
from instahide_client.cli import main
from membership_set import membership_set


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_pool_path, launch_server):
    tmp = tmp_path_factory.mktemp("membership-server")
    with launch_server(tmp, "--pool", str(small_pool_path), "--state-dir", str(tmp / "state")) as proc:
        yield proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    arrays = membership_set(300, seed=7)
    folder = tmp_path_factory.mktemp("outputs")
    np.savez(folder / "scores.npz", **arrays)
    np.savez(folder / "logits.npz", logits=arrays["outputs"], labels=arrays["labels"])
    return arrays, folder


def _last_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def test_cli_audits_outputs_with_defenses(server, data, tmp_path, capsys):
    _, folder = data
    report_dir = tmp_path / "report"
    assert main(["audit", "start", "--target", server.target, "--outputs", str(folder / "scores.npz"),
                 "--defense", "gauss:0.1", "--defense", "argmax", "--seed", "1", "--quiet",
                 "--report-dir", str(report_dir)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "TPR@1%FPR" in out and "task: classification  examples: 300" in out and "references: 8" in out
    assert "LiRA" in out or "lira" in out.lower()
    assert "gauss:0.1" in out and "argmax" in out
    report = json.loads((report_dir / "report.json").read_text())
    assert report["kind"] == "membership" and report["examples"] == 300
    assert set(report["defenses"]) == {"gauss:0.1", "argmax"}
    assert report["defenses"]["argmax"]["utility"] <= 1.0 and 0.5 <= report["loss"]["auc"] <= 1.0
    assert report["audit"]["spec"]["defenses"] == ["gauss:0.1", "argmax"]
    scores = np.load(report_dir / "scores.npz")
    assert scores["loss_risk_scores"].shape == (300,)
    roc = cv2.imread(str(report_dir / "roc.png"))
    assert roc is not None and roc.shape[1] >= 400
    audit_id = captured.err.split("started audits/")[1].split()[0]
    assert main(["audit", "list", "--target", server.target]) == 0
    listed = capsys.readouterr().out
    assert f"audits/{audit_id}" in listed and "TPR@1%FPR" in listed
    assert main(["audit", "get", audit_id, "--target", server.target]) == 0
    assert "membership of uploaded outputs; defenses gauss:0.1, argmax" in capsys.readouterr().out


def test_cli_defends_outputs(server, data, tmp_path, capsys):
    arrays, folder = data
    out_path = tmp_path / "released.npz"
    assert main(["defend", "--target", server.target, "--input", str(folder / "logits.npz"), "--defense", "argmax",
                 "--output", str(out_path)]) == 0
    released = np.load(out_path)
    defended = released["defended"]
    assert defended.shape == arrays["outputs"].shape and set(np.unique(defended)) == {0.0, 1.0}
    np.testing.assert_array_equal(defended.argmax(1), arrays["outputs"].argmax(1))
    np.testing.assert_array_equal(released["labels"], arrays["labels"])
    assert main(["defend", "--target", server.target, "--input", str(folder / "logits.npz"), "--defense",
                 "topk:9", "--output", str(tmp_path / "x.npz")]) == 1
    assert "config.output_defense.defense" in _last_error(capsys.readouterr().err)


@pytest.mark.parametrize(("argv", "message"), [
    (["--images", "x.npz", "--defense", "argmax"], "--defense: membership options"),
    (["--outputs", "SCORES", "--k", "4"], "--k: reconstruction options, not a membership audit's"),
    (["--outputs", "SCORES", "--disguise", "rmt"], "--disguise: reconstruction options"),
    (["--outputs", "SCORES", "--defense", "blur:3"], "unknown defense 'blur'"),
])
def test_cli_refuses_flags_that_do_not_go_together(server, data, argv, message, capsys):
    _, folder = data
    argv = [str(folder / "scores.npz") if a == "SCORES" else a for a in argv]
    assert main(["audit", "start", "--target", server.target, *argv]) == 1
    assert message in _last_error(capsys.readouterr().err)


def test_python_client(server, data):
    arrays, _ = data
    with InstaHideClient(server.target) as client:
        with pytest.raises(ValueError, match="member must be"):
            client.start_membership_audit(arrays["outputs"], arrays["labels"], arrays["member"][:5])
        with pytest.raises(InstaHideError, match=r"spec\.attacks"):
            client.start_membership_audit(arrays["outputs"], arrays["labels"], arrays["member"],
                                          attacks=["lira_online"])  # no references given
        started = client.start_membership_audit(arrays["outputs"], arrays["labels"], arrays["member"],
                                                attacks=["loss", "confidence"], seed=2)
        audit = client.wait_audit(started.name, timeout=120)
        noisy = client.defend(arrays["outputs"], "gauss:0.05", outputs_kind="logits", seed=3)
        again = client.defend(arrays["outputs"], "gauss:0.05", outputs_kind="logits", seed=3)
    assert audit.state == "succeeded" and list(audit.report.results) == ["loss", "confidence"]
    name, strongest = audit.report.strongest_attack_without_keys()
    assert name in ("loss", "confidence") and 0.5 < strongest.auc <= 1.0
    assert audit.report.membership.utility_name == "accuracy"
    np.testing.assert_allclose(noisy.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(noisy, again)  # seeded noise repeats


def test_the_torch_helper_gives_what_an_audit_takes(server):
    import torch
    from instahide_client.torch_outputs import membership_inputs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    model.train()
    members = [(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))) for _ in range(3)]
    others = [(torch.randn(5, 3, 2, 2), torch.randint(0, 3, (5,))) for _ in range(2)]
    arrays = membership_inputs(model, members, others)
    assert model.training  # restored
    assert arrays["outputs"].shape == (34, 3) and arrays["outputs"].dtype == np.float32
    assert arrays["member"].tolist() == [True] * 24 + [False] * 10
    with torch.no_grad():
        np.testing.assert_allclose(arrays["outputs"][:8], model.eval()(members[0][0]).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(arrays["labels"][:8], members[0][1].numpy())
    with InstaHideClient(server.target) as client:
        audit = client.wait_audit(client.start_membership_audit(**arrays, attacks=["loss"]).name, timeout=60)
    assert audit.state == "succeeded" and audit.report.membership.examples == 34
