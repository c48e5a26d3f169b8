"""AuditService over a real server process: reports, progress, cancellation, listing, errors."""

from __future__ import annotations

import base64
import contextlib
import os
import pathlib
import time
from collections.abc import Iterable, Iterator

import grpc
import numpy as np
import pytest
from instahide_client.instahide.v1 import audit_pb2, audit_pb2_grpc, instahide_pb2, reconstruction_pb2
from instahide_client.tensors import to_numpy, to_tensor
from server_testlib import channel, start_server

from instahide_ops.audits.reconstruction import AttackSettings, Deployment, audit_deployment, audit_encodings
from instahide_ops.transforms.instahide.challenge import build_challenge, challenge_public_pool
from instahide_ops.transforms.instahide.pool import PublicPool, adapt_pool, load_pool

STAGES = ["encoding", "similarity", "clustering", "assignment", "recovery", "orientation", "pool_aware", "key_aware",
          "scoring"]
ENDED = {audit_pb2.AUDIT_STATE_SUCCEEDED, audit_pb2.AUDIT_STATE_FAILED, audit_pb2.AUDIT_STATE_CANCELLED}
MAX_IMAGES = 64
C = grpc.StatusCode


# Helpers (also used by test_audit_restart.py).

def private_images(n: int, *, seed: int = 0, shape=(32, 32, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10


def upload(spec: audit_pb2.AuditSpec, images: np.ndarray | None = None, labels: Iterable[int] | None = None,
           *, chunk: int = 5) -> Iterator[audit_pb2.StartAuditRequest]:
    """The StartAudit stream: the spec, then ``images``/``labels`` in chunks of ``chunk``."""
    yield audit_pb2.StartAuditRequest(spec=spec)
    if images is not None:
        labels = list(labels)
        for i in range(0, len(images), chunk):
            yield chunk_of(images=images[i:i + chunk], labels=labels[i:i + chunk])


def chunk_of(*, spec: audit_pb2.AuditSpec | None = None, images=None, labels=(), encodings=None,
             encoding_labels=None) -> audit_pb2.StartAuditRequest:
    """One StartAudit message with a reconstruction chunk of these arrays (and the spec, when given)."""
    chunk = reconstruction_pb2.ReconstructionChunk(labels=list(labels))
    for name, array in (("images", images), ("encodings", encodings), ("encoding_labels", encoding_labels)):
        if array is not None:
            getattr(chunk, name).CopyFrom(to_tensor(array))
    return audit_pb2.StartAuditRequest(spec=spec, reconstruction=chunk)


def spec_of(*, k: int = 0, mode: int = 0, num_classes: int = 0, seed: int | None = None, encodings_per_image: int = 0,
            precomputed_encodings: bool = False, **fields) -> audit_pb2.AuditSpec:
    """A reconstruction spec: InstaHide's parameters, T, and the spec's own fields (dataset, attacks, ...)."""
    config = instahide_pb2.InstaHideConfig(k=k, mode=mode, num_classes=num_classes, seed=seed)
    return audit_pb2.AuditSpec(reconstruction=reconstruction_pb2.ReconstructionSpec(
        instahide=config, encodings_per_image=encodings_per_image, precomputed_encodings=precomputed_encodings),
        **fields)


def small_spec(**fields) -> audit_pb2.AuditSpec:
    fields.setdefault("k", 6)
    fields.setdefault("encodings_per_image", 4)
    fields.setdefault("seed", 1)
    return spec_of(**fields)


def rows(report: audit_pb2.AuditReport) -> dict[str, audit_pb2.AttackResult]:
    """The report's rows by attack name, in order."""
    return {row.attack: row for row in report.attacks}


@contextlib.contextmanager
def audits(target: str) -> Iterator[audit_pb2_grpc.AuditServiceStub]:
    with channel(target) as chan:
        yield audit_pb2_grpc.AuditServiceStub(chan)


def start(stub, requests) -> audit_pb2.Audit:
    return stub.StartAudit(iter(requests), timeout=60).audit


def start_small(stub, n: int = 12, *, seed: int = 0, **spec_fields) -> audit_pb2.Audit:
    images, labels = private_images(n, seed=seed)
    return start(stub, upload(small_spec(**spec_fields), images, labels))


def start_long(stub, n: int = 48, **spec_fields) -> audit_pb2.Audit:
    """An audit that runs for tens of seconds on two CPU cores (tests stop it long before)."""
    spec_fields.setdefault("encodings_per_image", 24)
    return start_small(stub, n, seed=5, **spec_fields)


def watch(stub, name: str, *, until: str | None = None, timeout: float = 120) -> list[audit_pb2.WatchAuditResponse]:
    """Events until the audit ends (or until one shows stage ``until`` while running)."""
    events = []
    call = stub.WatchAudit(audit_pb2.WatchAuditRequest(name=name), timeout=timeout)
    for event in call:
        events.append(event)
        if until is not None and event.state == audit_pb2.AUDIT_STATE_RUNNING and event.progress.stage == until:
            call.cancel()
            break
    return events


def wait_running(stub, name: str) -> None:
    watch(stub, name, until="encoding")
    deadline = time.monotonic() + 60
    while get(stub, name).state == audit_pb2.AUDIT_STATE_QUEUED:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def get(stub, name: str, *, summary_only: bool = False) -> audit_pb2.Audit:
    return stub.GetAudit(audit_pb2.GetAuditRequest(name=name, summary_only=summary_only), timeout=30).audit


def run_to_end(stub, audit: audit_pb2.Audit) -> audit_pb2.Audit:
    events = watch(stub, audit.name)
    assert events[-1].state in ENDED, events[-1]
    return get(stub, audit.name)


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value.code(), caught.value.details()


def library_pool(path: pathlib.Path) -> PublicPool:
    """The pool the server makes from ``--pool path`` for 32×32×3 images."""
    return PublicPool.from_array(adapt_pool(load_pool(path), height=32, width=32, channels=3), device="cpu")


# Fixtures.

@pytest.fixture(scope="session")
def challenge_pool_path(tmp_path_factory) -> pathlib.Path:
    """The challenge's public pool as a .npy, so server and library mix the same public images."""
    path = tmp_path_factory.mktemp("challenge-pool") / "pool.npy"
    np.save(path, challenge_public_pool().pixels.numpy())
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("data-root")
    images, labels = private_images(12, seed=2)
    (root / "sets").mkdir()
    np.savez(root / "sets" / "good.npz", images=images, labels=labels)
    np.savez(root / "unlabelled.npz", images=images)
    outside = root.parent / "outside.npz"
    np.savez(outside, images=images, labels=labels)
    (root / "escape.npz").symlink_to(outside)
    # Broken in ways a file on disk can be: each must be refused with INVALID_ARGUMENT, not INTERNAL.
    (root / "empty.npz").write_bytes(b"")
    (root / "zip-magic.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)))
    np.save(root / "lone-array.npy", images)
    (root / "lone-array.npy").rename(root / "lone-array.npz")
    np.savez(root / "bad-crc.npz", images=images, labels=labels)
    damaged = bytearray((root / "bad-crc.npz").read_bytes())
    damaged[damaged.find(b"\x93NUMPY") + 500] ^= 0xFF
    (root / "bad-crc.npz").write_bytes(bytes(damaged))
    np.savez(root / "zero-size.npz", images=np.zeros((4, 0, 0, 3), np.uint8), labels=np.arange(4))
    return root


@pytest.fixture(scope="module")
def audit_server(tmp_path_factory, challenge_pool_path, data_root):
    tmp = tmp_path_factory.mktemp("audit-server")
    with start_server(tmp, "--pool", str(challenge_pool_path), "--state-dir", str(tmp / "state"),
                      "--data-root", str(data_root), "--audit-workers", "1",
                      "--audit-max-images", str(MAX_IMAGES)) as server:
        yield server


@pytest.fixture
def stub(audit_server):
    with audits(audit_server.target) as stub:
        yield stub


# The report.

def test_report_equals_the_library_and_events_come_in_order(stub, challenge_pool_path):
    images, labels = private_images(12)
    audit = start(stub, upload(small_spec(display_name="e2e"), images, labels))
    assert audit.state == audit_pb2.AUDIT_STATE_QUEUED and audit.name.startswith("audits/")
    assert audit.spec.display_name == "e2e" and audit.HasField("create_time")

    events = watch(stub, audit.name)
    assert events[-1].state == audit_pb2.AUDIT_STATE_SUCCEEDED, events[-1]
    assert all(e.state not in ENDED for e in events[:-1])
    fractions = [e.progress.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    order = [STAGES.index(e.progress.stage) for e in events if e.progress.stage]
    assert order == sorted(order) and order[-1] == STAGES.index("scoring")

    done = get(stub, audit.name)
    assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED and done.error == ""
    assert done.start_time.ToNanoseconds() <= done.end_time.ToNanoseconds()
    report, rec = done.report, done.report.reconstruction
    expected = audit_deployment(images, labels, Deployment(encodings_per_image=4, seed=1),
                                pool=library_pool(challenge_pool_path), device="cpu")
    assert (rec.images, rec.encodings, report.device) == (12, 48, "cpu")
    assert (rec.pool_images, rec.pool_fingerprint) == (expected.pool_images, expected.pool_fingerprint)
    assert rec.pool_fingerprint == library_pool(challenge_pool_path).fingerprint
    assert rec.grid_png.startswith(b"\x89PNG") and rec.grid_attack == expected.grid_attack
    # The server's pool is the attacker's too; the spec names what ran, the rows say who holds the keys.
    assert list(rows(report)) == ["ciphertext_only", "pool_aware", "key_aware"] == list(done.spec.attacks)
    assert [(row.title, row.bound) for row in report.attacks] == [
        ("ciphertext-only", False), ("pool-aware", False), ("key-aware bound", True)]
    assert done.spec.reconstruction.instahide.k == 6 and done.spec.reconstruction.instahide.mode == 1
    for name, want in expected.attacks.items():
        row = rows(report)[name]
        scores = row.reconstruction
        for metric in ("max_ssim", "mean_ssim", "min_l2", "mean_l2"):
            assert getattr(scores, metric) == pytest.approx(getattr(want.scores, metric), abs=1e-6), metric
        assert scores.recovered_above_0_5 == pytest.approx(want.recovery.fractions[0.5], abs=1e-9)
        assert scores.recovered_above_0_8 == pytest.approx(want.recovery.fractions[0.8], abs=1e-9)
        np.testing.assert_allclose(scores.best_ssim, want.recovery.best_ssim.numpy(), atol=1e-6)
        assert list(scores.best_match) == want.recovery.best_match.tolist()
        assert [b.count for b in scores.best_ssim_histogram] == want.recovery.histogram_counts.tolist()
        assert scores.best_ssim_histogram[0].lower == pytest.approx(-1.0)
        assert scores.best_ssim_histogram[-1].upper == pytest.approx(1.0)
        np.testing.assert_allclose(to_numpy(scores.recovered), want.recovered.numpy(), atol=1e-6)
        assert set(row.stage_seconds) == set(want.stage_seconds)

    summary = get(stub, audit.name, summary_only=True)
    assert [row.reconstruction.max_ssim for row in summary.report.attacks] == [
        row.reconstruction.max_ssim for row in report.attacks]
    assert not summary.report.reconstruction.grid_png
    assert not any(row.reconstruction.HasField("recovered") for row in summary.report.attacks)

    # Watching an ended audit: one event with the final state, then the stream ends.
    (last,) = watch(stub, audit.name)
    assert last.state == audit_pb2.AUDIT_STATE_SUCCEEDED and last.progress.fraction == pytest.approx(1.0)


def test_the_pool_memory_setting_reaches_the_attacks(tmp_path, challenge_pool_path):
    # 1 MiB holds no Gram matrix of the 2,048-image pool (16 MiB): the pool-aware attacks search the pool in
    # small batches and compute the matrix's rows, which rounds differently from the default (on this set the
    # pool-aware Max_SSIM came out 0.110, against 0.122 by default), so the report shows which setting they had.
    images, labels = private_images(12)
    with start_server(tmp_path, "--pool", str(challenge_pool_path), "--state-dir", str(tmp_path / "state"),
                      "--audit-pool-memory-mib", "1") as server, audits(server.target) as stub:
        done = run_to_end(stub, start(stub, upload(small_spec(), images, labels)))
    assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED, done.error
    assert "pool memory 1 MiB" in server.log() and "Traceback" not in server.log()
    expected = audit_deployment(images, labels, Deployment(encodings_per_image=4, seed=1),
                                pool=library_pool(challenge_pool_path), settings=AttackSettings(working_bytes=1 << 20))
    for name in ("pool_aware", "key_aware"):
        scores, want = rows(done.report)[name].reconstruction, expected.attacks[name]
        assert scores.max_ssim == pytest.approx(want.scores.max_ssim, abs=1e-6)
        np.testing.assert_allclose(to_numpy(scores.recovered), want.recovered.numpy(), atol=1e-6)


def test_the_refinement_setting_reaches_the_ciphertext_only_attack(tmp_path, challenge_pool_path):
    images, labels = private_images(12)
    flags = ("--audit-refine-sets", "1", "--audit-refine-steps", "10")
    with start_server(tmp_path, "--pool", str(challenge_pool_path), "--state-dir", str(tmp_path / "state"),
                      *flags) as server, audits(server.target) as stub:
        spec = small_spec(attacks=["ciphertext_only"])  # only the attack the setting changes
        done = run_to_end(stub, start(stub, upload(spec, images, labels)))
    assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED, done.error
    assert "self-refinement 1 sets × 10 steps" in server.log() and "Traceback" not in server.log()
    row = rows(done.report)["ciphertext_only"]
    assert "self_refinement" in row.stage_seconds
    expected = audit_deployment(images, labels, Deployment(encodings_per_image=4, seed=1),
                                pool=library_pool(challenge_pool_path), attacks=["ciphertext_only"],
                                settings=AttackSettings(refine_sets=1, refine_steps=10)).attacks["ciphertext_only"]
    assert row.reconstruction.max_ssim == pytest.approx(expected.scores.max_ssim, abs=1e-6)
    np.testing.assert_allclose(to_numpy(row.reconstruction.recovered), expected.recovered.numpy(), atol=1e-6)


def test_precomputed_encodings(stub, challenge_pool_path):
    images, labels = private_images(12, seed=3)
    challenge, _ = build_challenge(images, labels, encodings_per_image=4, k=6, pool=library_pool(challenge_pool_path),
                                   num_classes=10, seed=4)
    spec = spec_of(k=6, precomputed_encodings=True)  # T = 48 / 12 = 4

    def requests():
        yield chunk_of(spec=spec, images=images)
        for i in range(0, 48, 20):
            yield chunk_of(encodings=challenge.encryption[i:i + 20].astype(np.float32),
                           encoding_labels=challenge.labels[i:i + 20].astype(np.float32))

    done = run_to_end(stub, start(stub, requests()))
    assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED, done.error
    rec = done.report.reconstruction
    assert (rec.images, rec.encodings) == (12, 48)
    assert list(rows(done.report)) == ["ciphertext_only"]  # no keys, and no knowing their pool
    assert (rec.pool_images, rec.pool_fingerprint) == (0, "")  # made elsewhere, with an unknown pool
    expected = audit_encodings(challenge.encryption, challenge.labels, images, k=6, encodings_per_image=4)
    assert rows(done.report)["ciphertext_only"].reconstruction.max_ssim == pytest.approx(
        expected.attacks["ciphertext_only"].scores.max_ssim, abs=1e-6)


def test_default_attacks_can_be_left_out(stub):
    done = run_to_end(stub, start_small(stub, 8, encodings_per_image=3, skipped_attacks=["pool_aware", "key_aware"]))
    assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED, done.error
    assert list(done.spec.attacks) == ["ciphertext_only"] and not done.spec.skipped_attacks  # as resolved
    assert list(rows(done.report)) == ["ciphertext_only"]


def test_attacks_named_bring_what_they_start_from(stub):
    done = run_to_end(stub, start_small(stub, 8, encodings_per_image=3, attacks=["pool_aware"]))
    assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED, done.error
    assert list(rows(done.report)) == ["ciphertext_only", "pool_aware"] == list(done.spec.attacks)


def test_server_side_dataset(stub):
    done = run_to_end(stub, start(stub, [audit_pb2.StartAuditRequest(spec=small_spec(dataset="sets/good.npz"))]))
    assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED, done.error
    assert done.report.reconstruction.images == 12 and done.spec.dataset == "sets/good.npz"


# Cancellation and deletion.

def test_cancel_queued_and_running_and_delete(stub):
    running = start_long(stub)
    queued = start_small(stub)  # one worker: waits behind ``running``
    before = time.monotonic()
    cancelled = stub.CancelAudit(audit_pb2.CancelAuditRequest(name=queued.name), timeout=30).audit
    assert cancelled.state == audit_pb2.AUDIT_STATE_CANCELLED and time.monotonic() - before < 1
    assert get(stub, queued.name).state == audit_pb2.AUDIT_STATE_CANCELLED

    events = watch(stub, running.name, until="recovery")
    assert events[-1].progress.stage == "recovery"
    code, details = code_of(stub.DeleteAudit, audit_pb2.DeleteAuditRequest(name=running.name))
    assert code == C.FAILED_PRECONDITION and "cancel" in details

    before = time.monotonic()
    cancelled = stub.CancelAudit(audit_pb2.CancelAuditRequest(name=running.name), timeout=30).audit
    assert cancelled.state == audit_pb2.AUDIT_STATE_CANCELLED
    assert time.monotonic() - before < 5
    (last,) = watch(stub, running.name)
    assert last.state == audit_pb2.AUDIT_STATE_CANCELLED
    # Cancelling an ended audit returns it as it is.
    again = stub.CancelAudit(audit_pb2.CancelAuditRequest(name=running.name), timeout=30).audit
    assert again.state == audit_pb2.AUDIT_STATE_CANCELLED

    stub.DeleteAudit(audit_pb2.DeleteAuditRequest(name=running.name), timeout=30)
    assert code_of(get, stub, running.name)[0] == C.NOT_FOUND
    assert code_of(stub.DeleteAudit, audit_pb2.DeleteAuditRequest(name=running.name))[0] == C.NOT_FOUND


def test_names(stub):
    unknown = "audits/" + "0" * 32
    for name, code in ((unknown, C.NOT_FOUND), ("audits/xyz", C.INVALID_ARGUMENT), ("", C.INVALID_ARGUMENT),
                       ("operations/" + "0" * 32, C.INVALID_ARGUMENT)):
        assert code_of(get, stub, name)[0] == code, name
        assert code_of(watch, stub, name)[0] == code, name
        assert code_of(stub.CancelAudit, audit_pb2.CancelAuditRequest(name=name))[0] == code, name
        assert code_of(stub.DeleteAudit, audit_pb2.DeleteAuditRequest(name=name))[0] == code, name


# Listing.

def test_list_pages_newest_first_and_filters_by_state(stub):
    mine = [start_small(stub, 8, seed=i, encodings_per_image=3, skipped_attacks=["key_aware"]).name for i in range(3)]
    for name in mine:
        watch(stub, name)
    cancelled = start_long(stub)
    stub.CancelAudit(audit_pb2.CancelAuditRequest(name=cancelled.name), timeout=30)

    listed, token, pages = [], "", 0
    while True:
        page = stub.ListAudits(audit_pb2.ListAuditsRequest(page_size=2, page_token=token), timeout=30)
        assert len(page.audits) <= 2
        listed.extend(page.audits)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    names = [a.name for a in listed]
    assert len(names) == len(set(names)) and pages >= 2
    assert [n for n in names if n in mine] == mine[::-1]  # newest first
    assert names[0] == cancelled.name
    creates = [a.create_time.ToNanoseconds() for a in listed]
    assert creates == sorted(creates, reverse=True)
    assert all(not a.report.reconstruction.grid_png and not any(r.reconstruction.HasField("recovered")
                                                                   for r in a.report.attacks) for a in listed)
    assert all(rows(a.report)["ciphertext_only"].reconstruction.max_ssim > 0 for a in listed if a.name in mine)

    only = stub.ListAudits(audit_pb2.ListAuditsRequest(state=audit_pb2.AUDIT_STATE_CANCELLED), timeout=30).audits
    assert cancelled.name in [a.name for a in only]
    assert all(a.state == audit_pb2.AUDIT_STATE_CANCELLED for a in only)
    succeeded = stub.ListAudits(audit_pb2.ListAuditsRequest(state=audit_pb2.AUDIT_STATE_SUCCEEDED), timeout=30).audits
    assert set(mine) <= {a.name for a in succeeded}

    first = stub.ListAudits(audit_pb2.ListAuditsRequest(page_size=1), timeout=30)
    forged = [base64.urlsafe_b64encode(f"v1:{seq}:0".encode()).decode() for seq in (2**63, 10**30, 0, -5)]
    for request, field in ((audit_pb2.ListAuditsRequest(page_token="garbage!"), "page_token"),
                           *((audit_pb2.ListAuditsRequest(page_token=token), "page_token") for token in forged),
                           (audit_pb2.ListAuditsRequest(page_token=first.next_page_token,
                                                        state=audit_pb2.AUDIT_STATE_FAILED), "page_token"),
                           (audit_pb2.ListAuditsRequest(page_size=-1), "page_size"),
                           (audit_pb2.ListAuditsRequest(state=42), "state")):
        code, details = code_of(stub.ListAudits, request)
        assert code == C.INVALID_ARGUMENT and details.startswith(field + ":"), (request, code, details)


# Refusals.

def _bad_requests(data_root: pathlib.Path) -> list[tuple[str, list, grpc.StatusCode, str]]:
    images, labels = private_images(12)
    spec = small_spec()
    chunk = chunk_of(images=images, labels=labels.tolist())
    floats = (images.astype(np.float32) / 64.0)  # outside [-1, 1]
    enc = np.zeros((6, 32, 32, 3), np.float32)
    precomputed = spec_of(precomputed_encodings=True)
    config = "spec.reconstruction.instahide"
    return [
        ("empty stream", [], C.INVALID_ARGUMENT, "spec"),
        ("no spec first", [chunk], C.INVALID_ARGUMENT, "spec"),
        ("spec twice", [audit_pb2.StartAuditRequest(spec=spec), chunk, audit_pb2.StartAuditRequest(spec=spec)],
         C.INVALID_ARGUMENT, "spec"),
        ("k too small", list(upload(small_spec(k=1), images, labels)), C.INVALID_ARGUMENT, f"{config}.k"),
        ("k without a public image", list(upload(small_spec(k=2), images, labels)), C.INVALID_ARGUMENT,
         f"{config}.k"),
        ("images under the SSIM window", list(upload(spec, *private_images(4, shape=(6, 32, 3)))),
         C.INVALID_ARGUMENT, "images.shape"),
        ("encodings under the SSIM window", [chunk_of(spec=precomputed, encodings=enc[:, :, :1])],
         C.INVALID_ARGUMENT, "encodings.shape"),
        ("k too large", list(upload(small_spec(k=17), images, labels)), C.INVALID_ARGUMENT, f"{config}.k"),
        ("T too large", list(upload(small_spec(encodings_per_image=1001), images, labels)), C.INVALID_ARGUMENT,
         "spec.reconstruction.encodings_per_image"),
        ("inside mode", list(upload(small_spec(mode=instahide_pb2.MIXING_MODE_INSIDE), images, labels)),
         C.INVALID_ARGUMENT, f"{config}.mode"),
        ("keys asked of an audit", [audit_pb2.StartAuditRequest(spec=audit_pb2.AuditSpec(
            reconstruction=reconstruction_pb2.ReconstructionSpec(
                instahide=instahide_pb2.InstaHideConfig(return_keys=True))))], C.INVALID_ARGUMENT,
         f"{config}.return_keys"),
        ("one image", list(upload(spec, images[:1], labels[:1])), C.INVALID_ARGUMENT, "images"),
        ("no images", list(upload(spec)), C.INVALID_ARGUMENT, "images"),
        ("labels short", list(upload(spec, images, labels[:-1])), C.INVALID_ARGUMENT, "labels"),
        ("label out of range", list(upload(small_spec(num_classes=5), images, labels)), C.INVALID_ARGUMENT,
         "labels"),
        ("shapes differ", [audit_pb2.StartAuditRequest(spec=spec), chunk,
                           chunk_of(images=private_images(2, shape=(16, 16, 3))[0], labels=[0, 1])],
         C.INVALID_ARGUMENT, "images.shape"),
        ("float out of range", list(upload(spec, floats, labels)), C.INVALID_ARGUMENT, "images"),
        ("four channels", list(upload(spec, *private_images(4, shape=(32, 32, 4)))), C.INVALID_ARGUMENT,
         "images.shape"),
        ("too many images", list(upload(spec, *private_images(MAX_IMAGES + 1), chunk=40)),
         C.RESOURCE_EXHAUSTED, "images"),
        ("encodings without precomputed", [chunk_of(spec=spec, encodings=enc)], C.INVALID_ARGUMENT, "encodings"),
        ("encoding labels mismatch", [chunk_of(spec=precomputed, images=images, encodings=enc,
                                               encoding_labels=np.zeros((5, 10), np.float32))],
         C.INVALID_ARGUMENT, "encoding_labels"),
        *((f"encoding labels {value}", [chunk_of(spec=precomputed, images=images, encodings=enc,
                                                 encoding_labels=np.full((6, 10), value, np.float32))],
           C.INVALID_ARGUMENT, "encoding_labels") for value in (np.nan, np.inf, -0.1, 0.2)),  # 0.2: rows sum to 2
        ("an unknown attack", list(upload(small_spec(attacks=["ciphertext_only", "nope"]), images, labels)),
         C.INVALID_ARGUMENT, "spec.attacks: unknown attack 'nope'; expected one of ['ciphertext_only'"),
        ("attacks named and changed at once", list(upload(small_spec(attacks=["ciphertext_only"],
                                                                     skipped_attacks=["key_aware"]), images, labels)),
         C.INVALID_ARGUMENT, "spec.attacks"),
        ("a pool-aware attack on precomputed encodings", [chunk_of(
            spec=spec_of(precomputed_encodings=True, attacks=["pool_aware"]), images=images, encodings=enc,
            encoding_labels=np.full((6, 10), 0.05, np.float32))],
         C.INVALID_ARGUMENT, "spec.attacks: pool_aware holds the pool, which this audit does not have"),
        ("photo-aware for precomputed encodings", [chunk_of(
            spec=spec_of(precomputed_encodings=True, extra_attacks=["photo_aware"]), images=images, encodings=enc,
            encoding_labels=np.full((6, 10), 0.05, np.float32))],
         C.INVALID_ARGUMENT, "spec.attacks: photo_aware holds the photos"),
        ("photo-aware with a pool given as images", list(upload(small_spec(extra_attacks=["photo_aware"]), images,
                                                                labels)),
         C.FAILED_PRECONDITION, "spec.attacks: photo_aware holds the photos the pool was cut from, but this server's"),
        ("unknown dataset", [audit_pb2.StartAuditRequest(spec=small_spec(dataset="sets/missing.npz"))],
         C.NOT_FOUND, "spec.dataset"),
        ("dataset lacks labels", [audit_pb2.StartAuditRequest(spec=small_spec(dataset="unlabelled.npz"))],
         C.INVALID_ARGUMENT, "spec.dataset"),
        ("dataset with ..", [audit_pb2.StartAuditRequest(spec=small_spec(dataset="sets/../../outside.npz"))],
         C.PERMISSION_DENIED, "spec.dataset"),
        ("absolute dataset", [audit_pb2.StartAuditRequest(
            spec=small_spec(dataset=str(data_root / "sets" / "good.npz")))], C.PERMISSION_DENIED, "spec.dataset"),
        ("dataset symlinked out", [audit_pb2.StartAuditRequest(spec=small_spec(dataset="escape.npz"))],
         C.PERMISSION_DENIED, "spec.dataset"),
        ("dataset plus upload", [audit_pb2.StartAuditRequest(spec=small_spec(dataset="sets/good.npz")), chunk],
         C.INVALID_ARGUMENT, "spec.dataset"),
        *((f"dataset {name[:20]!r}", [audit_pb2.StartAuditRequest(spec=small_spec(dataset=name))],
           C.INVALID_ARGUMENT, "spec.dataset")
          for name in ("empty.npz", "zip-magic.npz", "lone-array.npz", "bad-crc.npz", "zero-size.npz",
                       "sets/a\0b.npz", "x" * 300, "x/" * 3000)),
    ]


def test_bad_requests_name_their_field(stub, data_root):
    failures = []
    for case, requests, code, field in _bad_requests(data_root):
        got, details = code_of(start, stub, requests)
        if got != code or not details.startswith(field):
            failures.append(f"{case}: {got.name} {details!r}, expected {code.name} about {field}")
    assert not failures, "\n".join(failures)


# The small audit takes 4 to 5.5 s through a server on a slow 2-core box (1.5 s in-process), the long one minutes.
TIME_LIMIT = 10


def test_queue_full_time_limit_and_no_data_root(tmp_path, challenge_pool_path):
    args = ("--pool", str(challenge_pool_path), "--state-dir", str(tmp_path / "state"), "--audit-workers", "1",
            "--audit-queue-size", "1", "--audit-timeout-seconds", str(TIME_LIMIT))
    with start_server(tmp_path, *args) as server, audits(server.target) as stub:
        long_audit = start_long(stub, MAX_IMAGES)
        wait_running(stub, long_audit.name)
        queued = start_small(stub, skipped_attacks=["pool_aware"])  # lean enough for the limit on a loaded box
        assert get(stub, queued.name).state == audit_pb2.AUDIT_STATE_QUEUED
        code, details = code_of(start_small, stub)
        assert code == C.RESOURCE_EXHAUSTED and "queue" in details

        timed_out = run_to_end(stub, long_audit)
        assert timed_out.state == audit_pb2.AUDIT_STATE_FAILED and timed_out.error == "time limit exceeded"
        ran = (timed_out.end_time.ToNanoseconds() - timed_out.start_time.ToNanoseconds()) / 1e9
        assert TIME_LIMIT <= ran < 2 * TIME_LIMIT
        small = run_to_end(stub, queued)
        assert small.state == audit_pb2.AUDIT_STATE_SUCCEEDED, small.error  # a small audit fits in the limit

        code, details = code_of(start, stub, [audit_pb2.StartAuditRequest(spec=small_spec(dataset="x.npz"))])
        assert code == C.FAILED_PRECONDITION and "data-root" in details
    assert "Traceback" not in server.log()


def test_private_images_are_not_written_to_disk(audit_server):
    """The state folder holds the audit database and the key store only, and nothing there holds the uploaded
    pixels."""
    state = pathlib.Path(audit_server.process.args[audit_server.process.args.index("--state-dir") + 1])
    databases = {f"{name}.db{suffix}" for name in ("instahide", "keys") for suffix in ("", "-wal", "-shm")}
    assert {p.name for p in state.iterdir()} <= databases | {"key-encryption-key"}
    images, _ = private_images(12)
    blob = b"".join(p.read_bytes() for p in state.iterdir())
    assert images[:2].tobytes() not in blob
    assert os.path.getsize(state / "instahide.db") > 0
