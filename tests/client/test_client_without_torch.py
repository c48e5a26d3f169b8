"""The client installs and runs without torch: importing it never imports torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import importlib.abc
    import sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockTorch())

    import numpy as np

    import instahide_client
    import instahide_client.cli
    from instahide_client import InstaHideClient

    with InstaHideClient(sys.argv[1]) as client:
        assert client.health() == "SERVING"
        out = client.encode(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), return_keys=True)
    assert out.encoded.shape == (4, 32, 32, 3) and out.keys is not None
    assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
    for module in ("torch_data", "torch_outputs"):
        try:
            __import__(f"instahide_client.{module}")
        except ImportError as exc:
            assert "instahide-client[torch]" in str(exc), exc
        else:
            raise AssertionError(f"{module} imported without torch")
    print("ok", instahide_client.__version__)
""")


def test_encode_without_torch(server):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, server.target], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")
