"""DisguisedNets audits as a user runs them over a real instahide-server: the CLI (with a stored key's parameters or
flags) and the Python client."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from instahide_client import InstaHideClient
from instahide_client.cli import main

from instahide_ops.transforms.instahide.challenge import bundled_private_images


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_pool_path, launch_server):
    tmp = tmp_path_factory.mktemp("disguise-audit-server")
    with launch_server(tmp, "--pool", str(small_pool_path), "--state-dir", str(tmp / "state")) as proc:
        yield proc


@pytest.fixture(scope="module")
def privates(tmp_path_factory):
    images, labels = bundled_private_images(20, seed=4)
    folder = tmp_path_factory.mktemp("privates")
    np.savez(folder / "labelled.npz", images=images, labels=labels)
    np.savez(folder / "unlabelled.npz", images=images)
    return images, labels, folder


def _last_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def test_cli_audits_a_stored_keys_parameters(server, privates, tmp_path, capsys):
    _, _, folder = privates
    assert main(["keys", "create", "--target", server.target, "--shape", "32,32,3", "--block", "2",
                 "--noise", "25"]) == 0
    key = capsys.readouterr().out.strip()
    report_dir = tmp_path / "report"
    assert main(["audit", "start", "--target", server.target, "--images", str(folder / "labelled.npz"),
                 "--key-params", key, "--known-pairs", "4", "--seed", "2", "--quiet",
                 "--report-dir", str(report_dir)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "known pairs (Level-2)" in out and "key-aware bound" in out
    assert "known pairs (Level-2): permutation" in out and "attacked: 16  known pairs: 4" in out, out
    report = json.loads((report_dir / "report.json").read_text())
    spec = report["audit"]["spec"]
    assert spec["transform"] == "disguised_nets" and spec["known_pairs"] == 4
    assert spec["disguised_nets"]["block"] == [2, 2] and spec["disguised_nets"]["noise"] == 25
    assert (report["pairs_held"], report["encodings"], report["images"]) == (4, 16, 20)
    assert {p["axis"] for p in report["curves"]} == {"known_pairs", "noise"}
    assert report["files"]["curves"] == "curves.png"
    assert report["known_pairs"]["permutation_accuracy"] >= 0.95 and report["known_pairs"]["bound"] is False
    assert report["disguise_key_aware"]["bound"] is True
    assert 0.0 < report["known_pairs"]["max_ssim"] <= report["disguise_key_aware"]["max_ssim"] + 0.01
    assert cv2.imread(str(report_dir / "curves.png")).shape == (600, 480, 3)
    assert cv2.imread(str(report_dir / "grid.png")) is not None
    audit_id = captured.err.split("started audits/")[1].split()[0]
    assert main(["audit", "get", audit_id, "--target", server.target]) == 0
    shown = capsys.readouterr().out
    assert "reconstruction of uploaded images; DisguisedNets rmt 2x2, noise 25, scale 1, 4 known pairs, seed 2" in shown
    assert main(["audit", "list", "--target", server.target]) == 0
    assert f"audits/{audit_id}" in capsys.readouterr().out


def test_cli_audits_aes_flags_without_labels(server, privates, capsys):
    _, _, folder = privates
    assert main(["audit", "start", "--target", server.target, "--images", str(folder / "unlabelled.npz"),
                 "--disguise", "aes", "--scale", "8", "--known-pairs", "4", "--no-curves", "--attack", "known_pairs",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "codebook hit rate" in out and "attack success" not in out and "key-aware" not in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--block", "2"], "--block: DisguisedNets options; add --disguise METHOD or --key-params KEY"),
    (["--known-pairs", "2"], "--known-pairs: DisguisedNets options"),
    (["--disguise", "rmt", "--k", "4"], "--k: InstaHide's options, not a DisguisedNets audit's"),
    (["--disguise", "rmt", "--key-params", "keys/x"], "--disguise and --key-params both name the parameters"),
    (["--key-params", "keys/x", "--noise", "3"], "--noise: --key-params takes the stored key's parameters"),
])
def test_cli_refuses_flags_that_do_not_go_together(server, privates, argv, message, capsys):
    _, _, folder = privates
    assert main(["audit", "start", "--target", server.target, "--images", str(folder / "labelled.npz"), *argv]) == 1
    assert message in _last_error(capsys.readouterr().err)


def test_cli_names_the_bad_field(server, privates, capsys):
    _, _, folder = privates
    assert main(["audit", "start", "--target", server.target, "--images", str(folder / "labelled.npz"),
                 "--disguise", "rmt", "--block", "5", "--quiet"]) == 1
    assert "spec.reconstruction.disguised_nets.params.block_rows: block 5×5 does not divide" in \
        _last_error(capsys.readouterr().err)


def test_python_client(server, privates):
    images, labels, _ = privates
    with InstaHideClient(server.target) as client:
        with pytest.raises(ValueError, match="InstaHide's options"):
            client.start_audit(images, labels, disguised_nets={"block": 4}, k=4)
        with pytest.raises(ValueError, match="options of a DisguisedNets audit"):
            client.start_audit(images, labels, known_pairs=2)
        started = client.start_audit(images, disguised_nets={"block": 4}, known_pairs=1, skip_curves=True, seed=0)
        audit = client.wait_audit(started.name, timeout=120)
    assert audit.state == "succeeded" and audit.spec.transform == "disguised_nets"
    report = audit.report
    assert report.known_pairs == 1 and report.encodings == 19 and report.curves == []
    pairs = report.results["known_pairs"].scores
    assert pairs.permutation_accuracy == 1.0 and pairs.max_ssim >= 0.99 and pairs.attack_success is None


def test_an_audit_gates_a_pipeline_and_speaks_json(server, privates, capsys):
    _, _, folder = privates
    argv = ["audit", "start", "--target", server.target, "--images", str(folder / "labelled.npz"), "--disguise",
            "rmt", "--known-pairs", "1", "--no-curves", "--seed", "0", "--quiet", "--json"]
    assert main([*argv, "--fail-above", "0.9"]) == 3  # one known pair gives back noise-free RMT exactly
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["state"] == "succeeded" and report["report"]["known_pairs"]["max_ssim"] > 0.99
    assert "leak: known pairs (Level-2) Max_SSIM 1.0000 > 0.9 (--fail-above)" in captured.err
    assert main([*argv, "--fail-above", "1.5"]) == 0
    name = json.loads(capsys.readouterr().out)["name"]
    assert main(["audit", "get", name, "--target", server.target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["kind"] == "reconstruction"
    assert main(["audit", "list", "--target", server.target, "--json", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["name"] == name
