"""`instahide keys ...` and `instahide encode --key` end to end: the console script against a real server."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from instahide_client.cli import main

from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise


def _run(*args: str) -> subprocess.CompletedProcess:
    script = pathlib.Path(sys.executable).with_name("instahide")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "instahide_client.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.fixture
def photos(tmp_path) -> pathlib.Path:
    path = tmp_path / "in.npz"
    rng = np.random.default_rng(4)
    np.savez(path, images=rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8), labels=np.arange(9) % 3)
    return path


def test_create_encode_export_delete_import(server, photos, tmp_path):
    target = ("--target", server.target)
    created = _run("keys", "create", *target, "--shape", "32,32,3", "--method", "aes", "--block", "4,8",
                   "--seed", "21", "--display-name", "cli test")
    assert created.returncode == 0, created.stderr
    name = created.stdout.strip()
    assert name.startswith("keys/") and len(created.stdout.splitlines()) == 1

    described = json.loads(_run("keys", "get", *target, name, "--json").stdout)
    params = DisguisedNetsParams(method="aes", block=(4, 8))
    local = create_key(params, (32, 32, 3), seed=21)
    assert described["fingerprint"] == local.fingerprint() and described["seeded"]
    assert described["params"]["block"] == [4, 8] and described["display_name"] == "cli test"
    listing = _run("keys", "list", *target).stdout
    assert name in listing and "aes  32x32x3  block 4x8" in listing and "seeded" in listing

    out = tmp_path / "out.npz"
    encoded = _run("encode", *target, "--key", name, "--input", str(photos), "--output", str(out),
                   "--batch-size", "4", "--quiet")
    assert encoded.returncode == 0, encoded.stderr
    with np.load(photos) as given, np.load(out) as data:
        assert data["encoded"].dtype == np.uint8
        np.testing.assert_array_equal(data["encoded"], disguise(torch.from_numpy(given["images"]), local).numpy())
        np.testing.assert_array_equal(data["labels"], given["labels"])
        first = data["encoded"].copy()

    sealed = tmp_path / "key.sealed"
    assert _run("keys", "export", *target, name, "--output", str(sealed)).returncode == 0
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600 and local.aes_keys[0].tobytes() not in sealed.read_bytes()
    assert _run("keys", "delete", *target, name).returncode == 0
    refused = _run("encode", *target, "--key", name, "--input", str(photos), "--output", str(out), "--quiet")
    assert refused.returncode == 1 and refused.stderr.startswith("error: NOT_FOUND: config.disguised_nets.key")
    assert "Traceback" not in refused.stderr
    assert _run("keys", "import", *target, str(sealed)).stdout.strip() == name
    again = _run("encode", *target, "--key", name.removeprefix("keys/"), "--input", str(photos), "--output",
                 str(out), "--quiet")
    assert again.returncode == 0, again.stderr
    with np.load(out) as data:
        np.testing.assert_array_equal(data["encoded"], first)


def test_encode_with_a_key_needs_no_labels(server, tmp_path):
    target = ("--target", server.target)
    name = _run("keys", "create", *target, "--shape", "8,8,1", "--block", "2").stdout.strip()
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((3, 8, 8, 1), np.uint8))
    out = tmp_path / "out.npz"
    proc = _run("encode", *target, "--key", name, "--input", str(unlabelled), "--output", str(out), "--quiet",
                "--dtype", "float16")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as data:
        assert data["encoded"].dtype == np.float16 and data["encoded"].shape == (3, 8, 8, 1)
        assert data["labels"].shape == (0,)


@pytest.mark.parametrize("argv, message", [
    (["keys", "create", "--shape", "32,32,3", "--block", "5"], "INVALID_ARGUMENT: disguised_nets.block_rows"),
    (["keys", "create", "--shape", "32,32,3", "--method", "aes", "--noise", "4"], "disguised_nets.noise"),
    (["keys", "get", "keys/doesnotexist"], "NOT_FOUND"),
    (["keys", "import", "/nonexistent/key.sealed"], "cannot read /nonexistent/key.sealed"),
])
def test_expected_failures_are_one_line(server, argv, message, capsys):
    assert main([*argv[:2], "--target", server.target, *argv[2:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


@pytest.mark.parametrize("argv", [
    ["keys", "create"],
    ["keys", "create", "--shape", "32,32"],
    ["keys", "create", "--shape", "32,32,3", "--method", "des"],
    ["keys", "create", "--shape", "32,32,3", "--noise", "-1"],
    ["keys", "frob"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage: instahide" in capsys.readouterr().err


def test_encode_refuses_instahide_options_with_a_key(photos, tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert main(["encode", "--key", "keys/x", "--return-keys", "--input", str(photos), "--output", str(out)]) == 1
    assert "--return-keys applies to InstaHide only" in capsys.readouterr().err
    assert not out.exists()
