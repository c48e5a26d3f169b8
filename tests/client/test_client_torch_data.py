"""EncodedDataset: batches, layout, epochs, early stop and errors, over the real server."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from instahide_client import InstaHideClient, InstaHideError  # noqa: E402
from instahide_client.torch_data import EncodedDataset  # noqa: E402


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 50)


class MapDataset(torch.utils.data.Dataset):
    """A torchvision-like dataset: uint8 HWC tensors, int labels, a ``classes`` list."""

    classes = ("class-0", "class-1", "class-2", "class-3", "class-4")

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return torch.from_numpy(self.images[index]), int(self.labels[index]) % 5


def _encode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "instahide-encode"]


class TestEncodedDataset:
    def test_batches_and_shapes(self, server, arrays):
        ds = EncodedDataset(arrays, server.target, batch_size=16)
        batches = list(ds)
        assert len(ds) == 4 and len(batches) == 4
        assert [x.shape for x, _ in batches] == [(16, 3, 32, 32)] * 3 + [(2, 3, 32, 32)]
        assert all(x.dtype == torch.float32 and y.dtype == torch.float32 for x, y in batches)
        assert all(y.shape == (len(x), 10) for x, y in batches)
        assert all(x.is_contiguous() for x, _ in batches)

    def test_single_last_image_joins_previous_batch(self, server, arrays):
        images, labels = arrays
        ds = EncodedDataset((images[:49], labels[:49]), server.target, batch_size=16)
        assert len(ds) == 3
        assert [len(x) for x, _ in ds] == [16, 16, 17]
        iterable = EncodedDataset(zip(images[:17], labels[:17], strict=True), server.target, batch_size=8,
                                  num_classes=10)
        assert [len(x) for x, _ in iterable] == [8, 9]

    def test_drop_last(self, server, arrays):
        ds = EncodedDataset(arrays, server.target, batch_size=16, drop_last=True)
        assert len(ds) == 3
        assert [len(x) for x, _ in ds] == [16, 16, 16]

    def test_channels_first_is_a_permutation_of_channels_last(self, server, arrays):
        first = EncodedDataset(arrays, server.target, batch_size=25, seed=11)
        last = EncodedDataset(arrays, server.target, batch_size=25, seed=11, channels_first=False)
        for (a, ya), (b, yb) in zip(first, last, strict=True):
            assert b.shape == (25, 32, 32, 3)
            torch.testing.assert_close(a, b.permute(0, 3, 1, 2))
            torch.testing.assert_close(ya, yb)

    def test_two_epochs_draw_fresh_keys(self, server, arrays):
        with InstaHideClient(server.target) as client:
            ds = EncodedDataset(arrays, client, batch_size=25)
            first = torch.cat([x for x, _ in ds])
            second = torch.cat([x for x, _ in ds])
        assert first.shape == second.shape == (50, 3, 32, 32)
        assert not torch.allclose(first, second)

    def test_a_stored_key_disguises_alike_every_epoch_and_passes_labels(self, server, arrays):
        from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise

        images, labels = arrays
        with InstaHideClient(server.target) as client:
            key = client.create_key((32, 32, 3), seed=6).name
            ds = EncodedDataset(arrays, client, batch_size=20, key=key, channels_first=False)
            first = list(ds)
            second = torch.cat([x for x, _ in ds])
        encoded = torch.cat([x for x, _ in first])
        assert encoded.dtype == torch.float32 and torch.equal(encoded, second)  # a long-lived key: no fresh keys
        torch.testing.assert_close(encoded, disguise(torch.from_numpy(images),
                                                     create_key(DisguisedNetsParams(), (32, 32, 3), seed=6)))
        assert torch.equal(torch.cat([y for _, y in first]), torch.from_numpy(labels))
        with pytest.raises(ValueError, match="a stored key takes no InstaHide options"):
            EncodedDataset(arrays, server.target, key=key, k=4)

    def test_map_style_shuffled_float16(self, server, arrays):
        ds = EncodedDataset(MapDataset(*arrays), server.target, batch_size=20, shuffle=True,
                            output_dtype="float16")
        batches = list(ds)
        assert [len(x) for x, _ in batches] == [20, 20, 10]
        assert batches[0][0].dtype == torch.float16
        assert batches[0][1].shape == (20, 5)  # num_classes from source.classes

    def test_grayscale_iterable(self, server, arrays):
        images, labels = arrays
        gray = (image[:, :, 0] for image in images[:12])  # (H, W) samples, as from PIL "L" images
        ds = EncodedDataset(zip(gray, labels[:12], strict=True), server.target, batch_size=8,
                            num_classes=10)
        assert [tuple(x.shape) for x, _ in ds] == [(8, 1, 32, 32), (4, 1, 32, 32)]

    def test_break_early_stops_thread_and_stream(self, server, arrays):
        images, _ = arrays

        def endless():
            while True:
                yield images[0], 1

        ds = EncodedDataset(endless(), server.target, batch_size=8, num_classes=10)
        start = time.monotonic()
        for i, _ in enumerate(ds):
            if i == 3:
                break
        deadline = time.monotonic() + 10
        while _encode_threads() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _encode_threads()
        assert time.monotonic() - start < 10

    def test_errors_reach_the_consumer(self, server, arrays):
        images, labels = arrays
        ds = EncodedDataset((images, labels + 10), server.target, batch_size=16, num_classes=10)
        with pytest.raises(InstaHideError) as info:
            list(ds)
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert not _encode_threads()

    def test_unreachable_target(self, free_target, arrays):
        with pytest.raises(InstaHideError) as info:
            list(EncodedDataset(arrays, free_target, batch_size=16, timeout=20))
        assert info.value.code is grpc.StatusCode.UNAVAILABLE

    def test_dataloader_workers_split_batches(self, server, arrays):
        ds = EncodedDataset(arrays, server.target, batch_size=10)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                             multiprocessing_context="spawn")
        sizes = [len(x) for x, _ in loader]
        assert sorted(sizes) == [10] * 5

    def test_argument_checks(self, server, arrays):
        with pytest.raises(ValueError, match="num_classes is required"):
            EncodedDataset(iter([]), server.target)
        with pytest.raises(ValueError, match="shuffle needs"):
            EncodedDataset(iter([]), server.target, num_classes=3, shuffle=True)
        with pytest.raises(ValueError, match="does not return keys"):
            EncodedDataset(arrays, server.target, return_keys=True)
        with pytest.raises(ValueError, match="unknown mode"):
            EncodedDataset(arrays, server.target, mode="mixed")
        with pytest.raises(TypeError, match="client must be"):
            EncodedDataset(arrays, 5)
