"""Audit pieces without a server: settings, the store, names and page tokens."""

from __future__ import annotations

import base64
import pathlib
import sqlite3
import time

import pytest
from instahide_client.instahide.v1 import audit_pb2, instahide_pb2, reconstruction_pb2
from instahide_server.__main__ import build_parser
from instahide_server.audit import legacy
from instahide_server.audit.jobs import _make_token, _parse_token, parse_name
from instahide_server.audit.store import (
    SCHEMA_VERSION,
    AuditStore,
    AuditStoreError,
    DisabledAuditStore,
    open_audit_store,
    summary_of,
)
from instahide_server.config import ConfigError, ServerConfig, default_state_dir
from instahide_server.errors import InvalidArgument, Unavailable


def _config(argv: list[str], env: dict[str, str]) -> ServerConfig:
    return ServerConfig.from_args_and_env(build_parser().parse_args(argv), env)


class TestSettings:
    def test_defaults(self, monkeypatch):
        config = _config([], {"XDG_STATE_HOME": "/var/state"})
        audits = config.audits
        assert config.state_dir == pathlib.Path("/var/state/instahide") and audits.data_root is None
        assert (audits.workers, audits.queue_size, audits.timeout_seconds, audits.max_images,
                audits.retention_days) == (None, 16, 3600.0, 10000, 30.0)
        assert audits.db_max_bytes == 0
        assert default_state_dir({}) == pathlib.Path.home() / ".local/state/instahide"
        assert default_state_dir({"XDG_STATE_HOME": "relative"}) == pathlib.Path.home() / ".local/state/instahide"

    def test_flags_and_env(self):
        env = {"INSTAHIDE_STATE_DIR": "/s", "INSTAHIDE_AUDIT_QUEUE_SIZE": "3", "INSTAHIDE_DATA_ROOT": "/d",
               "INSTAHIDE_AUDIT_RETENTION_DAYS": "0", "INSTAHIDE_AUDIT_DB_MAX_BYTES": "1048576"}
        config = _config(["--audit-workers", "2", "--audit-timeout-seconds", "1.5", "--audit-max-images", "9",
                          "--state-dir", "/flag"], env)
        audits = config.audits
        assert config.state_dir == pathlib.Path("/flag") and audits.data_root == pathlib.Path("/d")
        assert (audits.workers, audits.queue_size, audits.timeout_seconds, audits.max_images,
                audits.retention_days) == (2, 3, 1.5, 9, 0.0)
        assert audits.db_max_bytes == 1048576
        assert _config(["--audit-db-max-bytes", "4096"], env).audits.db_max_bytes == 4096

    @pytest.mark.parametrize(("argv", "needle"), [
        (["--audit-workers", "0"], "--audit-workers: must be at least 1, got 0"),
        (["--audit-queue-size", "0"], "--audit-queue-size: must be at least 1"),
        (["--audit-timeout-seconds", "0"], "--audit-timeout-seconds: must be positive"),
        (["--audit-max-images", "1"], "--audit-max-images: must be at least 2"),
        (["--audit-retention-days", "-1"], "--audit-retention-days: must be at least 0"),
        (["--audit-db-max-bytes", "-1"], "--audit-db-max-bytes: must be at least 0"),
    ])
    def test_bad_settings(self, argv, needle):
        with pytest.raises(ConfigError, match=needle):
            _config(argv, {})


def _audit(audit_id: str, state: int) -> audit_pb2.Audit:
    spec = audit_pb2.AuditSpec(reconstruction=reconstruction_pb2.ReconstructionSpec(
        instahide=instahide_pb2.InstaHideConfig(k=6)))
    audit = audit_pb2.Audit(name=f"audits/{audit_id}", state=state, spec=spec)
    audit.create_time.GetCurrentTime()
    return audit


class TestStore:
    def test_round_trip_interrupt_prune_and_list(self, tmp_path):
        store = AuditStore.open(tmp_path / "state")
        ids = [f"{i:032x}" for i in range(5)]
        for i, audit_id in enumerate(ids):
            store.insert(_audit(audit_id, audit_pb2.AUDIT_STATE_QUEUED if i < 3 else audit_pb2.AUDIT_STATE_RUNNING))
        done = _audit(ids[0], audit_pb2.AUDIT_STATE_SUCCEEDED)
        done.end_time.FromNanoseconds(time.time_ns() - 10 * 86400 * 10**9)  # ended ten days ago
        done.report.reconstruction.grid_png = b"png"
        done.report.reconstruction.images = 5
        row = done.report.attacks.add(attack="ciphertext_only", stage_seconds={"recovery": 1.0})
        row.reconstruction.max_ssim = 0.5
        row.reconstruction.recovered.shape.extend([1, 2, 2, 3])
        store.save(done)
        assert store.get(ids[0]).report == done.report
        summary = summary_of(done.report)
        assert store.get(ids[0], summary_only=True).report == summary
        # Pictures and tensors go, wherever they sit; every number stays, and nothing is added.
        assert not summary.reconstruction.grid_png and not summary.attacks[0].reconstruction.HasField("recovered")
        assert summary.attacks[0].reconstruction.max_ssim == 0.5 and summary.reconstruction.images == 5
        assert summary.attacks[0].stage_seconds == {"recovery": 1.0} and len(summary.attacks) == 1

        assert store.mark_interrupted("interrupted by restart") == 4
        assert {store.get(i).error for i in ids[1:]} == {"interrupted by restart"}
        assert store.get(ids[0]).error == ""

        page = store.list(limit=2)
        assert [a.name for _, a in page] == [f"audits/{ids[4]}", f"audits/{ids[3]}"]
        rest = store.list(limit=10, before_seq=page[-1][0])
        assert [a.name for _, a in rest] == [f"audits/{i}" for i in reversed(ids[:3])]
        assert [a.name for _, a in store.list(limit=10, state=audit_pb2.AUDIT_STATE_SUCCEEDED)] == [done.name]

        assert store.prune(time.time_ns() - 86400 * 10**9) == 1  # only the one ended over a day ago
        assert store.get(ids[0]) is None and store.get(ids[1]) is not None
        assert store.delete(ids[1]) and not store.delete(ids[1])
        store.close()

    def test_reopening_keeps_the_rows(self, tmp_path):
        store = AuditStore.open(tmp_path)
        store.insert(_audit("a" * 32, audit_pb2.AUDIT_STATE_QUEUED))
        store.close()
        assert AuditStore.open(tmp_path).get("a" * 32).spec.reconstruction.instahide.k == 6

    def test_audits_written_before_audit_kinds_are_read_in_todays_layout(self, tmp_path):
        # A database of the layout before audit kinds (user_version 0): a spec with a field per parameter and a
        # boolean per attack, a report with a field per attack. Opening it rewrites every row, once.
        old_spec = legacy._CLASSES["AuditSpec"](k=4, encodings_per_image=20, seed=7, key_aware_bound=False,
                                                photo_aware_attack=True, display_name="old")
        old_report = legacy._CLASSES["AuditReport"](device="cpu", grid_png=b"png", images=3, encodings=60, seconds=9.5,
                                                    pool_images=64, pool_fingerprint="ab")
        old_report.ciphertext_only.max_ssim = 0.4
        old_report.ciphertext_only.stage_seconds.add(key="recovery", value=2.0)
        old_report.ciphertext_only.recovered.shape.extend([1, 2, 2, 3])
        old_report.photo_aware.max_ssim = 0.7
        old_report.photo_aware.public_coverage = 0.5
        store = AuditStore.open(tmp_path)
        store.insert(_audit("a" * 32, audit_pb2.AUDIT_STATE_QUEUED))
        store.close()
        with sqlite3.connect(tmp_path / "instahide.db") as db:  # as the previous release left it
            db.execute("UPDATE audits SET state = ?, spec = ?, report = ?, summary = ?",
                       (audit_pb2.AUDIT_STATE_SUCCEEDED, old_spec.SerializeToString(), old_report.SerializeToString(),
                        old_report.SerializeToString()))
            db.execute("PRAGMA user_version = 0")
        audit = AuditStore.open(tmp_path).get("a" * 32)
        spec, report = audit.spec, audit.report
        assert (spec.reconstruction.instahide.k, spec.reconstruction.instahide.seed) == (4, 7)
        assert spec.reconstruction.encodings_per_image == 20 and spec.display_name == "old"
        assert list(spec.skipped_attacks) == ["key_aware"] and list(spec.extra_attacks) == ["photo_aware"]
        assert [(row.attack, row.bound) for row in report.attacks] == [("ciphertext_only", False),
                                                                      ("photo_aware", False)]
        first = report.attacks[0]
        assert first.reconstruction.max_ssim == 0.4 and dict(first.stage_seconds) == {"recovery": 2.0}
        assert list(first.reconstruction.recovered.shape) == [1, 2, 2, 3] and first.title == "ciphertext-only"
        assert report.attacks[1].reconstruction.public_coverage == 0.5
        assert (report.device, report.seconds, report.reconstruction.grid_png, report.reconstruction.grid_attack,
                report.reconstruction.pool_images) == ("cpu", 9.5, b"png", "photo_aware", 64)
        with sqlite3.connect(tmp_path / "instahide.db") as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert AuditStore.open(tmp_path).get("a" * 32).report == report  # rewritten once, not again

    def test_unusable_folder(self, tmp_path):
        (tmp_path / "file").write_text("")
        with pytest.raises(AuditStoreError, match="--state-dir") as caught:
            AuditStore.open(tmp_path / "file")
        assert isinstance(caught.value, Unavailable) and str(tmp_path / "file") in str(caught.value)

    def test_an_unusable_folder_gives_a_store_that_refuses_every_call(self, tmp_path):
        (tmp_path / "file").write_text("")
        store = open_audit_store(tmp_path / "file")
        assert isinstance(store, DisabledAuditStore) and not store.available
        for call in (lambda: store.insert(_audit("a" * 32, audit_pb2.AUDIT_STATE_QUEUED)), lambda: store.get("a" * 32),
                     lambda: store.list(limit=1), lambda: store.delete("a" * 32)):
            with pytest.raises(AuditStoreError, match="audits are unavailable on this server: --state-dir"):
                call()
        store.close()

    def test_a_full_database_refuses_writes_and_keeps_serving_reads(self, tmp_path):
        """``max_bytes`` below the current size: the file may not grow, the state a full disk leaves."""
        store = AuditStore.open(tmp_path, max_bytes=1)
        kept = _audit("0" * 32, audit_pb2.AUDIT_STATE_QUEUED)
        store.insert(kept)  # the empty table's first page has room
        with pytest.raises(AuditStoreError, match="database or disk is full") as caught:
            for i in range(1, 10_000):  # rows until a new page would be needed
                store.insert(_audit(f"{i:032x}", audit_pb2.AUDIT_STATE_QUEUED))
        assert str(tmp_path / "instahide.db") in str(caught.value) and i > 1
        big = _audit(kept.name.removeprefix("audits/"), audit_pb2.AUDIT_STATE_SUCCEEDED)
        big.report.reconstruction.grid_png = bytes(64 * 1024)
        with pytest.raises(AuditStoreError, match="full"):
            store.save(big)
        got = store.get(kept.name.removeprefix("audits/"))  # the failed save left the row as it was
        assert got.state == audit_pb2.AUDIT_STATE_QUEUED and not got.HasField("report") and got.spec == kept.spec
        assert store.delete(f"{1:032x}")  # freeing room makes writes work again
        store.insert(_audit("f" * 32, audit_pb2.AUDIT_STATE_QUEUED))
        store.close()


def test_names_and_page_tokens():
    assert parse_name("audits/" + "ab" * 16) == "ab" * 16
    for bad in ("audits/", "audits/" + "AB" * 16, "audits/" + "a" * 31, "x/" + "a" * 32, "audits/" + "a" * 32 + "/x"):
        with pytest.raises(InvalidArgument, match="name"):
            parse_name(bad)
    token = _make_token(17, audit_pb2.AUDIT_STATE_FAILED)
    assert _parse_token(token, audit_pb2.AUDIT_STATE_FAILED) == 17
    forged = [base64.urlsafe_b64encode(f"v1:{seq}:0".encode()).decode() for seq in (2**63, 0, -1)]
    for bad, state in ((token, 0), ("%%%", 0), ("djE6eDow", 0), *((f, 0) for f in forged)):
        with pytest.raises(InvalidArgument, match="page_token"):
            _parse_token(bad, state)
