"""Audit dataclasses from hand-built protos, and the report folder they write."""

from __future__ import annotations

import datetime as dt
import io
import json
import math

import numpy as np
import pytest
from instahide_client import Audit, AuditEvent, AuditReport
from instahide_client.audits import audit_name
from instahide_client.cli.audit import format_summary
from instahide_client.instahide.v1 import audit_pb2, instahide_pb2, reconstruction_pb2
from instahide_client.tensors import to_tensor

PNG = b"\x89PNG\r\n\x1a\nfake"
TITLES = {"ciphertext_only": "ciphertext-only", "photo_aware": "photo-aware", "pool_aware": "pool-aware",
          "key_aware": "key-aware bound"}


def attack_row(name: str, seed: int, m: int = 4, p: int = 3, with_recovered: bool = True) -> audit_pb2.AttackResult:
    """A report row as the service writes one (a bound for "key_aware")."""
    rng = np.random.default_rng(seed)
    scores = reconstruction_pb2.ReconstructionScores(
        max_ssim=0.41, mean_ssim=0.2, min_l2=0.05, mean_l2=0.09,
        recovered_above_0_5=1 / 3, recovered_above_0_8=0.0,
        best_ssim=rng.uniform(-1, 1, p).tolist(), best_match=rng.integers(0, m, p).tolist(),
    )
    scores.best_ssim_histogram.extend(reconstruction_pb2.HistogramBucket(lower=lo / 10, upper=lo / 10 + 0.1,
                                                                         count=lo % 3) for lo in range(-10, 10))
    if with_recovered:
        scores.recovered.CopyFrom(to_tensor(rng.uniform(-1, 1, (m, 8, 8, 3)).astype(np.float32)))
    return audit_pb2.AttackResult(attack=name, title=TITLES[name], threat=f"what {name} holds",
                                  bound=name == "key_aware", stage_seconds={"similarity": 0.5, "recovery": 2.25},
                                  reconstruction=scores)


def row_of(msg: audit_pb2.Audit, name: str) -> audit_pb2.AttackResult:
    return next(row for row in msg.report.attacks if row.attack == name)


def audit_proto(state=audit_pb2.AUDIT_STATE_SUCCEEDED, *, key_aware=True, with_recovered=True,
                report=True, extra: tuple[str, ...] = ()) -> audit_pb2.Audit:
    config = instahide_pb2.InstaHideConfig(mode=instahide_pb2.MIXING_MODE_INSIDE, k=4, seed=1)
    spec = audit_pb2.AuditSpec(display_name="nightly", attacks=["ciphertext_only", "key_aware"],
                               reconstruction=reconstruction_pb2.ReconstructionSpec(instahide=config,
                                                                                    encodings_per_image=3))
    msg = audit_pb2.Audit(name="audits/a1b2", state=state, error="", spec=spec,
                          progress=audit_pb2.AuditProgress(stage="scoring", stage_fraction=1.0, fraction=1.0))
    msg.create_time.FromDatetime(dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    msg.start_time.FromDatetime(dt.datetime(2025, 1, 2, 3, 4, 6, tzinfo=dt.UTC))
    if state in (audit_pb2.AUDIT_STATE_SUCCEEDED, audit_pb2.AUDIT_STATE_FAILED):
        msg.end_time.FromDatetime(dt.datetime(2025, 1, 2, 3, 5, 0, tzinfo=dt.UTC))
    if report:
        names = ["ciphertext_only", *extra, *(["key_aware"] if key_aware else [])]
        msg.report.CopyFrom(audit_pb2.AuditReport(
            device="cpu", seconds=3.5,
            attacks=[attack_row(name, i + 1, with_recovered=with_recovered) for i, name in enumerate(names)],
            reconstruction=reconstruction_pb2.ReconstructionReport(
                grid_png=PNG if with_recovered else b"", grid_attack="ciphertext_only", images=3, encodings=9)))
    return msg


class TestAudit:
    def test_from_proto(self):
        audit = Audit.from_proto(audit_proto())
        assert (audit.name, audit.id, audit.state, audit.done) == ("audits/a1b2", "a1b2", "succeeded", True)
        assert audit.create_time == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        assert audit.end_time.tzinfo is not None
        assert audit.spec.mode == "inside" and audit.spec.k == 4 and audit.spec.encodings_per_image == 3
        assert audit.spec.seed == 1 and audit.spec.num_classes is None and audit.spec.kind == "reconstruction"
        assert audit.spec.attacks == ("ciphertext_only", "key_aware") and audit.spec.display_name == "nightly"
        assert audit.progress.stage == "scoring" and audit.progress.fraction == 1.0
        report = audit.report
        assert report is not None and report.device == "cpu" and report.grid_png == PNG
        assert (report.images, report.encodings, report.seconds) == (3, 9, 3.5)
        co = report.ciphertext_only
        assert co.max_ssim == pytest.approx(0.41) and co.recovered_above_0_5 == pytest.approx(1 / 3)
        assert co.recovered.shape == (4, 8, 8, 3) and co.recovered.dtype == np.float32
        assert co.best_ssim.dtype == np.float64 and co.best_match.dtype == np.int64
        assert co.best_ssim.shape == co.best_match.shape == (3,)
        assert len(co.histogram) == 20 and co.histogram[0] == (-1.0, pytest.approx(-0.9), 2)
        assert co.stage_seconds == {"recovery": 2.25, "similarity": 0.5}
        assert list(report.attacks()) == ["ciphertext_only", "key_aware"] and report.key_aware.max_ssim > 0
        bound = report.results["key_aware"]
        assert (bound.title, bound.threat, bound.bound) == ("key-aware bound", "what key_aware holds", True)
        assert not report.results["ciphertext_only"].bound and report.grid_attack == "ciphertext_only"
        assert (report.pool_images, report.pool_fingerprint) == (0, "")  # as for precomputed encodings
        assert "pool:" not in format_summary(report)
        assert co.public_coverage is None and "public_coverage" not in co.to_dict()
        assert "found public images" not in format_summary(report)

    def test_the_share_of_encodings_in_which_public_images_were_found(self, tmp_path):
        msg = audit_proto(extra=("photo_aware",))
        row_of(msg, "photo_aware").reconstruction.public_coverage = 0.2
        report = Audit.from_proto(msg).report
        assert report.photo_aware.public_coverage == pytest.approx(0.2)
        assert report.ciphertext_only.public_coverage is None
        assert format_summary(report).endswith("photo-aware found public images in 20% of the encodings")
        report.write(tmp_path)
        data = json.loads((tmp_path / "report.json").read_text())
        assert data["photo_aware"]["public_coverage"] == pytest.approx(0.2)
        assert "public_coverage" not in data["ciphertext_only"]

    def test_the_pool_mixed_in(self, tmp_path):
        msg = audit_proto()
        msg.report.reconstruction.pool_images, msg.report.reconstruction.pool_fingerprint = 2048, "ab12" * 16
        report = Audit.from_proto(msg).report
        assert (report.pool_images, report.pool_fingerprint) == (2048, "ab12" * 16)
        assert format_summary(report).endswith("pool: 2048 images (ab12ab12ab12)")
        report.write(tmp_path)
        data = json.loads((tmp_path / "report.json").read_text())
        assert (data["pool_images"], data["pool_fingerprint"]) == (2048, "ab12" * 16)

    @pytest.mark.parametrize(("ciphertext_only", "pool_aware", "photo_aware", "expected"), [
        (0.41, None, None, "ciphertext_only"),
        (0.41, 0.93, None, "pool_aware"),
        (0.41, 0.30, None, "ciphertext_only"),
        (0.41, 0.41, None, "ciphertext_only"),
        (math.nan, 0.30, None, "pool_aware"),
        (0.41, 0.93, 0.95, "photo_aware"),
        (0.41, None, 0.90, "photo_aware"),
        (0.41, 0.93, 0.90, "pool_aware"),
    ])
    def test_strongest_attack_without_keys(self, ciphertext_only, pool_aware, photo_aware, expected):
        # The key-aware bound (scored highest here) holds keys, so it is never the answer.
        ran = {"photo_aware": photo_aware, "pool_aware": pool_aware}
        msg = audit_proto(extra=tuple(name for name, value in ran.items() if value is not None))
        row_of(msg, "ciphertext_only").reconstruction.max_ssim = ciphertext_only
        row_of(msg, "key_aware").reconstruction.max_ssim = 0.99
        for name, value in ran.items():
            if value is not None:
                row_of(msg, name).reconstruction.max_ssim = value
        report = Audit.from_proto(msg).report
        assert list(report.attacks()) == ["ciphertext_only", *(n for n, v in ran.items() if v is not None), "key_aware"]
        name, scores = report.strongest_attack_without_keys()
        assert name == expected and scores is report.attacks()[expected]

    def test_proto_defaults_made_explicit(self):
        audit = Audit.from_proto(audit_pb2.Audit(name="audits/x", state=audit_pb2.AUDIT_STATE_QUEUED))
        assert audit.state == "queued" and not audit.done
        assert (audit.start_time, audit.end_time, audit.create_time, audit.report) == (None, None, None, None)
        # What the service did not resolve (it resolves every default of an audit it accepts) reads as unset.
        assert (audit.spec.mode, audit.spec.k, audit.spec.encodings_per_image) == ("cross", None, None)
        assert audit.spec.seed is None and audit.spec.attacks == () and audit.spec.kind == "reconstruction"

    def test_key_aware_unset_and_summary(self):
        audit = Audit.from_proto(audit_proto(key_aware=False, with_recovered=False))
        assert "key_aware" not in audit.report.results and list(audit.report.attacks()) == ["ciphertext_only"]
        with pytest.raises(AttributeError, match=r"no attribute 'key_aware' \(attacks in this report: ciphertext_only"):
            _ = audit.report.key_aware
        assert audit.report.ciphertext_only.recovered is None and audit.report.grid_png == b""

    def test_failed(self):
        msg = audit_proto(audit_pb2.AUDIT_STATE_FAILED, report=False)
        msg.error = "interrupted by restart"
        audit = Audit.from_proto(msg)
        assert audit.state == "failed" and audit.error == "interrupted by restart" and audit.report is None
        with pytest.raises(ValueError, match="has no report"):
            audit.write_report("/nonexistent")

    def test_event(self):
        event = AuditEvent.from_proto(audit_pb2.WatchAuditResponse(
            state=audit_pb2.AUDIT_STATE_RUNNING,
            progress=audit_pb2.AuditProgress(stage="recovery", stage_fraction=0.5, fraction=0.25)))
        assert event.state == "running" and not event.done
        assert event.progress.stage == "recovery" and event.progress.fraction == 0.25

    def test_name_roundtrip(self):
        audit = Audit.from_proto(audit_proto())
        assert audit_name(audit.id) == audit.name


class TestReportWrite:
    def test_files_and_contents(self, tmp_path):
        audit = Audit.from_proto(audit_proto())
        paths = audit.report.write(tmp_path / "new" / "report")
        folder = tmp_path / "new" / "report"
        assert sorted(p.name for p in paths) == ["grid.png", "recoveries.npz", "report.json"]
        assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "recoveries.npz", "report.json"]  # no temps
        assert (folder / "grid.png").read_bytes() == PNG
        assert (folder / "report.json").stat().st_mode & 0o077 == 0  # owner only

        report = json.loads((folder / "report.json").read_text())
        assert report["audit"]["name"] == "audits/a1b2" and report["audit"]["state"] == "succeeded"
        assert report["audit"]["create_time"] == "2025-01-02T03:04:05+00:00"
        assert report["audit"]["spec"]["k"] == 4 and report["audit"]["spec"]["seed"] == 1
        assert (report["device"], report["images"], report["encodings"], report["seconds"]) == ("cpu", 3, 9, 3.5)
        assert (report["kind"], report["grid_attack"]) == ("reconstruction", "ciphertext_only")
        assert (report["key_aware"]["bound"], report["key_aware"]["title"]) == (True, "key-aware bound")
        for attack in ("ciphertext_only", "key_aware"):
            scores = report[attack]
            assert scores["max_ssim"] == pytest.approx(0.41) and scores["mean_l2"] == pytest.approx(0.09)
            assert scores["recovered_above_0_5"] == pytest.approx(1 / 3)
            assert scores["stage_seconds"] == {"recovery": 2.25, "similarity": 0.5} and scores["seconds"] == 2.75
            assert len(scores["best_ssim_histogram"]) == 20
            assert scores["best_ssim_histogram"][0] == {"lower": -1.0, "upper": pytest.approx(-0.9), "count": 2}
            assert (scores["private_images"], scores["recovered_images"]) == (3, 4)

        with np.load(folder / "recoveries.npz") as npz:
            assert sorted(npz.files) == sorted(f"{a}_{x}" for a in ("ciphertext_only", "key_aware")
                                               for x in ("recovered", "best_match", "best_ssim"))
            for attack in ("ciphertext_only", "key_aware"):
                scores = getattr(audit.report, attack)
                np.testing.assert_array_equal(npz[f"{attack}_recovered"], scores.recovered)
                assert npz[f"{attack}_recovered"].dtype == np.float32
                np.testing.assert_array_equal(npz[f"{attack}_best_match"], scores.best_match)
                np.testing.assert_array_equal(npz[f"{attack}_best_ssim"], scores.best_ssim)

    def test_json_clean_numbers(self, tmp_path):
        msg = audit_proto(key_aware=False)
        row_of(msg, "ciphertext_only").reconstruction.max_ssim = math.nan
        row_of(msg, "ciphertext_only").reconstruction.min_l2 = math.inf
        audit = Audit.from_proto(msg)
        audit.write_report(tmp_path)
        text = (tmp_path / "report.json").read_text()
        assert "NaN" not in text and "Infinity" not in text
        report = json.loads(text)
        assert report["ciphertext_only"]["max_ssim"] is None and report["ciphertext_only"]["min_l2"] is None
        assert "key_aware" not in report
        with np.load(tmp_path / "recoveries.npz") as npz:
            assert not any(name.startswith("key_aware") for name in npz.files)

    def test_summary_report_writes_no_grid(self, tmp_path):
        audit = Audit.from_proto(audit_proto(with_recovered=False))
        names = sorted(p.name for p in audit.report.write(tmp_path))
        assert names == ["recoveries.npz", "report.json"]
        with np.load(tmp_path / "recoveries.npz") as npz:
            assert "ciphertext_only_recovered" not in npz.files and "ciphertext_only_best_ssim" in npz.files

    def test_overwrites_atomically(self, tmp_path):
        (tmp_path / "report.json").write_text("old")
        Audit.from_proto(audit_proto()).report.write(tmp_path)
        assert json.loads((tmp_path / "report.json").read_text())["images"] == 3

    def test_unwritable_folder(self, tmp_path):
        (tmp_path / "file").write_text("x")
        with pytest.raises(OSError):
            Audit.from_proto(audit_proto()).report.write(tmp_path / "file" / "sub")

    def test_report_without_audit_context(self, tmp_path):
        report = AuditReport.from_proto(audit_proto().report)
        report.write(tmp_path)
        data = json.loads((tmp_path / "report.json").read_text())
        assert "audit" not in data and data["device"] == "cpu"
        np.load(io.BytesIO((tmp_path / "recoveries.npz").read_bytes()))
