"""The `instahide` CLI: argument errors and expected failures, without a server."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from instahide_client.cli import main


@pytest.fixture
def input_npz(tmp_path):
    path = tmp_path / "in.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), labels=np.arange(8) % 4)
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


class TestUsage:
    @pytest.mark.parametrize("argv", [
        [],
        ["frobnicate"],
        ["encode", "--input", "in.npz"],
        ["encode", "--input", "a", "--output", "b", "--mode", "mixed"],
        ["encode", "--input", "a", "--output", "b", "--dtype", "float64"],
        ["encode", "--input", "a", "--output", "b", "--batch-size", "0"],
        ["encode", "--input", "a", "--output", "b", "--token", "t", "--token-file", "f"],
        ["health", "--timeout", "soon"],
        ["encode", "--input", "a", "--output", "b", "--seed", "-1"],
    ])
    def test_usage_errors_exit_2(self, argv, capsys):
        assert main(argv) == 2
        assert "usage: instahide" in capsys.readouterr().err

    def test_help_exits_0(self, capsys):
        assert main(["encode", "--help"]) == 0
        out = capsys.readouterr().out
        assert "--return-keys" in out and "--token-file" in out


class TestEncodeFailures:
    def test_missing_input(self, tmp_path, capsys):
        out = tmp_path / "out.npz"
        assert main(["encode", "--input", str(tmp_path / "nope.npz"), "--output", str(out)]) == 1
        line = _one_error_line(capsys)
        assert "nope.npz" in line and "No such file" in line
        assert not out.exists()

    def test_missing_images_array(self, tmp_path, capsys):
        np.savez(tmp_path / "in.npz", pictures=np.zeros((1, 2, 2, 3), np.uint8), labels=np.zeros(1, int))
        assert main(["encode", "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 1
        assert "has no `images` array (it has: pictures, labels)" in _one_error_line(capsys)

    def test_not_an_npz(self, tmp_path, capsys):
        (tmp_path / "in.npz").write_text("hello")
        assert main(["encode", "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 1
        assert "not an .npz archive" in _one_error_line(capsys)

    def test_single_npy(self, tmp_path, capsys):
        np.save(tmp_path / "in.npy", np.zeros(3))
        assert main(["encode", "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "o.npz")]) == 1
        assert "single array" in _one_error_line(capsys)

    def test_bad_image_shape(self, tmp_path, free_target, capsys):
        np.savez(tmp_path / "in.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, int))
        argv = ["encode", "--target", free_target, "--input", str(tmp_path / "in.npz"),
                "--output", str(tmp_path / "o.npz"), "--quiet"]
        assert main(argv) == 1
        assert "images must have shape (N, H, W, C)" in _one_error_line(capsys)

    def test_empty_token_file(self, tmp_path, input_npz, free_target, capsys):
        (tmp_path / "token").write_text("\n")
        argv = ["encode", "--target", free_target, "--input", str(input_npz),
                "--output", str(tmp_path / "o.npz"), "--token-file", str(tmp_path / "token")]
        assert main(argv) == 1
        assert "is empty" in _one_error_line(capsys)

    def test_unreachable_server_leaves_no_file(self, tmp_path, input_npz, free_target, capsys):
        out = tmp_path / "out" / "out.npz"
        out.parent.mkdir()
        argv = ["encode", "--target", free_target, "--input", str(input_npz), "--output", str(out),
                "--quiet", "--timeout", "20"]
        assert main(argv) == 1
        assert _one_error_line(capsys).startswith("error: UNAVAILABLE: ")
        assert os.listdir(out.parent) == []  # neither the output nor its temporary file

    def test_unwritable_output_folder(self, tmp_path, input_npz, capsys):
        argv = ["encode", "--input", str(input_npz), "--output", str(tmp_path / "no" / "dir" / "o.npz")]
        assert main(argv) == 1
        assert "cannot write" in _one_error_line(capsys)

    def test_target_from_environment(self, tmp_path, input_npz, free_target, monkeypatch, capsys):
        monkeypatch.setenv("INSTAHIDE_TARGET", free_target)
        argv = ["encode", "--input", str(input_npz), "--output", str(tmp_path / "o.npz"), "--quiet"]
        assert main(argv) == 1
        assert free_target.split(":")[1] in _one_error_line(capsys)  # it dialled the env's port


class TestHealthFailures:
    def test_unreachable(self, free_target, capsys):
        assert main(["health", "--target", free_target]) == 1
        assert _one_error_line(capsys).startswith("error: UNAVAILABLE: ")


def test_console_script_failure_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "instahide_client.cli", "encode", "--input",
                           str(tmp_path / "missing.npz"), "--output", str(tmp_path / "o.npz")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: cannot read {tmp_path / 'missing.npz'}: "
                                               "No such file or directory"]


def _instahide_command() -> list[str]:
    """The installed console script, or the module when the venv has no script."""
    script = pathlib.Path(sys.executable).with_name("instahide")
    return [str(script)] if script.exists() else [sys.executable, "-m", "instahide_client.cli"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*_instahide_command(), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class TestAgainstServer:
    def test_encode(self, server, input_npz, tmp_path):
        out = tmp_path / "out.npz"
        proc = _run("encode", "--target", server.target, "--input", str(input_npz), "--output", str(out),
                    "--batch-size", "3")
        assert proc.returncode == 0, proc.stderr
        assert "8/8" in proc.stderr  # the progress bar counted every image
        with np.load(out, allow_pickle=False) as data:
            assert sorted(data.files) == ["encoded", "labels"]
            assert data["encoded"].shape == (8, 32, 32, 3) and data["encoded"].dtype == np.float32
            assert data["labels"].shape == (8, 4) and data["labels"].dtype == np.float32
            assert (data["labels"] >= 0).all()
        assert sorted(os.listdir(tmp_path)) == ["in.npz", "out.npz"]  # no temporary file left

    def test_encode_keys_float16_inside(self, server, input_npz, tmp_path):
        out = tmp_path / "out.npz"
        proc = _run("encode", "--target", server.target, "--input", str(input_npz), "--output", str(out),
                    "--return-keys", "--dtype", "float16", "--mode", "inside", "--k", "3",
                    "--batch-size", "4", "--num-classes", "7", "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        with np.load(input_npz) as given:
            images = given["images"]
        with np.load(out, allow_pickle=False) as data:
            assert set(data.files) == {"encoded", "labels", "keys_coefficients", "keys_indices",
                                       "keys_mask_bits", "keys_mode", "keys_k", "keys_private_per_mix",
                                       "keys_seeded", "keys_pool_fingerprint"}
            assert data["encoded"].dtype == np.float16 and data["labels"].shape == (8, 7)
            assert str(data["keys_mode"]) == "inside"
            assert int(data["keys_k"]) == 3 and int(data["keys_private_per_mix"]) == 3
            assert not bool(data["keys_seeded"])
            coefficients, indices = data["keys_coefficients"], data["keys_indices"]
            assert coefficients.shape == (8, 3) and indices.shape == (8, 3)
            np.testing.assert_array_equal(indices[:, 0], np.arange(8))  # indices into in.npz's images
            batch_of = np.arange(8)[:, None] // 4
            assert (indices // 4 == batch_of).all()  # partners come from the same batch
            x = images.astype(np.float64) / 127.5 - 1
            mix = np.einsum("nk,nkhwc->nhwc", coefficients, x[indices])
            bits = np.unpackbits(data["keys_mask_bits"], axis=1, count=32 * 32 * 3, bitorder="little")
            expected = (1.0 - 2.0 * bits).reshape(mix.shape) * mix
            np.testing.assert_allclose(data["encoded"].astype(np.float64), expected, atol=2e-3)

    def test_encode_seeded_is_reproducible(self, server, input_npz, tmp_path):
        outs = [tmp_path / "a.npz", tmp_path / "b.npz"]
        for out in outs:
            argv = ["encode", "--target", server.target, "--input", str(input_npz), "--output", str(out),
                    "--seed", "99", "--return-keys", "--no-sign-flip", "--quiet"]
            assert main(argv) == 0
        with np.load(outs[0]) as a, np.load(outs[1]) as b:
            np.testing.assert_array_equal(a["encoded"], b["encoded"])
            assert bool(a["keys_seeded"])
            assert "keys_mask_bits" not in a.files

    def test_health(self, server):
        proc = _run("health", "--target", server.target)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "SERVING\n", "")

    def test_health_target_from_environment(self, server, capsys, monkeypatch):
        monkeypatch.setenv("INSTAHIDE_TARGET", server.target)
        assert main(["health"]) == 0
        assert capsys.readouterr().out == "SERVING\n"

    def test_health_unknown_service(self, server, capsys):
        assert main(["health", "--target", server.target, "--service", "no.such.Service"]) == 1
        line = _one_error_line(capsys)
        assert line.startswith("error: NOT_FOUND: service: no health status for 'no.such.Service'; "
                               "this server reports ''"), line

    def test_wrong_token(self, secured, input_npz, tmp_path, capsys, monkeypatch):
        monkeypatch.setenv("INSTAHIDE_TOKEN", "wrong")
        out = tmp_path / "out.npz"
        argv = ["encode", "--target", secured.target, "--input", str(input_npz), "--output", str(out),
                "--quiet"]
        assert main(argv) == 1
        line = _one_error_line(capsys)
        assert line.startswith("error: UNAUTHENTICATED: ") and "wrong" not in line
        assert not out.exists()

    def test_token_file(self, secured, secured_token, input_npz, tmp_path):
        (tmp_path / "token").write_text(secured_token + "\n")
        argv = ["encode", "--target", secured.target, "--input", str(input_npz),
                "--output", str(tmp_path / "out.npz"), "--token-file", str(tmp_path / "token"), "--quiet"]
        assert main(argv) == 0
