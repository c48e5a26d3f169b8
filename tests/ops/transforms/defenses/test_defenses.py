"""Output defenses: each one's values worked by hand, parsing and refusals, and utility against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, jaccard_score

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.defenses import Defense, apply_defense, parse_defense, utility

ROWS = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]], dtype=torch.float64)


def posteriors(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), 1)


@pytest.mark.parametrize("text", ["argmax", "gauss:0.1", "gauss:0", "topk:3", "round:2", "temperature:2",
                                  "temperature:0.5"])
def test_parse_and_str_round_trip(text):
    assert str(parse_defense(text)) == text


def test_parse_reads_kind_and_value():
    assert parse_defense("gauss:0.05") == Defense("gauss", 0.05)
    assert parse_defense(" argmax ") == Defense("argmax")


@pytest.mark.parametrize("text", ["nope", "nope:1", "gauss", "gauss:-0.1", "gauss:nan", "gauss:x", "topk:0",
                                  "topk:1.5", "round:9", "round:-1", "round:1.5", "temperature:0",
                                  "temperature:-1", "temperature:inf", "argmax:1", ""])
def test_bad_specs_name_the_defense(text):
    with pytest.raises(InvalidInputError) as caught:
        parse_defense(text)
    assert caught.value.field == "defense"


def test_argmax_is_one_hot_of_the_predicted_class():
    released = apply_defense(ROWS, Defense("argmax"))
    assert torch.equal(released, torch.tensor([[1.0, 0, 0], [0, 0, 1]], dtype=torch.float64))
    maps = posteriors((2, 4, 3, 5))
    one_hot = apply_defense(maps, Defense("argmax"))
    assert torch.equal(one_hot.argmax(1), maps.argmax(1))
    assert torch.equal(one_hot.sum(1), torch.ones(2, 3, 5, dtype=maps.dtype))


def test_gauss_is_noise_clamped_and_renormalised_reproducibly():
    probabilities = posteriors((4000, 3))
    released = apply_defense(probabilities, Defense("gauss", 0.1), generator=torch.Generator().manual_seed(5))
    again = apply_defense(probabilities, Defense("gauss", 0.1), generator=torch.Generator().manual_seed(5))
    assert torch.equal(released, again) and released.dtype == probabilities.dtype
    noise = torch.randn(probabilities.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert 0.098 < float(noise.std() * 0.1) < 0.102  # the draw the defense made, sized by sigma
    by_hand = (probabilities + 0.1 * noise).clamp_min(1e-6)
    assert torch.allclose(released, by_hand / by_hand.sum(1, keepdim=True))
    assert torch.allclose(released.sum(1), torch.ones(4000, dtype=torch.float64))
    assert float(released.min()) > 0 and (released == released.min()).any()  # the clamp bit somewhere
    unchanged = apply_defense(probabilities, Defense("gauss", 0.0))
    assert torch.equal(unchanged, probabilities / probabilities.sum(1, keepdim=True))


def test_gauss_renormalises_every_pixel_of_a_map():
    maps = posteriors((2, 5, 6, 7))
    released = apply_defense(maps, Defense("gauss", 0.3), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(released.sum(1), torch.ones(2, 6, 7, dtype=maps.dtype)) and float(released.min()) > 0


def test_topk_keeps_the_largest_renormalised():
    released = apply_defense(ROWS, Defense("topk", 2))
    assert torch.allclose(released, torch.tensor([[0.7 / 0.9, 0.2 / 0.9, 0], [0, 0.15 / 0.95, 0.8 / 0.95]],
                                                 dtype=torch.float64))
    assert torch.allclose(apply_defense(ROWS, Defense("topk", 3)), ROWS)
    with pytest.raises(InvalidInputError, match="exceeds the 3 classes") as caught:
        apply_defense(ROWS, Defense("topk", 4))
    assert caught.value.field == "defense"


def test_round_rounds_as_released():
    probabilities = torch.tensor([[0.123456, 0.876544], [0.5, 0.5]], dtype=torch.float64)
    assert torch.equal(apply_defense(probabilities, Defense("round", 2)),
                       torch.tensor([[0.12, 0.88], [0.5, 0.5]], dtype=torch.float64))
    # halves go to even, and the zero row is released as it is, not renormalised
    assert torch.equal(apply_defense(probabilities, Defense("round", 0)),
                       torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64))


def test_temperature_is_identity_at_one_and_sharper_below():
    probabilities = posteriors((50, 6))
    assert torch.allclose(apply_defense(probabilities, Defense("temperature", 1)), probabilities)
    sharper = apply_defense(probabilities, Defense("temperature", 0.5))
    assert torch.allclose(sharper, probabilities**2 / (probabilities**2).sum(1, keepdim=True))
    assert bool((sharper.amax(1) > probabilities.amax(1)).all())
    assert torch.equal(sharper.argmax(1), probabilities.argmax(1))
    flatter = apply_defense(probabilities, Defense("temperature", 4))
    assert bool((flatter.amax(1) < probabilities.amax(1)).all())


def test_apply_refuses_what_is_not_probabilities():
    for bad in (torch.ones(3), torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.int64)):
        with pytest.raises(InvalidInputError) as caught:
            apply_defense(bad, Defense("argmax"))
        assert caught.value.field == "outputs"


def test_float32_stays_float32():
    probabilities = posteriors((8, 4)).float()
    for text in ("argmax", "gauss:0.1", "topk:2", "round:3", "temperature:2"):
        assert apply_defense(probabilities, parse_defense(text)).dtype == torch.float32


def test_utility_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5), 300)
    labels = rng.integers(0, 5, 300)
    name, value = utility(probabilities, labels)
    assert name == "accuracy" and value == pytest.approx(accuracy_score(labels, probabilities.argmax(1)))


def test_utility_miou_matches_sklearn_over_kept_pixels():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(6), (4, 9, 11)).transpose(0, 3, 1, 2)  # (N, C, h, w)
    labels = rng.integers(0, 4, (4, 9, 11))  # classes 4 and 5 only ever predicted, never labelled
    labels[:, :2] = 255
    predictions = probabilities.argmax(1)
    predictions[labels == 255] = 5  # predictions on ignored pixels do not count
    probabilities = np.eye(6)[predictions].transpose(0, 3, 1, 2)
    kept = labels != 255
    name, value = utility(probabilities, labels)
    assert name == "miou"
    assert value == pytest.approx(jaccard_score(labels[kept], predictions[kept], average="macro"))


def test_utility_skips_classes_absent_from_labels_and_predictions():
    labels = np.array([[[0, 0], [1, 255]]])
    probabilities = np.eye(4)[np.array([[[0, 1], [1, 3]]])].transpose(0, 3, 1, 2)
    # class 0: 1 / 2, class 1: 1 / 2; classes 2 and 3 appear in neither kept labels nor kept predictions
    assert utility(probabilities, labels) == ("miou", pytest.approx(0.5))


def test_utility_refuses_mismatched_labels():
    with pytest.raises(InvalidInputError) as caught:
        utility(np.ones((4, 3, 5, 5)) / 3, np.zeros((4, 5, 4)))
    assert caught.value.field == "labels"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_seeded_release_matches_the_cpu_one():
    probabilities = posteriors((6, 4, 5, 5))
    for text in ("argmax", "gauss:0.1", "topk:2", "round:3", "temperature:2"):
        defense = parse_defense(text)
        on_cpu = apply_defense(probabilities, defense, generator=torch.Generator().manual_seed(3))
        on_cuda = apply_defense(probabilities.cuda(), defense, generator=torch.Generator().manual_seed(3))
        assert on_cuda.device.type == "cuda" and torch.allclose(on_cuda.cpu(), on_cpu)
