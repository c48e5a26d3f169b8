"""DisguisedNets reconstruction audits over a real server process: the report equals the library's, progress comes
in order, bad specs are refused naming their field, datasets need no labels."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from instahide_client.instahide.v1 import audit_pb2, disguisednets_pb2, reconstruction_pb2
from instahide_client.tensors import to_numpy
from instahide_server.audit.disguisednets import public_photos
from server_testlib import start_server
from test_audit_service import audits, challenge_pool_path, code_of, get, rows, start, upload, watch  # noqa: F401

from instahide_ops.audits.reconstruction.disguisednets.audit import DisguiseDeployment, audit_disguise
from instahide_ops.transforms.disguisednets import DisguisedNetsParams
from instahide_ops.transforms.instahide.challenge import bundled_private_images

C = grpc.StatusCode
SPEC = "spec.reconstruction.disguised_nets"


def disguise_spec(*, known_pairs: int | None = 2, seed: int | None = 3, skip_curves: bool = False,
                  **params) -> audit_pb2.AuditSpec:
    params.setdefault("block_rows", 4)
    config = reconstruction_pb2.DisguisedNetsAudit(params=disguisednets_pb2.DisguisedNetsParams(**params),
                                                   known_pairs=known_pairs, seed=seed, skip_curves=skip_curves)
    return audit_pb2.AuditSpec(reconstruction=reconstruction_pb2.ReconstructionSpec(disguised_nets=config))


@pytest.fixture(scope="module")
def privates() -> tuple[np.ndarray, np.ndarray]:
    return bundled_private_images(24, seed=7)


@pytest.fixture(scope="module")
def server(tmp_path_factory, challenge_pool_path, privates):  # noqa: F811
    tmp = tmp_path_factory.mktemp("disguise-audits")
    root = tmp / "data"
    root.mkdir()
    np.savez(root / "unlabelled.npz", images=privates[0])
    with start_server(tmp, "--pool", str(challenge_pool_path), "--state-dir", str(tmp / "state"),
                      "--data-root", str(root), "--audit-workers", "1") as server:
        yield server


@pytest.fixture
def stub(server):
    with audits(server.target) as stub:
        yield stub


def test_the_service_report_equals_the_library_audit(stub, privates):
    images, labels = privates
    audit = start(stub, upload(disguise_spec(noise=25.0), images, labels))
    events = watch(stub, audit.name)
    assert events[-1].state == audit_pb2.AUDIT_STATE_SUCCEEDED, events[-1]
    done = get(stub, audit.name)
    expected = audit_disguise(images, labels, DisguiseDeployment(DisguisedNetsParams(noise=25.0), 2, seed=3),
                              photos=public_photos())
    assert list(done.spec.attacks) == list(expected.attacks) == list(rows(done.report))
    stages = list(dict.fromkeys(e.progress.stage for e in events if e.progress.stage))
    assert stages[0] == "disguising" and stages[-2:] == ["curves", "scoring"]
    fractions = [e.progress.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    resolved = done.spec.reconstruction.disguised_nets
    assert resolved.known_pairs == 2 and resolved.params.block_cols == 4 and resolved.params.permute
    rec = done.report.reconstruction
    assert (rec.images, rec.encodings, rec.known_pairs) == (24, 22, 2)
    assert rec.grid_png.startswith(b"\x89PNG") and rec.curves_png.startswith(b"\x89PNG")
    assert rec.grid_attack == expected.grid_attack
    assert [(p.attack, p.axis, p.value) for p in rec.curves] == [(p.attack, p.axis, p.value) for p in expected.curves]
    np.testing.assert_allclose([p.mean_ssim for p in rec.curves], [p.mean_ssim for p in expected.curves], atol=1e-6)
    for name, want in expected.attacks.items():
        scores = rows(done.report)[name].reconstruction
        assert scores.max_ssim == pytest.approx(want.scores.max_ssim, abs=1e-6)
        assert scores.mean_ssim == pytest.approx(want.scores.mean_ssim, abs=1e-6)
        np.testing.assert_allclose(scores.best_ssim, want.recovery.best_ssim.numpy(), atol=1e-6)
        assert list(scores.best_match) == list(range(22))
        np.testing.assert_allclose(to_numpy(scores.recovered), want.recovered.numpy(), atol=1e-6)
        assert scores.permutation_accuracy == pytest.approx(want.permutation_accuracy)
        assert scores.HasField("attack_success") == (want.attack_success is not None)
        if want.attack_success is not None:
            assert scores.attack_success.success == pytest.approx(want.attack_success.success)
    assert not rows(done.report)["known_pairs"].reconstruction.HasField("hit_rate")  # RMT: no codebook

    summary = get(stub, audit.name, summary_only=True)
    assert not summary.report.reconstruction.curves_png and len(summary.report.reconstruction.curves) == len(rec.curves)


def test_a_dataset_without_labels_is_audited_without_attack_success(stub):
    spec = disguise_spec(method=disguisednets_pb2.DISGUISE_METHOD_AES, scale=8, skip_curves=True, known_pairs=4)
    spec.dataset = "unlabelled.npz"
    audit = start(stub, [audit_pb2.StartAuditRequest(spec=spec)])
    assert watch(stub, audit.name)[-1].state == audit_pb2.AUDIT_STATE_SUCCEEDED
    done = get(stub, audit.name)
    pairs = rows(done.report)["known_pairs"].reconstruction
    assert 0 < pairs.hit_rate < 1 and not pairs.HasField("attack_success")
    assert not done.report.reconstruction.curves and not done.report.reconstruction.curves_png


@pytest.mark.parametrize(("spec", "field"), [
    (disguise_spec(block_rows=5), f"{SPEC}.params.block_rows"),
    (disguise_spec(method=7), f"{SPEC}.params.method"),
    (disguise_spec(noise=-1.0), f"{SPEC}.params.noise"),
    (disguise_spec(method=disguisednets_pb2.DISGUISE_METHOD_AES, noise=5.0), f"{SPEC}.params.noise"),
    (disguise_spec(known_pairs=300), f"{SPEC}.known_pairs"),
    (disguise_spec(known_pairs=23), f"{SPEC}.known_pairs"),  # leaves one image to attack
    (audit_pb2.AuditSpec(attacks=["known_pairs"], reconstruction=disguise_spec(known_pairs=0).reconstruction),
     "spec.attacks"),
    (audit_pb2.AuditSpec(attacks=["pool_aware"], reconstruction=disguise_spec().reconstruction), "spec.attacks"),
    (audit_pb2.AuditSpec(reconstruction=reconstruction_pb2.ReconstructionSpec(
        disguised_nets=disguise_spec().reconstruction.disguised_nets, encodings_per_image=4)),
     "spec.reconstruction.encodings_per_image"),
])
def test_bad_specs_are_refused_naming_their_field(stub, privates, spec, field):
    images, labels = privates
    code, details = code_of(start, stub, upload(spec, images, labels))
    assert code == C.INVALID_ARGUMENT and details.startswith(f"{field}:"), details


def test_bad_labels_are_refused_and_none_is_fine(stub, privates):
    images, labels = privates
    code, details = code_of(start, stub, upload(disguise_spec(), images, labels[:5]))
    assert code == C.INVALID_ARGUMENT and details.startswith("labels:"), details
    audit = start(stub, upload(disguise_spec(skip_curves=True), images, []))
    assert watch(stub, audit.name)[-1].state == audit_pb2.AUDIT_STATE_SUCCEEDED
