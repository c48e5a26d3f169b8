"""Audits written before the families restructure (database user_version 0), read and rewritten in today's form.

Their spec had a field per InstaHide parameter and a boolean per attack; their report a field per attack. Those
field numbers are reserved in today's protos, so the old rows are parsed here with the old layout (declared
below, field by field as the old audit.proto had it) and converted: the spec's booleans become skipped or extra
attacks, the report's attack fields become rows, in the order audits ran them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from instahide_client.instahide.v1 import audit_pb2, instahide_pb2, reconstruction_pb2, tensor_pb2

from instahide_ops.audits.reconstruction import get_attack

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"uint32": _T.TYPE_UINT32, "uint64": _T.TYPE_UINT64, "int32": _T.TYPE_INT32, "int64": _T.TYPE_INT64,
            "bool": _T.TYPE_BOOL, "string": _T.TYPE_STRING, "bytes": _T.TYPE_BYTES, "double": _T.TYPE_DOUBLE}
_OLD = {  # message -> [(name, number, type, repeated)]; proto2 "optional" so that every presence is kept
    "AuditSpec": [("mode", 1, "int32", False), ("k", 2, "uint32", False), ("encodings_per_image", 3, "uint32", False),
                  ("num_classes", 4, "uint32", False), ("dataset", 5, "string", False),
                  ("precomputed_encodings", 6, "bool", False), ("seed", 7, "uint64", False),
                  ("key_aware_bound", 8, "bool", False), ("display_name", 9, "string", False),
                  ("pool_aware_attack", 10, "bool", False), ("photo_aware_attack", 11, "bool", False)],
    "HistogramBucket": [("lower", 1, "double", False), ("upper", 2, "double", False), ("count", 3, "int64", False)],
    "StageSeconds": [("key", 1, "string", False), ("value", 2, "double", False)],
    "AttackScores": [("max_ssim", 1, "double", False), ("mean_ssim", 2, "double", False),
                     ("min_l2", 3, "double", False), ("mean_l2", 4, "double", False),
                     ("recovered_above_0_5", 5, "double", False), ("recovered_above_0_8", 6, "double", False),
                     ("best_ssim_histogram", 7, ".instahide.legacy0.HistogramBucket", True),
                     ("stage_seconds", 8, ".instahide.legacy0.StageSeconds", True),
                     ("best_ssim", 9, "double", True), ("best_match", 10, "int64", True),
                     ("recovered", 11, ".instahide.v1.Tensor", False), ("public_coverage", 12, "double", False)],
    "AuditReport": [("ciphertext_only", 1, ".instahide.legacy0.AttackScores", False),
                    ("key_aware", 2, ".instahide.legacy0.AttackScores", False), ("device", 3, "string", False),
                    ("grid_png", 4, "bytes", False), ("images", 5, "int64", False),
                    ("encodings", 6, "int64", False), ("seconds", 7, "double", False),
                    ("pool_aware", 8, ".instahide.legacy0.AttackScores", False),
                    ("photo_aware", 9, ".instahide.legacy0.AttackScores", False),
                    ("pool_images", 10, "int64", False), ("pool_fingerprint", 11, "string", False)],
}
_ATTACKS = ("ciphertext_only", "photo_aware", "pool_aware", "key_aware")  # the old report's fields, in run order


def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    for module in (tensor_pb2,):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(name="instahide/legacy0.proto", package="instahide.legacy0",
                                              syntax="proto2", dependency=["instahide/v1/tensor.proto"])
    for name, fields in _OLD.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, repeated in fields:
            field = message.field.add(name=field_name, number=number,
                                      label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type, field.type_name = _T.TYPE_MESSAGE, kind
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"instahide.legacy0.{name}"))
            for name in ("AuditSpec", "AuditReport")}


_CLASSES = _classes()


def upgrade_spec(data: bytes) -> bytes:
    """An old serialized ``AuditSpec`` in today's form."""
    old = _CLASSES["AuditSpec"].FromString(data)
    spec = audit_pb2.AuditSpec(dataset=old.dataset, display_name=old.display_name)
    if old.HasField("key_aware_bound") and not old.key_aware_bound:
        spec.skipped_attacks.append("key_aware")
    if old.HasField("pool_aware_attack") and not old.pool_aware_attack:
        spec.skipped_attacks.append("pool_aware")
    if old.photo_aware_attack:
        spec.extra_attacks.append("photo_aware")
    config = instahide_pb2.InstaHideConfig(mode=old.mode, k=old.k, num_classes=old.num_classes)
    if old.HasField("seed"):
        config.seed = old.seed
    spec.reconstruction.CopyFrom(reconstruction_pb2.ReconstructionSpec(
        instahide=config, encodings_per_image=old.encodings_per_image,
        precomputed_encodings=old.precomputed_encodings))
    return spec.SerializeToString()


def upgrade_report(data: bytes) -> bytes:
    """An old serialized ``AuditReport`` (or its summary) in today's form."""
    old = _CLASSES["AuditReport"].FromString(data)
    report = audit_pb2.AuditReport(device=old.device, seconds=old.seconds)
    for name in (name for name in _ATTACKS if old.HasField(name)):
        scores = getattr(old, name)
        attack = get_attack(name)
        row = report.attacks.add(attack=name, title=attack.title, threat=attack.threat, bound=attack.bound,
                                 stage_seconds={entry.key: entry.value for entry in scores.stage_seconds})
        new = row.reconstruction
        for field in ("max_ssim", "mean_ssim", "min_l2", "mean_l2", "recovered_above_0_5", "recovered_above_0_8"):
            setattr(new, field, getattr(scores, field))
        for bucket in scores.best_ssim_histogram:
            new.best_ssim_histogram.add(lower=bucket.lower, upper=bucket.upper, count=bucket.count)
        new.best_ssim.extend(scores.best_ssim)
        new.best_match.extend(scores.best_match)
        if scores.HasField("recovered"):
            new.recovered.ParseFromString(scores.recovered.SerializeToString())  # one message, two pools
        if scores.HasField("public_coverage"):
            new.public_coverage = scores.public_coverage
    # The old grid showed the pool-aware attack when it ran, else the photo-aware, else the ciphertext-only one.
    shown = next((name for name in ("pool_aware", "photo_aware") if old.HasField(name)), "ciphertext_only")
    report.reconstruction.CopyFrom(reconstruction_pb2.ReconstructionReport(
        grid_png=old.grid_png, grid_attack=shown if old.grid_png else "", images=old.images,
        encodings=old.encodings, pool_images=old.pool_images, pool_fingerprint=old.pool_fingerprint))
    return report.SerializeToString()
