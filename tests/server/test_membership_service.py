"""Membership audits and output defenses over a real server process: the report equals the library's, bad inputs
are refused naming their field, a defense served by Encode is the one audited."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from instahide_client.instahide.v1 import (
    audit_pb2,
    defenses_pb2,
    membership_pb2,
    transform_pb2,
    transform_pb2_grpc,
)
from instahide_client.tensors import to_numpy, to_tensor
from membership_set import membership_set
from server_testlib import channel, start_server
from test_audit_service import audits, code_of, get, rows, start, watch

from instahide_ops.audits.membership import MembershipData, audit_membership
from instahide_ops.transforms.defenses import Defense, apply_defense

C = grpc.StatusCode
SPEC = "spec.membership"


def defense(**member) -> defenses_pb2.OutputDefense:
    return defenses_pb2.OutputDefense(**member)


GAUSS = defense(gaussian=defenses_pb2.GaussianDefense(sigma=0.1))
ARGMAX = defense(argmax=defenses_pb2.ArgmaxDefense())


def spec_of(*defenses, seed: int | None = 5, attacks=(), **fields) -> audit_pb2.AuditSpec:
    return audit_pb2.AuditSpec(attacks=list(attacks), membership=membership_pb2.MembershipSpec(
        defenses=list(defenses), seed=seed, **fields))


def chunks(spec, data: dict, *, size: int = 150, references: bool = True):
    yield audit_pb2.StartAuditRequest(spec=spec)
    n = len(data["member"])
    for start_at in range(0, n, size):
        part = slice(start_at, start_at + size)
        chunk = membership_pb2.MembershipChunk(outputs=to_tensor(data["outputs"][part]),
                                               labels=to_tensor(data["labels"][part]),
                                               member=data["member"][part].tolist())
        if references:
            chunk.reference_outputs.CopyFrom(to_tensor(np.ascontiguousarray(data["reference_outputs"][:, part])))
            chunk.reference_member.CopyFrom(to_tensor(np.ascontiguousarray(
                data["reference_member"][:, part].astype(np.uint8))))
        yield audit_pb2.StartAuditRequest(membership=chunk)


@pytest.fixture(scope="module")
def data() -> dict:
    return membership_set(400, seed=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("membership")
    root = tmp / "data"
    root.mkdir()
    np.savez(root / "logits.npz", logits=data["outputs"], labels=data["labels"], member=data["member"])
    with start_server(tmp, "--state-dir", str(tmp / "state"), "--data-root", str(root), "--audit-workers", "1",
                      "--pool-size", "64") as server:
        yield server


@pytest.fixture
def stub(server):
    with audits(server.target) as stub:
        yield stub


def test_the_service_report_equals_the_library_audit(stub, data):
    audit = start(stub, chunks(spec_of(GAUSS, ARGMAX), data))
    assert audit.spec.WhichOneof("kind") == "membership"
    events = watch(stub, audit.name)
    assert events[-1].state == audit_pb2.AUDIT_STATE_SUCCEEDED, events[-1]
    done = get(stub, audit.name)
    expected = audit_membership(
        MembershipData(data["outputs"], data["labels"], data["member"], data["reference_outputs"],
                       data["reference_member"]),
        attacks=tuple(done.spec.attacks), defenses=(Defense("gauss", 0.1), Defense("argmax")), seed=5)
    assert {"loss", "lira_online", "lira_offline", "rmia"} <= set(done.spec.attacks)  # references came
    assert list(rows(done.report)) == list(expected.attacks) == list(done.spec.attacks)
    report = done.report.membership
    assert (report.task, report.examples, report.members, report.references) == (
        "classification", 400, int(data["member"].sum()), 8)
    assert report.utility_name == "accuracy" and report.utility == pytest.approx(expected.utility)
    assert report.roc_png.startswith(b"\x89PNG")
    for name, want in expected.attacks.items():
        got = rows(done.report)[name].membership
        assert got.auc == pytest.approx(want.metrics.auc) and got.advantage == pytest.approx(want.metrics.advantage)
        tprs = {point.fpr: (point.tpr if point.HasField("tpr") else None) for point in got.tpr_at_fpr}
        assert tprs == pytest.approx(want.metrics.tpr_at_fpr)
        np.testing.assert_allclose(to_numpy(got.risk_scores), want.scores, rtol=1e-5)
    assert [d.name for d in report.defenses] == ["gauss:0.1", "argmax"]
    assert report.defenses[1].defense.WhichOneof("defense") == "argmax"
    for got, want in zip(report.defenses, expected.defenses, strict=True):
        assert got.utility == pytest.approx(want.utility)
        assert {n: s.auc for n, s in got.attacks.items()} == pytest.approx(
            {n: r.metrics.auc for n, r in want.attacks.items()})
    lira = rows(done.report)["lira_online"].membership
    loss = rows(done.report)["loss"].membership
    assert lira.auc > loss.auc  # the references help, as LiRA shows

    summary = get(stub, audit.name, summary_only=True)
    assert not summary.report.membership.roc_png
    assert not any(row.membership.HasField("risk_scores") for row in summary.report.attacks)


def test_a_dataset_of_logits_without_references(stub):
    spec = spec_of()
    spec.dataset = "logits.npz"
    audit = start(stub, [audit_pb2.StartAuditRequest(spec=spec)])
    assert watch(stub, audit.name)[-1].state == audit_pb2.AUDIT_STATE_SUCCEEDED
    done = get(stub, audit.name)
    assert not {"lira_online", "lira_offline", "rmia"} & set(done.spec.attacks) and "loss" in done.spec.attacks
    assert done.report.membership.references == 0


@pytest.mark.parametrize(("spec", "change", "field"), [
    (spec_of(defense(top_k=defenses_pb2.TopKDefense(k=9))), None, f"{SPEC}.defenses"),
    (spec_of(defense(gaussian=defenses_pb2.GaussianDefense(sigma=-1))), None, f"{SPEC}.defenses[0].gaussian.sigma"),
    (spec_of(defense()), None, f"{SPEC}.defenses[0]"),
    (spec_of(attacks=["nope"]), None, "spec.attacks"),
    (spec_of(attacks=["lira_online"]), "no references", "spec.attacks"),
    (spec_of(), "labels out of range", "labels"),
    (spec_of(), "rank 3 outputs", "outputs.shape"),
    (spec_of(), "members missing", "member"),
])
def test_bad_inputs_are_refused_naming_their_field(stub, data, spec, change, field):
    data = {k: v.copy() for k, v in data.items()}
    references = True
    if change == "no references":
        references = False
    elif change == "labels out of range":
        data["labels"][3] = 7
    elif change == "rank 3 outputs":
        data["outputs"] = data["outputs"][:, :, None]
    requests = list(chunks(spec, data, references=references))
    if change == "members missing":
        del requests[1].membership.member[-1]
    code, details = code_of(start, stub, requests)
    assert code == C.INVALID_ARGUMENT and details.startswith(field), details


def test_encode_serves_the_defense_the_audit_audits(server, data):
    probabilities = torch.softmax(torch.from_numpy(data["outputs"][:64]), dim=1).numpy()
    config = transform_pb2.EncodeConfig(output_defense=defenses_pb2.OutputDefenseConfig(
        defense=defense(top_k=defenses_pb2.TopKDefense(k=2)), outputs_kind=defenses_pb2.OUTPUT_KIND_PROBABILITIES))
    bad = transform_pb2.EncodeConfig(output_defense=defenses_pb2.OutputDefenseConfig(
        defense=defense(top_k=defenses_pb2.TopKDefense(k=9))))
    requests = [transform_pb2.EncodeRequest(request_id="a", images=to_tensor(probabilities), config=config),
                transform_pb2.EncodeRequest(request_id="b", images=to_tensor(probabilities), config=bad),
                transform_pb2.EncodeRequest(request_id="c", images=to_tensor(probabilities[:, :, None, None]),
                                            config=config),
                transform_pb2.EncodeRequest(request_id="d", images=to_tensor(data["outputs"][:64, :, None]))]
    with channel(server.target) as chan:
        responses = list(transform_pb2_grpc.TransformServiceStub(chan).Encode(iter(requests), timeout=60))
    assert [r.request_id for r in responses] == ["a", "b", "c", "d"]
    want = apply_defense(torch.from_numpy(probabilities), Defense("topk", 2)).numpy()
    np.testing.assert_allclose(to_numpy(responses[0].encoded), want, rtol=1e-6)
    assert responses[1].error.field.startswith("config.output_defense.defense")
    np.testing.assert_allclose(to_numpy(responses[2].encoded)[:, :, 0, 0], want, rtol=1e-6)  # (N, C, h, w)
    assert responses[3].error.field == "images.shape"  # no config: the stream's last one applies; rank 3 refused
