"""Building the StartAudit stream: spec options, input checks and chunks, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from instahide_client._audit_requests import audit_requests, audit_spec, check_audit_inputs, chunk_rows
from instahide_client.audits import audit_name, state_name, state_value
from instahide_client.instahide.v1 import audit_pb2, instahide_pb2
from instahide_client.tensors import to_numpy


def _privates(n=10, hw=8, dtype=np.uint8):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        images = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
    else:
        images = rng.uniform(-1, 1, (n, hw, hw, 3)).astype(dtype)
    return images, np.arange(n) % 3


class TestAuditSpec:
    def test_defaults(self):
        spec = audit_spec()
        assert spec.WhichOneof("kind") == "reconstruction"
        rec, config = spec.reconstruction, spec.reconstruction.instahide
        assert config.mode == instahide_pb2.MIXING_MODE_CROSS
        assert (config.k, rec.encodings_per_image, config.num_classes) == (0, 0, 0)  # 0: the service's default
        assert not config.HasField("seed") and not config.return_keys
        assert (list(spec.attacks), list(spec.extra_attacks), list(spec.skipped_attacks)) == ([], [], [])  # defaults
        assert spec.dataset == "" and not rec.precomputed_encodings

    def test_options(self):
        spec = audit_spec(mode="inside", k=4, encodings_per_image=3, num_classes=10, seed=2**64 - 1,
                          extra_attacks=["photo_aware"], skipped_attacks=["key_aware", "pool_aware"],
                          dataset="cifar/test.npz", display_name="nightly")
        rec, config = spec.reconstruction, spec.reconstruction.instahide
        assert config.mode == instahide_pb2.MIXING_MODE_INSIDE
        assert (config.k, rec.encodings_per_image, config.num_classes) == (4, 3, 10)
        assert config.seed == 2**64 - 1
        assert list(spec.extra_attacks) == ["photo_aware"] and list(spec.skipped_attacks) == ["key_aware", "pool_aware"]
        assert (spec.dataset, spec.display_name) == ("cifar/test.npz", "nightly")
        assert list(audit_spec(attacks=("pool_aware",)).attacks) == ["pool_aware"]

    def test_none_means_service_default(self):
        spec = audit_spec(k=None, encodings_per_image=None)
        assert (spec.reconstruction.instahide.k, spec.reconstruction.encodings_per_image) == (0, 0)

    @pytest.mark.parametrize(("options", "error", "match"), [
        ({"mode": "mixed"}, ValueError, "unknown mode 'mixed'"),
        ({"k": 2}, ValueError, "k must be at least 3, got 2"),  # as the service audits (instahide info)
        ({"k": 2**32}, ValueError, "k must fit in 32 bits"),
        ({"encodings_per_image": 0}, ValueError, "encodings_per_image must be at least 1"),
        ({"num_classes": 0}, ValueError, "num_classes must be at least 1"),
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        ({"seed": 2**64}, ValueError, "seed must be in"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"k": 6.0}, TypeError, "k must be an int"),
        ({"k": True}, TypeError, "k must be an int"),
        ({"dataset": 3}, TypeError, "dataset must be a str"),
        ({"attacks": "pool_aware"}, TypeError, "attacks must be a sequence of attack names"),
        ({"skipped_attacks": ["key aware"]}, ValueError, "skipped_attacks: 'key aware' is not an attack name"),
    ])
    def test_bad_options(self, options, error, match):
        with pytest.raises(error, match=match):
            audit_spec(**options)


class TestInputChecks:
    def test_images_and_labels(self):
        images, labels = _privates()
        upload = check_audit_inputs(images, labels, k=6, seed=1)
        assert upload.images is images and upload.labels.dtype == np.int64
        assert upload.encodings is None and not upload.spec.reconstruction.precomputed_encodings

    def test_dataset_sends_nothing(self):
        upload = check_audit_inputs(dataset="private/eval.npz")
        assert upload.images is None and upload.spec.dataset == "private/eval.npz"
        assert len(list(audit_requests(upload))) == 1

    def test_precomputed(self):
        images, _ = _privates(4)
        enc = np.zeros((12, 8, 8, 3), np.float32)
        upload = check_audit_inputs(images, encodings=enc, encoding_labels=np.zeros((12, 3)))
        assert upload.spec.reconstruction.precomputed_encodings
        assert upload.encoding_labels.dtype == np.float32 and upload.labels is None

    @pytest.mark.parametrize(("kwargs", "match"), [
        ({}, "pass images"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, "labels are required"),
        ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.arange(4)}, r"shape \(N, H, W, C\)"),
        ({"images": np.zeros((4, 8, 8, 3), np.float64), "labels": np.arange(4)}, "uint8, float32 or float16"),
        ({"images": np.full((4, 8, 8, 3), np.nan, np.float32), "labels": np.arange(4)}, "finite and in"),
        ({"images": np.full((4, 8, 8, 3), 2.0, np.float32), "labels": np.arange(4)}, r"in \[-1, 1\]"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.arange(3)}, "labels has length 3"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros((4, 1), int)}, r"shape \(N,\)"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(4)}, "integers"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": -np.arange(4)}, "non-negative"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.arange(4), "num_classes": 3},
         "below num_classes=3"),
        ({"images": np.zeros((1, 8, 8, 3), np.uint8), "labels": np.arange(1)}, "at least 2"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.arange(4), "dataset": "d.npz"},
         "do not also pass images, labels"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "encodings": np.zeros((2, 8, 8, 3), np.float32)},
         "both encodings and encoding_labels"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "encodings": np.zeros((2, 8, 8, 3), np.uint8),
          "encoding_labels": np.zeros((2, 3))}, "float32 or float16"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "encodings": np.zeros((2, 4, 4, 3), np.float32),
          "encoding_labels": np.zeros((2, 3))}, "originals have"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "encodings": np.zeros((2, 8, 8, 3), np.float32),
          "encoding_labels": np.zeros((3, 3))}, r"encoding_labels must have shape \(E=2"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "encodings": np.full((2, 8, 8, 3), np.inf, np.float32),
          "encoding_labels": np.zeros((2, 3))}, "encodings must be finite"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.arange(4),
          "encodings": np.zeros((2, 8, 8, 3), np.float32), "encoding_labels": np.zeros((2, 3))},
         "labels are not used with precomputed"),
        ({"images": np.zeros((1, 8, 8, 3), np.uint8), "encodings": np.zeros((2, 8, 8, 3), np.float32),
          "encoding_labels": np.zeros((2, 3))}, "at least 2 original images"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "encodings": np.zeros((1, 8, 8, 3), np.float32),
          "encoding_labels": np.zeros((1, 3))}, "at least 2 encodings"),
    ])
    def test_errors(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            check_audit_inputs(**kwargs)


class TestChunks:
    def test_chunk_rows(self):
        assert chunk_rows(3072, 1024, 64 * 2**20) == 1024
        assert chunk_rows(3072, 10, 64 * 2**20) == 10
        assert 0 < chunk_rows(3072, 1024, 2**20) * 3072 < 2**20
        with pytest.raises(ValueError, match="does not fit"):
            chunk_rows(2**20, 1024, 2**20)
        with pytest.raises(ValueError, match="chunk_images must be at least 1"):
            chunk_rows(10, 0, 2**20)

    @pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float16])
    def test_spec_first_then_chunks_that_concatenate(self, dtype):
        images, labels = _privates(25, dtype=dtype)
        upload = check_audit_inputs(images, labels, seed=3)
        requests = list(audit_requests(upload, chunk_images=10))
        assert requests[0].HasField("spec") and requests[0].spec.reconstruction.instahide.seed == 3
        assert requests[0].WhichOneof("chunk") is None
        chunks = [r.reconstruction for r in requests[1:]]
        assert [len(c.labels) for c in chunks] == [10, 10, 5]
        assert all(not r.HasField("spec") and r.WhichOneof("chunk") == "reconstruction" for r in requests[1:])
        np.testing.assert_array_equal(np.concatenate([to_numpy(c.images) for c in chunks]), images)
        np.testing.assert_array_equal(np.concatenate([list(c.labels) for c in chunks]), labels)

    def test_chunks_stay_below_the_message_limit(self):
        images, labels = _privates(200, hw=32)
        limit = 256 * 1024
        requests = list(audit_requests(check_audit_inputs(images, labels), chunk_images=1024,
                                       max_message_bytes=limit))
        assert len(requests) > 2
        assert all(r.ByteSize() < limit for r in requests)
        assert sum(len(r.reconstruction.labels) for r in requests) == 200

    def test_image_too_big_for_a_message_fails_before_sending(self):
        images, labels = _privates(4, hw=32)
        with pytest.raises(ValueError, match="raise max_message_bytes"):
            audit_requests(check_audit_inputs(images, labels), max_message_bytes=66 * 1024)

    def test_precomputed_stream(self):
        images, _ = _privates(6)
        enc = np.random.default_rng(1).uniform(-1, 1, size=(18, 8, 8, 3)).astype(np.float32)
        mixed = np.random.default_rng(2).uniform(size=(18, 3)).astype(np.float32)
        upload = check_audit_inputs(images, encodings=enc, encoding_labels=mixed)
        requests = list(audit_requests(upload, chunk_images=5))
        assert requests[0].spec.reconstruction.precomputed_encodings
        image_chunks = [r.reconstruction for r in requests[1:] if r.reconstruction.HasField("images")]
        enc_chunks = [r.reconstruction for r in requests[1:] if r.reconstruction.HasField("encodings")]
        assert len(image_chunks) == 2 and len(enc_chunks) == 4
        chunks = [r.reconstruction for r in requests[1:]]
        assert chunks.index(enc_chunks[0]) > chunks.index(image_chunks[-1])  # originals first
        np.testing.assert_array_equal(np.concatenate([to_numpy(r.encodings) for r in enc_chunks]), enc)
        np.testing.assert_array_equal(np.concatenate([to_numpy(r.encoding_labels) for r in enc_chunks]), mixed)
        assert not any(c.labels for c in chunks)  # the service refuses labels with precomputed encodings
        assert requests[0].spec.reconstruction.encodings_per_image == 0  # T = E / N, inferred by the service


class TestNames:
    @pytest.mark.parametrize("given", ["abc", "audits/abc", " audits/abc "])
    def test_both_forms(self, given):
        assert audit_name(given) == "audits/abc"

    @pytest.mark.parametrize("given", ["", "audits/", "jobs/abc", "audits/a/b"])
    def test_bad(self, given):
        with pytest.raises(ValueError, match="expected an audit id"):
            audit_name(given)

    def test_states(self):
        assert state_name(audit_pb2.AUDIT_STATE_RUNNING) == "running"
        assert state_value("Cancelled") == audit_pb2.AUDIT_STATE_CANCELLED
        with pytest.raises(ValueError, match="unknown audit state 'done'"):
            state_value("done")
