"""What a reconstruction attack is: what it sees, what it returns, and the registry that names it.

An attack is a class with a name, registered with ``@register_attack``; audits, the service and the CLI find
it by that name and nothing else, so a new attack is one module (under ``audits/reconstruction/<family>/``)
plus its test. Each attack declares what its attacker holds beyond the disguised data (``holds``): the
audit hands it an ``AttackerView`` with exactly that filled in, so no attack can read what a real attacker
at its threat level would not have. An attack that holds keys is a ``bound``: it measures a leaked key store,
not what the disguised data gives away.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken, ProgressCallback
from instahide_ops.errors import InvalidInputError
from instahide_ops.registry import Registry

POOL, PHOTOS, KEYS, PAIRS = "pool", "photos", "keys", "pairs"
EVIDENCE = (POOL, PHOTOS, KEYS, PAIRS)
"""What an attacker may hold beyond the disguised data and the public parameters: InstaHide's public pool,
public photos, the keys, DisguisedNets' known original/disguised pairs."""

FAMILIES = ("instahide", "disguised_nets")
"""The transform families with attacks; an audit runs the attacks of its family only."""

DEFAULT_WORKING_BYTES = 1 << 30


@dataclass(frozen=True)
class AttackSettings:
    """Knobs of the attacks that the audit's operator sets (not the owner's configuration under audit).

    Attributes:
        similarity: the ciphertext-only attack's similarity stage: "auto" (learned on CUDA, else the
            high-pass statistic), "learned" or "highpass".
        working_bytes: memory each search of a public pool (and the key-aware bound's normal matrix) may hold.
        refine_sets: simulated sets the ciphertext-only attack trains its refiner on; 0 skips the refinement.
        refine_steps: that refiner's training steps.
    """

    similarity: str = "auto"
    working_bytes: int = DEFAULT_WORKING_BYTES
    refine_sets: int = 0
    refine_steps: int = 1200


@dataclass(frozen=True)
class KeyMapping:
    """What an attacker holding the keys but not the masks knows of each encoding.

    Attributes:
        pair_indices: (E, 2) int64 each encoding's private images.
        coefficients: (E, k) float32 their coefficients, private slots first.
        public_indices: (E, k - 2) int64 the pool index in each public slot, or None without public slots.
        num_images: the number of private images.
    """

    pair_indices: torch.Tensor
    coefficients: torch.Tensor
    public_indices: torch.Tensor | None
    num_images: int


@dataclass(frozen=True)
class AttackerView:
    """Everything one attacker sees: the disguised data, its public parameters, and what it holds.

    Attributes:
        encryption: (E, H, W, C) float32 encodings, on the device the attack runs on.
        labels: (E, classes) float32 their labels as published (InstaHide: mixed).
        k, encodings_per_image, mode: the public parameters.
        pool: the public pool the encodings mixed in (``POOL``), else None.
        photos: (H, W, 3) uint8 photos the pool was cut from (``PHOTOS``), else None.
        keys: each encoding's mapping and coefficients (``KEYS``), else None.
    """

    encryption: torch.Tensor
    labels: torch.Tensor
    k: int
    encodings_per_image: int
    mode: str = "cross"
    pool: object | None = None  # a transforms.instahide.pool.PublicPool
    photos: Sequence[np.ndarray] | None = None
    keys: KeyMapping | None = None

    def holding(self, evidence: Iterable[str]) -> AttackerView:
        """The same view with only ``evidence`` (of ``EVIDENCE``) left in."""
        held = set(evidence)
        return AttackerView(self.encryption, self.labels, self.k, self.encodings_per_image, self.mode,
                            self.pool if POOL in held else None, self.photos if PHOTOS in held else None,
                            self.keys if KEYS in held else None)

    @property
    def evidence(self) -> frozenset[str]:
        """What this view holds."""
        present = {POOL: self.pool, PHOTOS: self.photos, KEYS: self.keys}
        return frozenset(name for name, value in present.items() if value is not None)


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns.

    Attributes:
        recovered: (M, H, W, C) float32 in [-1, 1]: one image per private cluster (CPU).
        decryption: (E, H, W, C) float32: for each encoding, the recovery of its more heavily
            weighted cluster (the challenge's ``decryption`` array).
        members: (E, 2) int64 the two clusters of each encoding.
        coefficients: (E, 2) float32 their λ (read from the labels, or the keys' for the key-aware bound).
        stage_seconds: seconds spent per stage, in stage order.
        device: where the attack ran.
        public_coverage: share of the encodings in which the attack found a public image among what it holds
            (the photo-aware attack: crops of the photos); None for the attacks that look for none.
    """

    recovered: torch.Tensor
    decryption: torch.Tensor
    members: torch.Tensor
    coefficients: torch.Tensor
    stage_seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    public_coverage: float | None = None


class Attack(Protocol):
    """A reconstruction attack, as audits run it.

    Class attributes:
        name: the registry name ("pool_aware"); title: its name for people ("pool-aware").
        threat: what its attacker holds, in a sentence.
        holds: what of ``EVIDENCE`` it holds; the audit fills in only that.
        bound: it holds keys (a bound on what better attacks could reach, not an attack on the data).
        default: audits run it unless told otherwise.
        starts_from: the attack whose result it continues (run first), or None.
        family: the transform family whose outputs it attacks (of ``FAMILIES``); its views are that family's
            (InstaHide's ``AttackerView``, DisguisedNets' ``disguisednets.view.DisguisedView``).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    threat: ClassVar[str]
    holds: ClassVar[frozenset[str]]
    bound: ClassVar[bool]
    default: ClassVar[bool]
    starts_from: ClassVar[str | None]
    family: ClassVar[str]

    def stages(self, view: AttackerView, settings: AttackSettings) -> dict[str, float]:
        """The stages ``run`` reports for this view, in order, each with its rough share of the time (any
        unit; comparable across attacks: about seconds / 250 on two CPU cores at 100 × 50)."""
        ...

    def check(self, image_shape: tuple[int, int, int]) -> None:
        """Raise InvalidInputError (field "attacks") when it cannot attack images of this (H, W, C)."""
        ...

    def run(self, view: AttackerView, *, start: AttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> AttackResult:
        """Attack: ``start`` is the result of ``starts_from`` (None when it starts from nothing)."""
        ...


ATTACKS: Registry[Attack] = Registry("attack", field="attacks")


def register_attack(cls: type) -> type:
    """Class decorator: make the attack available by its ``name`` (its holdings must be of ``EVIDENCE``)."""
    unknown = set(cls.holds) - set(EVIDENCE)
    if unknown:
        raise ValueError(f"attack {cls.name!r} holds {sorted(unknown)}, not among {list(EVIDENCE)}")
    if cls.family not in FAMILIES:
        raise ValueError(f"attack {cls.name!r} attacks {cls.family!r}, not one of {list(FAMILIES)}")
    ATTACKS.register(cls.name, cls())
    return cls


def get_attack(name: str) -> Attack:
    """The attack registered under ``name``; InvalidInputError listing the known names otherwise."""
    return ATTACKS.get(name)


def attack_names(family: str | None = None) -> list[str]:
    """Every registered attack's name (of ``family``, or of all), in the order audits run them."""
    return [attack.name for attack in _ordered(ATTACKS) if family in (None, attack.family)]


def choose_attacks(attacks: Sequence[str] = (), *, extra: Sequence[str] = (), skipped: Sequence[str] = (),
                   evidence: Iterable[str] = EVIDENCE, family: str = "instahide") -> list[Attack]:
    """The attacks an audit runs, with what they start from, in the order they run.

    Args:
        attacks: exactly these (and what they start from); empty means the defaults.
        extra: run these beside the defaults (only with ``attacks`` empty).
        skipped: leave these defaults out (only with ``attacks`` empty).
        evidence: what the audit can hand its attackers (of ``EVIDENCE``). A default attack that holds more
            is left out; an attack asked for by name that holds more is refused.
        family: the transform family audited; only its attacks run.

    Raises:
        InvalidInputError: an unknown name, an attack on another family, ``extra``/``skipped`` beside
            ``attacks``, or an attack asked for that holds what the audit does not have.
    """
    available = frozenset(evidence)
    if attacks and (extra or skipped):
        raise InvalidInputError("extra and skipped attacks change the defaults; with attacks named, name them all",
                                field="attacks")
    for name in (*attacks, *extra, *skipped):
        attack = get_attack(name)
        if attack.family != family:
            raise InvalidInputError(f"{name} attacks {attack.family}, not {family}; its attacks are "
                                    f"{attack_names(family)}", field="attacks")
    named = list(dict.fromkeys((*attacks, *extra)))
    for name in named:
        missing = get_attack(name).holds - available
        if missing:
            raise InvalidInputError(f"{name} holds the {' and the '.join(sorted(missing))}, which this audit does "
                                    "not have", field="attacks")
    chosen = set(named) if attacks else (
        {a.name for a in ATTACKS if a.family == family and a.default and a.holds <= available
         and a.name not in skipped} | set(named))
    for name in list(chosen):  # bring along what each starts from
        start = get_attack(name).starts_from
        while start is not None and start not in chosen:
            chosen.add(start)
            start = get_attack(start).starts_from
    return [attack for attack in _ordered(ATTACKS) if attack.name in chosen]


def _ordered(attacks: Iterable[Attack]) -> list[Attack]:
    """Attacks without keys first, each after what it starts from, in name order otherwise; bounds last."""
    pending = sorted(attacks, key=lambda a: (a.bound, a.name))
    done: list[Attack] = []
    while pending:
        ready = next(a for a in pending if a.starts_from is None or a.starts_from in {d.name for d in done}
                     or a.starts_from not in {p.name for p in pending})
        pending.remove(ready)
        done.append(ready)
    return done
