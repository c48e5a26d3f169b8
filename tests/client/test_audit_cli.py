"""`instahide audit`: usage errors and input failures, caught before any call."""

from __future__ import annotations

import numpy as np
import pytest
from instahide_client.cli import main


@pytest.fixture
def privates(tmp_path):
    path = tmp_path / "privates.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


class TestUsage:
    @pytest.mark.parametrize("argv", [
        ["audit"],
        ["audit", "frobnicate"],
        ["audit", "start"],                                             # no source
        ["audit", "start", "--images", "a.npz", "--dataset", "d"],       # two sources
        ["audit", "start", "--images", "a.npz", "--mode", "mixed"],
        ["audit", "start", "--images", "a.npz", "--k", "0"],
        ["audit", "start", "--images", "a.npz", "--encodings-per-image", "-3"],
        ["audit", "start", "--images", "a.npz", "--seed", "-1"],
        ["audit", "start", "--images", "a.npz", "--token", "t", "--token-file", "f"],
        ["audit", "get"],
        ["audit", "list", "--state", "done"],
        ["audit", "list", "--limit", "0"],
        ["audit", "cancel"],
        ["audit", "delete", "a", "b"],
    ])
    def test_usage_errors_exit_2(self, argv, capsys):
        assert main(argv) == 2
        assert "usage: instahide" in capsys.readouterr().err

    @pytest.mark.parametrize("action", ["start", "watch", "get", "list", "cancel", "delete"])
    def test_help(self, action, capsys):
        assert main(["audit", action, "--help"]) == 0
        assert "--target" in capsys.readouterr().out

    def test_start_help_lists_options(self, capsys):
        assert main(["audit", "start", "--help"]) == 0
        out = capsys.readouterr().out
        for flag in ("--encodings-per-image", "--no-key-aware", "--report-dir", "--detach", "--encodings"):
            assert flag in out


class TestInputFailures:
    def test_missing_file(self, tmp_path, free_target, capsys):
        assert main(["audit", "start", "--target", free_target, "--images", str(tmp_path / "nope.npz")]) == 1
        line = _one_error_line(capsys)
        assert "nope.npz" in line and "No such file" in line

    def test_missing_array(self, tmp_path, free_target, capsys):
        path = tmp_path / "x.npz"
        np.savez(path, pictures=np.zeros(3))
        assert main(["audit", "start", "--target", free_target, "--images", str(path)]) == 1
        assert "has no `images` or `labels` array (it has: pictures)" in _one_error_line(capsys)

    def test_bad_arrays_fail_before_the_call(self, tmp_path, free_target, capsys):
        path = tmp_path / "x.npz"
        np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(3))
        assert main(["audit", "start", "--target", free_target, "--images", str(path)]) == 1
        assert "labels has length 3 but images has 4" in _one_error_line(capsys)

    def test_encodings_need_images(self, tmp_path, free_target, capsys):
        enc = tmp_path / "enc.npz"
        np.savez(enc, encodings=np.zeros((4, 8, 8, 3), np.float32), labels=np.zeros((4, 2), np.float32))
        assert main(["audit", "start", "--target", free_target, "--dataset", "d", "--encodings", str(enc)]) == 1
        assert "--encodings needs --images" in _one_error_line(capsys)

    def test_bad_id(self, free_target, capsys):
        assert main(["audit", "get", "jobs/x", "--target", free_target]) == 1
        assert "expected an audit id" in _one_error_line(capsys)

    def test_unreachable_server(self, privates, free_target, capsys):
        assert main(["audit", "start", "--target", free_target, "--images", str(privates), "--timeout", "3"]) == 1
        assert _one_error_line(capsys).startswith("error: UNAVAILABLE")
