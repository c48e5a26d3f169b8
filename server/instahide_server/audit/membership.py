"""Membership audits on the wire: ``MembershipSpec`` and its chunks → instahide_ops' ``audit_membership`` →
``AuditReport``.

The owner runs its model and uploads what it would release: the outputs on a labelled audit set, each example's
membership, optionally K reference models' outputs with their memberships (LiRA, RMIA). Or names a server-side
``.npz`` (``outputs`` or ``logits``, ``labels``, ``member``, optional ``reference_outputs``,
``reference_member``). Defenses are read by ``transform.defenses``, the functions Encode serves them with, so
what is audited is what is served. The attacks to run are resolved once the data says the task (classification
or segmentation) and whether references came.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from instahide_client.instahide.v1 import audit_pb2, membership_pb2, tensor_pb2
from instahide_client.tensors import to_tensor

from instahide_ops.audits.membership import (
    MEMBERSHIP_ATTACKS,
    MembershipData,
    MembershipReport,
    audit_membership,
    choose_membership_attacks,
)
from instahide_ops.audits.membership.audit import example_slices
from instahide_ops.audits.membership.metrics import MembershipMetrics
from instahide_ops.audits.progress import CancelToken
from instahide_ops.errors import InvalidInputError
from instahide_server.audit.inputs import UNREADABLE, concatenate, decode, dtype_name, open_npz
from instahide_server.audit.kinds import Accepted, ProgressCallback
from instahide_server.errors import InvalidArgument, ResourceExhausted
from instahide_server.transform.defenses import defense_from_message, outputs_kind

_SPEC = "spec.membership"
_FLOATS = (tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
DEFAULT_IGNORE_INDEX = 255
_FIELDS = {"outputs": "outputs", "labels": "labels", "member": "member", "reference_outputs": "reference_outputs",
           "reference_member": "reference_member", "ignore_index": f"{_SPEC}.ignore_index", "attacks": "spec.attacks",
           "defense": f"{_SPEC}.defenses"}


@dataclass(frozen=True)
class MembershipParams:
    """The spec, read: how the outputs are given, the ignored label, the defenses (with their messages, in
    order), the seed and the attacks asked for."""

    outputs_are: str
    ignore_index: int
    defenses: tuple
    defense_messages: tuple
    seed: int | None
    attacks: tuple[str, ...]
    extra: tuple[str, ...]
    skipped: tuple[str, ...]


@contextlib.contextmanager
def _named_fields(dataset: str = "") -> Iterator[None]:
    """instahide_ops' errors as INVALID_ARGUMENT naming the request field (``spec.dataset`` for a dataset's)."""
    try:
        yield
    except InvalidInputError as exc:
        path = "spec.dataset" if dataset and exc.field not in ("attacks", "ignore_index") else \
            _FIELDS.get(exc.field, exc.field)
        detail = f"{dataset!r} {exc.field}: " if dataset else ""
        raise InvalidArgument(f"{path}: {detail}{exc.reason}", path) from None


class MembershipKind:
    """The ``kinds.AuditKind`` of membership audits."""

    field = "membership"

    def __init__(self, *, device) -> None:
        self._device = device

    def accept(self, spec: audit_pb2.AuditSpec) -> Accepted:
        message = spec.membership
        defenses = tuple(defense_from_message(d, field=f"{_SPEC}.defenses[{i}]")
                         for i, d in enumerate(message.defenses))
        for name in (*spec.attacks, *spec.extra_attacks, *spec.skipped_attacks):
            with _named_fields():
                MEMBERSHIP_ATTACKS.get(name)
        if spec.attacks and (spec.extra_attacks or spec.skipped_attacks):
            raise InvalidArgument("spec.attacks: extra and skipped attacks change the defaults; with attacks named, "
                                  "name them all", "spec.attacks")
        params = MembershipParams(
            outputs_kind(message.outputs_kind, field=f"{_SPEC}.outputs_kind"),
            message.ignore_index if message.HasField("ignore_index") else DEFAULT_IGNORE_INDEX,
            defenses, tuple(message.defenses), message.seed if message.HasField("seed") else None,
            tuple(spec.attacks), tuple(spec.extra_attacks), tuple(spec.skipped_attacks))
        resolved = audit_pb2.AuditSpec()
        resolved.CopyFrom(spec)
        resolved.membership.ignore_index = params.ignore_index
        return Accepted(resolved, params, dataset=spec.dataset)

    def upload(self, accepted: Accepted, *, max_images: int) -> Upload:
        return Upload(accepted.params, max_examples=max_images)

    def read_dataset(self, path: pathlib.Path, accepted: Accepted, *, max_images: int) -> MembershipData:
        name = accepted.dataset
        try:
            with open_npz(path, name, ("labels", "member")) as data:
                key = "outputs" if "outputs" in data.files else "logits" if "logits" in data.files else None
                if key is None:
                    raise InvalidArgument(f"spec.dataset: {name!r} has neither `outputs` nor `logits`",
                                          "spec.dataset")
                outputs = np.asarray(data[key])
                if len(outputs) > max_images:
                    raise ResourceExhausted(f"spec.dataset: {len(outputs)} examples, more than this server's limit "
                                            f"of {max_images} per audit", "spec.dataset")
                arrays = {"outputs": outputs, "labels": np.asarray(data["labels"]),
                          "member": np.asarray(data["member"]).astype(bool)}
                for optional in ("reference_outputs", "reference_member"):
                    arrays[optional] = np.asarray(data[optional]) if optional in data.files else None
        except UNREADABLE as exc:
            raise InvalidArgument(f"spec.dataset: cannot read {name!r} as a .npz: {exc}", "spec.dataset") from None
        params: MembershipParams = accepted.params
        outputs_are = "logits" if key == "logits" and params.outputs_are == "auto" else params.outputs_are
        return _checked(params, arrays, outputs_are=outputs_are, dataset=name)

    def prepare(self, accepted: Accepted, inputs: MembershipData) -> None:
        params: MembershipParams = accepted.params
        with _named_fields():
            chosen = choose_membership_attacks(inputs, params.attacks, extra=params.extra, skipped=params.skipped)
            for defense in params.defenses:
                defense.check_classes(inputs.outputs.shape[1])
        accepted.spec.ClearField("extra_attacks")
        accepted.spec.ClearField("skipped_attacks")
        accepted.spec.attacks[:] = [attack.name for attack in chosen]

    def describe(self, accepted: Accepted, inputs: MembershipData) -> str:
        references = 0 if inputs.reference_outputs is None else len(inputs.reference_outputs)
        return (f"membership of {len(inputs.member)} examples ({inputs.task}, {references} reference models), "
                f"{len(accepted.params.defenses)} defenses, attacks {', '.join(accepted.spec.attacks)}")

    def run(self, accepted: Accepted, inputs: MembershipData, *, progress: ProgressCallback,
            cancel: CancelToken) -> audit_pb2.AuditReport:
        params: MembershipParams = accepted.params
        report = audit_membership(inputs, attacks=tuple(accepted.spec.attacks), defenses=params.defenses,
                                  seed=params.seed, device=self._device, progress=progress, cancel=cancel)
        sizes = {name: int(where.sum()) for name, where in example_slices(inputs).items()}
        return report_message(report, params.defense_messages, sizes)


class Upload:
    """The chunks of one membership audit, checked as they arrive: dtypes, ranks, shapes agreeing across chunks,
    the example limit."""

    def __init__(self, params: MembershipParams, *, max_examples: int) -> None:
        self._params = params
        self._max = max_examples
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in
                                                    ("outputs", "labels", "reference_outputs", "reference_member")}
        self._member: list[bool] = []
        self._count = 0

    def add(self, chunk: membership_pb2.MembershipChunk) -> None:
        if not chunk.HasField("outputs"):
            raise InvalidArgument("outputs: required in every chunk", "outputs")
        outputs = self._tensor(chunk.outputs, "outputs", _FLOATS, ranks=(2, 4))
        count = len(outputs)
        self._count += count
        if self._count > self._max:
            raise ResourceExhausted(f"outputs: more than this server's limit of {self._max} examples per audit",
                                    "outputs")
        if not chunk.HasField("labels"):
            raise InvalidArgument("labels: required in every chunk", "labels")
        labels = self._tensor(chunk.labels, "labels", (tensor_pb2.DATA_TYPE_INT64,), ranks=(1, 3))
        if len(labels) != count or len(chunk.member) != count:
            raise InvalidArgument(f"member: a chunk of {count} outputs carries {len(labels)} labels and "
                                  f"{len(chunk.member)} memberships; need one of each per example", "member")
        self._member.extend(chunk.member)
        references = chunk.HasField("reference_outputs")
        if self._parts["outputs"] and references != bool(self._parts["reference_outputs"]):
            raise InvalidArgument("reference_outputs: every chunk carries them, or none does", "reference_outputs")
        if references:
            reference = self._tensor(chunk.reference_outputs, "reference_outputs", _FLOATS, ranks=(3, 5), axis=1)
            if not chunk.HasField("reference_member"):
                raise InvalidArgument("reference_member: required with reference_outputs", "reference_member")
            masks = self._tensor(chunk.reference_member, "reference_member", (tensor_pb2.DATA_TYPE_UINT8,),
                                 ranks=(2,), axis=1)
            if reference.shape[1] != count or masks.shape != reference.shape[:2]:
                raise InvalidArgument(f"reference_outputs.shape: {list(reference.shape)} and reference_member "
                                      f"{list(masks.shape)} for a chunk of {count} examples; expected (K, {count}, "
                                      "...) and (K, n)", "reference_outputs.shape")
            self._parts["reference_outputs"].append(reference)
            self._parts["reference_member"].append(masks)
        self._parts["outputs"].append(outputs)
        self._parts["labels"].append(labels)

    def _tensor(self, tensor: tensor_pb2.Tensor, field: str, dtypes: tuple[int, ...], *, ranks: tuple[int, ...],
                axis: int = 0) -> np.ndarray:
        if tensor.dtype not in dtypes:
            names = " or ".join(tensor_pb2.DataType.Name(d) for d in dtypes)
            raise InvalidArgument(f"{field}.dtype: expected {names}, got {dtype_name(tensor.dtype)}",
                                  f"{field}.dtype")
        shape = list(tensor.shape)
        if len(shape) not in ranks or any(d <= 0 for d in shape):
            raise InvalidArgument(f"{field}.shape: expected rank {' or '.join(map(str, ranks))} with positive "
                                  f"dimensions, got {shape}", f"{field}.shape")
        previous = self._parts[field]
        if previous:
            first = previous[0].shape
            same = shape[:axis] + shape[axis + 1:] == list(first[:axis] + first[axis + 1:])
            if not same:
                raise InvalidArgument(f"{field}.shape: every chunk must agree but on the examples' axis; got "
                                      f"{shape} after {list(first)}", f"{field}.shape")
        return decode(tensor, field)

    def finish(self) -> MembershipData:
        arrays = {
            "outputs": concatenate(self._parts["outputs"], empty=(0, 2), dtype=np.float32),
            "labels": concatenate(self._parts["labels"], empty=(0,), dtype=np.int64),
            "member": np.asarray(self._member, dtype=bool),
            "reference_outputs": (np.concatenate(self._parts["reference_outputs"], axis=1)
                                  if self._parts["reference_outputs"] else None),
            "reference_member": (np.concatenate(self._parts["reference_member"], axis=1).astype(bool)
                                 if self._parts["reference_member"] else None),
        }
        return _checked(self._params, arrays, outputs_are=self._params.outputs_are)


def _checked(params: MembershipParams, arrays: dict, *, outputs_are: str, dataset: str = "") -> MembershipData:
    data = MembershipData(arrays["outputs"], arrays["labels"], arrays["member"], arrays["reference_outputs"],
                          arrays["reference_member"], ignore_index=params.ignore_index, outputs_are=outputs_are)
    with _named_fields(dataset):
        data.check()
    return data


def _scores(metrics: MembershipMetrics) -> membership_pb2.MembershipScores:
    message = membership_pb2.MembershipScores(auc=metrics.auc, advantage=metrics.advantage,
                                              roc_fpr=[float(v) for v in metrics.fpr],
                                              roc_tpr=[float(v) for v in metrics.tpr])
    for fpr, tpr in metrics.tpr_at_fpr.items():
        point = message.tpr_at_fpr.add(fpr=fpr)
        if tpr is not None:
            point.tpr = tpr
    return message


def report_message(report: MembershipReport, defense_messages: tuple,
                   slice_sizes: dict[str, int]) -> audit_pb2.AuditReport:
    """The wire form of a membership report: a row per attack, then the task, sizes, utility, ROC and defenses
    (``slice_sizes``: the examples in each slice the attacks' metrics were sliced by)."""
    message = audit_pb2.AuditReport(device=report.device, seconds=report.seconds)
    for name, row in report.attacks.items():
        scores = _scores(row.metrics)
        scores.risk_scores.CopyFrom(to_tensor(np.asarray(row.scores, dtype=np.float32)))
        for slice_name, metrics in row.slices.items():
            part = scores.slices.add(name=slice_name, examples=slice_sizes[slice_name])
            if metrics is not None:
                part.auc, part.advantage = metrics.auc, metrics.advantage
        message.attacks.add(attack=name, title=row.attack.title, threat=row.attack.threat, bound=False,
                            stage_seconds={name: float(row.seconds)}, membership=scores)
    message.membership.CopyFrom(membership_pb2.MembershipReport(
        task=report.task, examples=report.examples, members=report.members, references=report.references,
        utility_name=report.utility_name, utility=report.utility, roc_png=report.roc_png))
    for defended, defense_message in zip(report.defenses, defense_messages, strict=True):
        result = message.membership.defenses.add(name=str(defended.defense), utility=defended.utility)
        result.defense.CopyFrom(defense_message)
        for name, row in defended.attacks.items():
            result.attacks[name].CopyFrom(_scores(row.metrics))
    return message
