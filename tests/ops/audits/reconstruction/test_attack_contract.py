"""What every registered reconstruction attack promises: the contract audits rely on, checked for each attack.

An attack added to the registry (``@register_attack`` in a module under ``audits/reconstruction/<family>/``) is
tested here without a line of its own: its description, the stages it declares and reports in order, its result's
shapes, that it sees only what it holds, cancellation, bad input, and (with a GPU) the device.
"""

from __future__ import annotations

import pytest
import torch
from photo_set import IMAGES, PER_IMAGE

from instahide_ops.audits.progress import AttackCancelled, CancelToken
from instahide_ops.audits.reconstruction import (
    ATTACKS,
    EVIDENCE,
    AttackerView,
    AttackSettings,
    KeyMapping,
    attack_names,
    get_attack,
)
from instahide_ops.audits.reconstruction.attack import FAMILIES, KEYS
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.instahide.challenge import ChallengeSet, GroundTruth

SETTINGS = AttackSettings(similarity="highpass")


def full_view(challenge: ChallengeSet, truth: GroundTruth, pool, photos, device: str = "cpu") -> AttackerView:
    """Everything any attacker could hold, of the photo set (a pool cut from two photos, mixed into 20 × 20)."""
    def tensor(array):
        return torch.from_numpy(array).to(device)

    keys = KeyMapping(tensor(truth.pair_indices), tensor(truth.coefficients), tensor(truth.public_indices), IMAGES)
    return AttackerView(tensor(challenge.encryption), tensor(challenge.labels), challenge.k, PER_IMAGE,
                        pool=pool.to(device), photos=photos, keys=keys)


def view_for(attack, view: AttackerView) -> AttackerView:
    """What an audit hands the attack: what it holds (a bound, also what the attacks without keys hold)."""
    keyless = frozenset().union(*(a.holds for a in ATTACKS if not a.bound and a.family == "instahide"))
    return view.holding(attack.holds | (keyless if attack.bound else frozenset()))


class Runs:
    """Each attack run once on the photo set (after what it starts from), with its progress recorded."""

    def __init__(self, view: AttackerView) -> None:
        self.view = view
        self.results: dict = {}
        self.events: dict[str, list[tuple[str, float]]] = {}

    def __call__(self, name: str):
        if name not in self.results:
            attack = get_attack(name)
            start = self(attack.starts_from) if attack.starts_from else None
            events = self.events[name] = []
            self.results[name] = attack.run(view_for(attack, self.view), start=start, settings=SETTINGS,
                                            progress=lambda stage, fraction: events.append((stage, fraction)))
        return self.results[name]


@pytest.fixture(scope="module")
def view(crop_challenge, crop_pool, photos) -> AttackerView:
    return full_view(*crop_challenge, crop_pool, photos)


@pytest.fixture(scope="module")
def runs(view) -> Runs:
    return Runs(view)


@pytest.fixture(params=attack_names("instahide"))
def attack(request):
    return get_attack(request.param)


def test_the_registry_describes_every_attack():
    names = attack_names()
    assert len(set(names)) == len(names) == len(ATTACKS) and "ciphertext_only" in names
    assert set(attack_names("instahide")) | set(attack_names("disguised_nets")) == set(names)
    for attack in ATTACKS:
        assert attack.title and attack.threat and attack.family in FAMILIES
        assert attack.holds <= set(EVIDENCE)
        assert attack.bound == (KEYS in attack.holds)  # an attacker holding the keys is a bound
        assert attack.starts_from is None or (attack.starts_from in names
                                              and names.index(attack.starts_from) < names.index(attack.name))
    bounds = [names.index(a.name) for a in ATTACKS if a.bound]
    assert all(i > names.index(a.name) for i in bounds for a in ATTACKS if not a.bound)  # bounds run last
    with pytest.raises(InvalidInputError, match="unknown attack 'nope'"):
        get_attack("nope")


class TestEveryAttack:
    def test_reports_the_stages_it_declares_in_order(self, attack, runs, view):
        runs(attack.name)
        declared = list(attack.stages(view_for(attack, view), SETTINGS))
        events = runs.events[attack.name]
        reported = list(dict.fromkeys(stage for stage, _ in events))
        assert reported == declared, (reported, declared)
        assert all(0.0 <= fraction <= 1.0 for _, fraction in events)
        for stage in declared:  # each stage starts at 0 and ends at 1
            fractions = [f for s, f in events if s == stage]
            assert fractions[0] == 0.0 and fractions[-1] == 1.0, stage
        assert set(runs.results[attack.name].stage_seconds) <= set(declared)

    def test_its_result(self, attack, runs, view):
        result = runs(attack.name)
        encodings = len(view.encryption)
        assert result.recovered.ndim == 4 and result.recovered.shape[1:] == view.encryption.shape[1:]
        assert result.recovered.dtype == torch.float32 and result.recovered.device.type == "cpu"
        assert float(result.recovered.abs().max()) <= 1.0 + 1e-5
        assert result.decryption.shape == view.encryption.shape
        assert result.members.shape == (encodings, 2) and result.members.dtype == torch.int64
        assert int(result.members.min()) >= 0 and int(result.members.max()) < len(result.recovered)
        assert result.coefficients.shape == (encodings, 2)
        assert result.public_coverage is None or 0.0 <= result.public_coverage <= 1.0

    def test_it_sees_only_what_it_holds(self, attack, runs, view):
        # Handed less than it holds, it refuses; handed only what it holds, it runs (``runs`` did).
        if not attack.holds:
            pytest.skip(f"{attack.name} holds nothing beyond the encodings")
        start = runs(attack.starts_from) if attack.starts_from else None
        with pytest.raises(InvalidInputError):
            attack.run(view.holding(()), start=start, settings=SETTINGS)

    def test_cancel_stops_it_at_its_first_report(self, attack, runs, view):
        start = runs(attack.starts_from) if attack.starts_from else None
        cancel = CancelToken()
        cancel.cancel()
        with pytest.raises(AttackCancelled):
            attack.run(view_for(attack, view), start=start, settings=SETTINGS, cancel=cancel)

    def test_bad_input_names_its_field(self, attack, runs, view):
        start = runs(attack.starts_from) if attack.starts_from else None
        full = view_for(attack, view)
        bad = AttackerView(full.encryption[0], full.labels, full.k, full.encodings_per_image, pool=full.pool,
                           photos=full.photos, keys=full.keys)
        with pytest.raises(InvalidInputError, match="expected"):
            attack.run(bad, start=start, settings=SETTINGS)
        attack.check((32, 32, 3))  # the audit's check of the images' shape: RGB images suit every attack

    @pytest.mark.cuda
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_on_cuda_it_runs_there_and_hands_back_cpu_tensors(self, attack, crop_challenge, crop_pool, photos):
        cuda = Runs(full_view(*crop_challenge, crop_pool, photos, device="cuda"))
        result = cuda(attack.name)
        assert result.device.startswith("cuda") and result.recovered.device.type == "cpu"
