"""The audit client and CLI on the wire, against an in-process fake AuditService (no real server)."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import numpy as np
import pytest
from instahide_client import InstaHideClient, InstaHideError
from instahide_client.cli import main
from instahide_client.instahide.v1 import audit_pb2, audit_pb2_grpc, reconstruction_pb2
from instahide_client.tensors import to_numpy, to_tensor

STAGES = ("encoding", "similarity", "clustering", "assignment", "recovery", "orientation", "key_aware", "scoring")


def _report() -> audit_pb2.AuditReport:
    rng = np.random.default_rng(0)
    scores = reconstruction_pb2.ReconstructionScores(max_ssim=0.45, mean_ssim=0.21, min_l2=0.04, mean_l2=0.08,
                                                     recovered_above_0_5=0.3, recovered_above_0_8=0.1,
                                                     best_ssim=[0.6, 0.2, 0.9], best_match=[1, 0, 1])
    scores.recovered.CopyFrom(to_tensor(rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)))
    rows = [audit_pb2.AttackResult(attack=name, title=title, bound=bound, stage_seconds={"recovery": 1.5},
                                   reconstruction=scores)
            for name, title, bound in (("ciphertext_only", "ciphertext-only", False),
                                       ("key_aware", "key-aware bound", True))]
    reconstruction = reconstruction_pb2.ReconstructionReport(grid_png=b"\x89PNG", grid_attack="ciphertext_only",
                                                             images=3, encodings=9)
    return audit_pb2.AuditReport(device="cpu", seconds=2.0, attacks=rows, reconstruction=reconstruction)


class FakeAudits(audit_pb2_grpc.AuditServiceServicer):
    """Stores what it receives; audits succeed (or fail, per ``outcome``) when watched."""

    def __init__(self) -> None:
        self.audits: dict[str, audit_pb2.Audit] = {}
        self.uploads: dict[str, list[audit_pb2.StartAuditRequest]] = {}
        self.metadata: list[dict[str, str]] = []
        self.get_requests: list[audit_pb2.GetAuditRequest] = []
        self.list_requests: list[audit_pb2.ListAuditsRequest] = []
        self.outcome = audit_pb2.AUDIT_STATE_SUCCEEDED

    def _find(self, name: str, context) -> audit_pb2.Audit:
        self.metadata.append(dict(context.invocation_metadata()))
        if name not in self.audits:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no audit {name}")
        return self.audits[name]

    def StartAudit(self, request_iterator, context):
        self.metadata.append(dict(context.invocation_metadata()))
        requests = list(request_iterator)
        name = f"audits/a{len(self.audits)}"
        self.uploads[name] = requests
        audit = audit_pb2.Audit(name=name, state=audit_pb2.AUDIT_STATE_QUEUED, spec=requests[0].spec)
        audit.create_time.GetCurrentTime()
        self.audits[name] = audit
        return audit_pb2.StartAuditResponse(audit=audit)

    def WatchAudit(self, request, context):
        audit = self._find(request.name, context)
        for i, stage in enumerate(STAGES):
            yield audit_pb2.WatchAuditResponse(state=audit_pb2.AUDIT_STATE_RUNNING, progress=audit_pb2.AuditProgress(
                stage=stage, stage_fraction=1.0, fraction=(i + 1) / len(STAGES)))
        audit.state = self.outcome
        audit.end_time.GetCurrentTime()
        if self.outcome == audit_pb2.AUDIT_STATE_SUCCEEDED:
            audit.report.CopyFrom(_report())
        else:
            audit.error = "out of memory"
        yield audit_pb2.WatchAuditResponse(state=audit.state, error=audit.error)

    def GetAudit(self, request, context):
        self.get_requests.append(request)
        audit = audit_pb2.Audit()
        audit.CopyFrom(self._find(request.name, context))
        if request.summary_only and audit.HasField("report"):
            audit.report.reconstruction.ClearField("grid_png")
            for row in audit.report.attacks:
                row.reconstruction.ClearField("recovered")
        return audit_pb2.GetAuditResponse(audit=audit)

    def ListAudits(self, request, context):
        self.list_requests.append(request)
        audits = [a for a in reversed(self.audits.values()) if not request.state or a.state == request.state]
        start = int(request.page_token or 0)
        page = audits[start:start + request.page_size]
        token = str(start + request.page_size) if start + request.page_size < len(audits) else ""
        return audit_pb2.ListAuditsResponse(audits=page, next_page_token=token)

    def CancelAudit(self, request, context):
        audit = self._find(request.name, context)
        audit.state = audit_pb2.AUDIT_STATE_CANCELLED
        return audit_pb2.CancelAuditResponse(audit=audit)

    def DeleteAudit(self, request, context):
        self._find(request.name, context)
        del self.audits[request.name]
        return audit_pb2.DeleteAuditResponse()


@pytest.fixture
def fake():
    servicer = FakeAudits()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.target = f"127.0.0.1:{port}"
    yield servicer
    server.stop(None)


@pytest.fixture
def privates(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (25, 8, 8, 3), dtype=np.uint8), np.arange(25) % 5
    path = tmp_path / "privates.npz"
    np.savez(path, images=images, labels=labels)
    return images, labels, path


class TestClient:
    def test_start_streams_spec_then_chunks(self, fake, privates):
        images, labels, _ = privates
        with InstaHideClient(fake.target, token="tok") as client:
            audit = client.start_audit(images, labels, k=4, encodings_per_image=3, seed=1, chunk_images=10,
                                       display_name="ci", metadata=[("x-run", "7")])
        assert audit.state == "queued" and audit.name == "audits/a0" and audit.create_time is not None
        assert audit.spec.k == 4 and audit.spec.seed == 1 and audit.spec.display_name == "ci"
        requests = fake.uploads["audits/a0"]
        chunks = [r.reconstruction for r in requests[1:]]
        assert requests[0].HasField("spec") and [len(c.labels) for c in chunks] == [10, 10, 5]
        np.testing.assert_array_equal(np.concatenate([to_numpy(c.images) for c in chunks]), images)
        assert fake.metadata[0]["authorization"] == "Bearer tok" and fake.metadata[0]["x-run"] == "7"

    def test_dataset_sends_the_spec_only(self, fake):
        with InstaHideClient(fake.target) as client:
            client.start_audit(dataset="eval.npz", skipped_attacks=["key_aware"])
        (request,) = fake.uploads["audits/a0"]
        assert request.spec.dataset == "eval.npz" and list(request.spec.skipped_attacks) == ["key_aware"]

    def test_watch_get_wait(self, fake, privates):
        images, labels, _ = privates
        with InstaHideClient(fake.target) as client:
            audit = client.start_audit(images, labels)
            events = list(client.watch_audit(audit.id))
            assert [e.progress.stage for e in events[:-1]] == list(STAGES)
            assert events[-1].state == "succeeded" and events[-1].done
            done = client.get_audit(audit.name)
            assert done.report.ciphertext_only.recovered.shape == (2, 8, 8, 3)
            summary = client.get_audit(audit.id, summary_only=True)
            assert summary.report.ciphertext_only.recovered is None and summary.report.grid_png == b""
            assert fake.get_requests[-1].summary_only and fake.get_requests[-1].name == "audits/a0"

    def test_wait_reports_progress(self, fake, privates):
        images, labels, _ = privates
        seen = []
        with InstaHideClient(fake.target) as client:
            audit = client.wait_audit(client.start_audit(images, labels).name, progress=seen.append)
        assert audit.state == "succeeded" and audit.report is not None and len(seen) == len(STAGES) + 1

    def test_leaving_watch_early(self, fake, privates):
        images, labels, _ = privates
        with InstaHideClient(fake.target) as client:
            name = client.start_audit(images, labels).name
            for event in client.watch_audit(name):
                assert event.state == "running"
                break
            assert client.get_audit(name).state in ("queued", "running", "succeeded")

    def test_list_follows_pages_lazily(self, fake, privates):
        images, labels, _ = privates
        with InstaHideClient(fake.target) as client:
            for _ in range(5):
                client.start_audit(images[:2], labels[:2])
            fake.list_requests.clear()
            audits = client.list_audits(page_size=2)
            assert len(fake.list_requests) == 1  # the first page only
            assert [a.name for a in audits] == [f"audits/a{i}" for i in range(4, -1, -1)]
            assert [r.page_token for r in fake.list_requests] == ["", "2", "4"]
            page, token = client.list_audits_page(page_size=3)
            assert len(page) == 3 and token == "3"
            client.cancel_audit("a1")
            assert [a.name for a in client.list_audits(state="cancelled")] == ["audits/a1"]
            assert fake.list_requests[-1].state == audit_pb2.AUDIT_STATE_CANCELLED
            with pytest.raises(ValueError, match="unknown audit state"):
                client.list_audits(state="done")
            with pytest.raises(ValueError, match="page_size"):
                client.list_audits(page_size=0)

    def test_cancel_delete(self, fake, privates):
        images, labels, _ = privates
        with InstaHideClient(fake.target) as client:
            name = client.start_audit(images, labels).name
            assert client.cancel_audit(name).state == "cancelled"
            assert client.delete_audit(name) is None
            assert name not in fake.audits

    @pytest.mark.parametrize("call", ["get_audit", "cancel_audit", "delete_audit", "watch_audit"])
    def test_not_found(self, fake, call):
        with InstaHideClient(fake.target) as client, pytest.raises(InstaHideError) as info:
            result = getattr(client, call)("nope")
            list(result)  # watch raises while iterating
        assert info.value.code is grpc.StatusCode.NOT_FOUND and "no audit audits/nope" in info.value.details
        assert info.value.__cause__ is None and info.value.__suppress_context__

    def test_unavailable(self, free_target, privates):
        images, labels, _ = privates
        with InstaHideClient(free_target) as client, pytest.raises(InstaHideError) as info:
            client.start_audit(images, labels, timeout=5)
        assert info.value.code is grpc.StatusCode.UNAVAILABLE

    def test_bad_input_sends_nothing(self, fake):
        with InstaHideClient(fake.target) as client, pytest.raises(ValueError, match="labels has length"):
            client.start_audit(np.zeros((4, 8, 8, 3), np.uint8), np.arange(3))
        assert not fake.uploads


class TestCli:
    def test_start_follows_and_prints_summary(self, fake, privates, tmp_path, capsys):
        _, _, path = privates
        report_dir = tmp_path / "report"
        code = main(["audit", "start", "--target", fake.target, "--images", str(path), "--k", "4",
                     "--encodings-per-image", "3", "--seed", "1", "--report-dir", str(report_dir)])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "ciphertext-only" in out and "key-aware bound" in out and "Max_SSIM" in out
        assert "0.4500" in out and "30.0%" in out and "device: cpu" in out
        assert "started audits/a0" in err and "100%" in err and "scoring" in err
        assert sorted(p.name for p in report_dir.iterdir()) == ["grid.png", "recoveries.npz", "report.json"]
        assert json.loads((report_dir / "report.json").read_text())["audit"]["spec"]["seed"] == 1
        spec = fake.uploads["audits/a0"][0].spec
        config = spec.reconstruction.instahide
        assert (config.k, spec.reconstruction.encodings_per_image, config.seed) == (4, 3, 1)
        assert (list(spec.attacks), list(spec.extra_attacks), list(spec.skipped_attacks)) == ([], [], [])

    @pytest.mark.parametrize(("flags", "attacks", "extra", "skipped"), [
        (["--attack", "pool_aware", "--attack", "ciphertext_only"], ["pool_aware", "ciphertext_only"], [], []),
        (["--add-attack", "photo_aware", "--skip-attack", "key_aware"], [], ["photo_aware"], ["key_aware"]),
        # the flags from before attacks had names
        (["--photo-aware", "--no-key-aware", "--no-pool-aware"], [], ["photo_aware"], ["key_aware", "pool_aware"]),
    ])
    def test_attacks_by_name(self, fake, privates, flags, attacks, extra, skipped):
        assert main(["audit", "start", "--target", fake.target, "--images", str(privates[2]), "--detach",
                     *flags]) == 0
        spec = fake.uploads["audits/a0"][0].spec
        assert (list(spec.attacks), list(spec.extra_attacks), list(spec.skipped_attacks)) == (attacks, extra, skipped)

    def test_attacks_named_and_changed_at_once_is_refused(self, fake, privates, capsys):
        assert main(["audit", "start", "--target", fake.target, "--images", str(privates[2]),
                     "--attack", "ciphertext_only", "--no-key-aware"]) == 1
        assert "error: --attack names every attack to run" in capsys.readouterr().err and not fake.uploads

    def test_failed_audit_exits_1(self, fake, privates, capsys):
        fake.outcome = audit_pb2.AUDIT_STATE_FAILED
        assert main(["audit", "start", "--target", fake.target, "--images", str(privates[2]), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "error: audits/a0 failed: out of memory" in err and "Traceback" not in err

    def test_detach(self, fake, privates, capsys):
        assert main(["audit", "start", "--target", fake.target, "--images", str(privates[2]), "--detach"]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == "audits/a0" and "instahide audit watch a0" in err

    def test_ctrl_c_stops_following_only(self, fake, privates, capsys, monkeypatch):
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(InstaHideClient, "wait_audit", interrupted)
        code = main(["audit", "start", "--target", fake.target, "--images", str(privates[2])])
        err = capsys.readouterr().err
        assert code == 130 and "goes on on the server" in err
        assert f"instahide audit cancel a0 --target {fake.target}" in err
        assert fake.audits["audits/a0"].state == audit_pb2.AUDIT_STATE_QUEUED  # not cancelled

    def test_get_list_watch_cancel_delete(self, fake, privates, tmp_path, capsys):
        images, labels, _ = privates
        with InstaHideClient(fake.target) as client:
            first = client.start_audit(images, labels, display_name="first")
            client.wait_audit(first.name)
            second = client.start_audit(images, labels)
        target = ["--target", fake.target]
        assert main(["audit", "get", first.id, *target]) == 0
        out = capsys.readouterr().out
        assert "audits/a0  succeeded  (first)" in out and "ciphertext-only" in out
        assert main(["audit", "get", "audits/a0", *target, "--report-dir", str(tmp_path / "r")]) == 0
        assert (tmp_path / "r" / "recoveries.npz").exists() and not fake.get_requests[-1].summary_only
        assert main(["audit", "get", second.id, *target, "--report-dir", str(tmp_path / "r2")]) == 1
        assert "has no report yet (state queued)" in capsys.readouterr().err
        assert main(["audit", "list", *target]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["name", "state", "created", "images", "strongest_attack", "leakage"]
        assert lines[1].startswith("audits/a1 ") and "queued" in lines[1] and lines[1].split()[-3:] == ["-", "-", "-"]
        # The report's key-aware bound scores 0.45 too, but only attacks without keys are named.
        assert lines[2].startswith("audits/a0") and lines[2].split()[-3:] == ["3", "ciphertext-only", "0.4500"]
        assert main(["audit", "list", *target, "--limit", "1"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 2
        assert main(["audit", "cancel", second.id, *target]) == 0
        assert capsys.readouterr().out.strip() == "audits/a1 cancelled"
        assert main(["audit", "list", *target, "--state", "cancelled"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 2
        assert main(["audit", "delete", second.id, *target]) == 0
        assert capsys.readouterr().out.strip() == "deleted audits/a1"
        assert main(["audit", "watch", first.id, *target, "--quiet"]) == 0
        assert "ciphertext-only" in capsys.readouterr().out

    @pytest.mark.parametrize("action", ["get", "watch", "cancel", "delete"])
    def test_unknown_id(self, fake, action, capsys):
        assert main(["audit", action, "nope", "--target", fake.target]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1] == "error: NOT_FOUND: no audit audits/nope" and "Traceback" not in "\n".join(lines)
