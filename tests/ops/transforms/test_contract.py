"""What every registered transform promises: the contract the service relies on, checked for each family.

A family added to the registry (``instahide_ops.transforms.register_transform``) is tested here without a line
of its own: shapes and dtypes, keys that recompute the output exactly, fresh keys per call, seeds, bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms import TRANSFORMS, get_transform, transform_names

SHAPE = (32, 32, 3)
CLASSES = 5


@pytest.fixture(scope="module", params=transform_names())
def family(request):
    transform = get_transform(request.param)
    params = transform.default_params()
    return transform, params, transform.default_resources(params, SHAPE)


def batch(n: int = 12, *, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)).to(device)
    return images, torch.from_numpy(rng.integers(0, CLASSES, n)).to(device)


def test_the_registry_names_each_family_once():
    assert len(set(transform_names())) == len(transform_names()) == len(TRANSFORMS) >= 1
    for name in transform_names():
        assert get_transform(name).name == name and get_transform(name).title
    known = r"\['disguised_nets', 'instahide'"
    with pytest.raises(InvalidInputError, match=rf"unknown transform 'nope'; expected one of {known}"):
        get_transform("nope")


class TestEveryTransform:
    def test_shapes_dtypes_and_labels(self, family):
        transform, params, resources = family
        images, labels = batch()
        out = transform.encode(images, labels, params, num_classes=CLASSES, resources=resources)
        assert out.encoded.shape == images.shape and out.encoded.dtype == torch.float32
        assert out.encoded.device == images.device and bool(torch.isfinite(out.encoded).all())
        assert out.labels.shape[0] == len(images) and out.labels.dtype == torch.float32
        assert not out.seeded
        half = transform.encode(images, labels, params, num_classes=CLASSES, resources=resources,
                                out_dtype=torch.float16)
        assert half.encoded.dtype == torch.float16 and half.encoded.shape == images.shape

    def test_the_keys_recompute_the_output(self, family):
        transform, params, resources = family
        images, labels = batch(seed=1)
        out = transform.encode(images, labels, params, num_classes=CLASSES, resources=resources)
        assert torch.equal(transform.recompute(images, out, resources=resources), out.encoded)
        floats = images.float() / 127.5 - 1  # images already in [-1, 1] go through the same keys
        out = transform.encode(floats, labels, params, num_classes=CLASSES, resources=resources)
        assert torch.equal(transform.recompute(floats, out, resources=resources), out.encoded)

    def test_fresh_keys_every_call_and_the_same_ones_from_a_seed(self, family):
        transform, params, resources = family
        images, labels = batch(seed=2)

        def encoded(seed=None, resources=resources):
            return transform.encode(images, labels, params, num_classes=CLASSES, resources=resources, seed=seed)

        first, again = encoded(seed=7), encoded(seed=7)
        assert first.seeded and torch.equal(first.encoded, again.encoded)
        if transform.long_lived_keys:  # one key, one disguise: at every call, on every replica; another key differs
            assert torch.equal(encoded().encoded, encoded().encoded) and not encoded().seeded
            other = transform.default_resources(params, SHAPE)
            assert not torch.equal(encoded().encoded, encoded(resources=other).encoded)
        else:
            assert not torch.equal(encoded().encoded, encoded().encoded)
            assert not torch.equal(first.encoded, encoded(seed=8).encoded)

    @pytest.mark.parametrize(("change", "field"), [
        (lambda images, labels: (images[0], labels), "images.shape"),
        (lambda images, labels: (images[:, :0], labels), "images.shape"),
        (lambda images, labels: (images.float().fill_(float("nan")), labels), "images.content"),
        (lambda images, labels: (images.float() * 3, labels), "images.content"),
        (lambda images, labels: (images.to(torch.int32), labels), "images.dtype"),
        (lambda images, labels: (images, labels[:-1]), "labels"),
        (lambda images, labels: (images, labels + CLASSES), "labels"),
    ], ids=["rank", "empty", "nan", "range", "dtype", "label count", "label range"])
    def test_bad_input_names_its_field(self, family, change, field):
        transform, params, resources = family
        images, labels = change(*batch(seed=3))
        with pytest.raises(InvalidInputError) as caught:
            transform.encode(images, labels, params, num_classes=CLASSES, resources=resources)
        assert caught.value.field == field

    @pytest.mark.cuda
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_on_cuda_the_output_follows_the_images(self, family):
        transform, params, _ = family
        resources = transform.default_resources(params, SHAPE, device="cuda")
        images, labels = batch(seed=4, device="cuda")
        out = transform.encode(images, labels, params, num_classes=CLASSES, resources=resources)
        assert out.encoded.device.type == "cuda" and out.labels.device.type == "cuda"
        assert torch.allclose(transform.recompute(images, out, resources=resources), out.encoded)
