"""The CSPRNG-keyed source: large draws never run its ChaCha20 block counter over."""

from __future__ import annotations

from instahide_ops import randomness
from instahide_ops.randomness import RandomSource


def test_a_large_draw_never_wraps_the_block_counter(monkeypatch):
    # All-ones from the OS is as random as any other draw: a counter taken from it would start at 2**32 - 1 and
    # overflow after one 64-byte block.
    monkeypatch.setattr(randomness.os, "urandom", lambda n: b"\xff" * n)
    source = RandomSource()
    assert len(source.bytes(1 << 20)) == 1 << 20 and len(source.bytes(1 << 20)) == 1 << 20


def test_two_sources_draw_different_streams():
    assert RandomSource().bytes(64) != RandomSource().bytes(64)
