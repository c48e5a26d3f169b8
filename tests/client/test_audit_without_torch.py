"""The audit client and CLI import and run without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import importlib.abc
    import sys
    import tempfile

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch.") or name.startswith("instahide_ops"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockTorch())

    import numpy as np

    from instahide_client import Audit, InstaHideClient
    from instahide_client.cli import main
    from instahide_client.instahide.v1 import audit_pb2

    msg = audit_pb2.Audit(name="audits/x", state=audit_pb2.AUDIT_STATE_SUCCEEDED)
    msg.report.attacks.add(attack="ciphertext_only").reconstruction.best_ssim.extend([0.5])
    with tempfile.TemporaryDirectory() as folder:
        Audit.from_proto(msg).report.write(folder)
    assert main(["audit", "list", "--help"]) == 0
    assert "torch" not in sys.modules and "instahide_ops" not in sys.modules
    print("ok")
""")


def test_audits_without_torch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
