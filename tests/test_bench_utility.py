"""bench/utility.py: a --quick run on the 8×8 digits trains every condition and ends with its JSON line."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "utility.py"


def test_quick_run_reports_every_condition() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sizes", "8", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "utility" and summary["seeds"] == [0]
    row = summary["results"]["8x8"]
    assert set(row) == set(summary["conditions"]) == {
        "clean", "rmt", "rmt_noise25", "rmt_noise100", "aes", "aes_scale8", "instahide_k4", "instahide_k6",
        "instahide_k4_raw"}
    for name, result in row.items():
        assert len(result["runs"]) == 1 and 0.0 <= result["median"] <= 1.0, name
        assert abs(result["vs_clean_points"] - 100 * (result["median"] - row["clean"]["median"])) < 0.02, name
    assert row["clean"]["median"] > 0.8  # ten classes: chance is 0.1
    assert row["rmt"]["median"] > 0.5  # a fixed invertible map of the inputs stays learnable
    assert isinstance(summary["target"]["met"], bool)
