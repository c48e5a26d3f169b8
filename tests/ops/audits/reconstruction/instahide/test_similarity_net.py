"""The learned similarity stage: trained on the attacker's own synthetic encodings, it ranks true neighbours."""

from __future__ import annotations

import pytest
import torch

from instahide_ops.audits.progress import AttackCancelled, CancelToken
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import STAGES, ciphertext_only_attack
from instahide_ops.audits.reconstruction.instahide.similarity import class_sets, similarity_matrix
from instahide_ops.audits.reconstruction.instahide.similarity_net import (
    SimilarityNet,
    TrainingConfig,
    attacker_images,
    learned_features,
    train_similarity_net,
)
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.instahide.challenge import PRIVATE_SOURCE_NAMES, build_challenge, bundled_private_images

# Small enough for two CPU cores (a few seconds); the real setting is TrainingConfig() on a GPU.
TINY = TrainingConfig(images=64, pool_images=64, steps=40, batch=64, width=8, embedding=32)
IMAGES, PER_IMAGE = 24, 20


@pytest.fixture(scope="module")
def small_set():
    privates, classes = bundled_private_images(IMAGES)
    return build_challenge(privates, classes, encodings_per_image=PER_IMAGE, seed=3)


@pytest.fixture(scope="module")
def tiny_net():
    return train_similarity_net((32, 32, 3), k=6, config=TINY)


def _precision_at(similarity: torch.Tensor, pairs: torch.Tensor, n: int) -> float:
    """Fraction of each encoding's top-n neighbours that share one of its private images."""
    share = (pairs[:, None, :, None] == pairs[None, :, None, :]).any(dim=3).any(dim=2)
    return float(share.gather(1, similarity.topk(n, dim=1).indices).float().mean())


def test_attacker_images_come_from_other_photos_than_the_privates():
    crops = attacker_images((32, 32, 3), 8, seed=0)
    assert crops.shape == (8, 32, 32, 3) and crops.dtype.name == "uint8"
    grey = attacker_images((16, 16, 1), 4, seed=0)
    assert grey.shape == (4, 16, 16, 1)
    from instahide_ops.audits.reconstruction.instahide import similarity_net
    assert not set(similarity_net.PUBLIC_SOURCE_NAMES) & set(PRIVATE_SOURCE_NAMES)


def test_equal_configs_train_equal_networks(tiny_net, small_set):
    challenge, _ = small_set
    again = train_similarity_net((32, 32, 3), k=6, config=TINY)
    encryption = torch.from_numpy(challenge.encryption[:50])
    assert torch.equal(learned_features(tiny_net, encryption), learned_features(again, encryption))


def test_embeddings_are_unit_rows_that_rank_true_neighbours_above_chance(tiny_net, small_set):
    challenge, truth = small_set
    encryption = torch.from_numpy(challenge.encryption)
    features = learned_features(tiny_net, encryption)
    assert features.shape == (len(encryption), TINY.embedding)
    assert torch.allclose(features.norm(dim=1), torch.ones(len(features)), atol=1e-5)
    classes = class_sets(torch.from_numpy(challenge.labels))
    pairs = torch.from_numpy(truth.pair_indices)
    learned = _precision_at(similarity_matrix(features, classes), pairs, 10)
    # Random embeddings (with the same label pruning) score the chance level.
    noise = torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
    chance = _precision_at(similarity_matrix(noise / noise.norm(dim=1, keepdim=True), classes), pairs, 10)
    assert learned > chance + 0.1, (learned, chance)  # measured 0.55 against 0.36


def test_the_attack_runs_its_training_stage_when_asked(small_set):
    challenge, _ = small_set
    events: list[tuple[str, float]] = []
    result = ciphertext_only_attack(challenge.encryption, challenge.labels, k=6,
                                              encodings_per_image=PER_IMAGE, similarity="learned",
                                              training=TINY, progress=lambda s, f: events.append((s, f)))
    assert list(result.stage_seconds) == [stage for stage in STAGES if stage != "self_refinement"]
    training = [f for s, f in events if s == "training"]
    assert training[0] == 0.0 and training[-1] == 1.0 and training == sorted(training)
    assert result.decryption.shape == challenge.encryption.shape


def test_cancel_stops_training(small_set):
    challenge, _ = small_set
    cancel = CancelToken()

    def progress(stage: str, fraction: float) -> None:
        if stage == "training" and fraction > 0:
            cancel.cancel()

    config = TrainingConfig(images=64, pool_images=64, steps=400, batch=64, width=8, embedding=32, seed=7)
    with pytest.raises(AttackCancelled):
        ciphertext_only_attack(challenge.encryption, challenge.labels, k=6, encodings_per_image=PER_IMAGE,
                                         similarity="learned", training=config, progress=progress, cancel=cancel)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"similarity": "neural"}, "similarity"),
    ({"similarity": "learned", "training": TrainingConfig(steps=0)}, "training.steps"),
])
def test_bad_settings_raise(small_set, kwargs, field):
    challenge, _ = small_set
    with pytest.raises(InvalidInputError) as raised:
        ciphertext_only_attack(challenge.encryption, challenge.labels, k=6, encodings_per_image=PER_IMAGE,
                                         **kwargs)
    assert raised.value.field == field


def test_small_images_are_refused():
    with pytest.raises(InvalidInputError, match="at least 8"):
        SimilarityNet((4, 4, 3))
