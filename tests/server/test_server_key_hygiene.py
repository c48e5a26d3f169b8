"""At debug log level, no key, mask, pixel or token of a run appears in the server's log."""

from __future__ import annotations

import numpy as np
from instahide_client import InstaHideClient
from serverproc import start_server


def test_debug_logs_carry_no_key_mask_pixel_or_token(tmp_path, small_pool_path):
    token = "k3y-hygiene-token-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    with start_server(tmp_path, "--pool", str(small_pool_path), "--log-level", "DEBUG",
                      "--token-file", str(token_file)) as server:
        with InstaHideClient(server.target, token=token) as client:
            out = client.encode(images, rng.integers(0, 10, 16), batch_size=8, return_keys=True)
        log = server.log()
    assert "Encode" in log  # the access log line is there: the log was written at all
    assert token not in log
    keys = out.keys
    # Masks: any 8-byte run of the returned mask bits, as hex or as Python's bytes repr.
    mask = keys.mask_bits.tobytes()
    for start in range(0, len(mask) - 8, 97):
        chunk = mask[start:start + 8]
        assert chunk.hex() not in log and repr(chunk)[2:-1] not in log
    # Coefficients as printed by numpy/torch/Python at the usual precisions.
    for value in keys.coefficients.ravel()[:64]:
        for text in (f"{value:.4f}", f"{value:.6f}", repr(float(value))):
            assert text not in log, text
    # Partners: the index rows are not printed as lists or arrays.
    assert str(keys.indices[0].tolist()) not in log
    # Pixels: no run of 16 private pixel values in any common rendering.
    row = images[0, 0, :6].ravel()[:16]
    assert str(row.tolist())[1:-1] not in log and row.tobytes().hex() not in log


def test_two_servers_side_by_side_never_share_keys(tmp_path, small_pool_path):
    images = np.random.default_rng(5).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8) % 10
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with start_server(tmp_path / "a", "--pool", str(small_pool_path)) as first, \
            start_server(tmp_path / "b", "--pool", str(small_pool_path)) as second:
        outputs = []
        for server in (first, second):
            with InstaHideClient(server.target) as client:
                outputs.append(client.encode(images, labels, return_keys=True))
    a, b = (out.keys for out in outputs)
    assert not a.seeded and not b.seeded
    assert not np.array_equal(a.mask_bits, b.mask_bits)
    assert not np.array_equal(a.coefficients, b.coefficients)
    assert not np.array_equal(outputs[0].encoded, outputs[1].encoded)
