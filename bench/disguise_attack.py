"""Leakage audits of DisguisedNets: what each attack recovers, setting by setting, on private sets that differ.

Each row is one ``audit_disguise`` call, the function the service's DisguisedNets audits run (so these are the
figures an owner's audit gives): a fresh key of the setting, every private image disguised once, m of them held
by the Level-2 attacker as known pairs (not scored), the Level-1 attacker holding the disguised set and the bundled
public photos, and the key-aware bound. Reported per attack: mean SSIM of each recovery against its own image (the
audits' torch SSIM), the shares above 0.5 and 0.8, the block positions found right, the AES codebook's hit rate,
the papers' attack success (a classifier on clean thumbnails, k-fold over the set's classes), and the whole audit's
seconds; with the curves on, the known-pair attack's mean SSIM by pairs held.

The private sets (--images each, 32×32):
- ``bundled-0``: crops of the photos reserved for private images, seed 0, ten classes (photo and half): the set the
  Level-1 attacks were developed on.
- ``bundled-1``: the same photos, seed 1 (other crops): held out.
- ``grey-textures``: crops of ten greyscale scikit-image samples (brick, camera, coins, grass, gravel, moon, clock,
  cell, page, text; as three equal channels), one class each, which no attack's development looked at: held out.

Usage: python bench/disguise_attack.py [--images 100] [--sets bundled-0,bundled-1,grey-textures] [--quick]
The last line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import time

import numpy as np

from instahide_ops.audits.reconstruction.disguisednets.audit import DisguiseDeployment, audit_disguise
from instahide_ops.images import resize_image
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import DisguisedNetsParams
from instahide_ops.transforms.instahide.challenge import PUBLIC_SOURCE_NAMES, bundled_private_images

GREY_SOURCES = ("brick", "camera", "coins", "grass", "gravel", "moon", "clock", "cell", "page", "text")

SETTINGS = {  # name: (parameters, known pairs, curves)
    "rmt 2x2, noise 25 (papers' CIFAR-10)": (DisguisedNetsParams(block=(2, 2), noise=25.0), 8, True),
    "rmt 4x4, noise 0": (DisguisedNetsParams(block=(4, 4)), 1, False),
    "rmt 8x8, noise 0": (DisguisedNetsParams(block=(8, 8)), 1, False),
    "rmt 4x4 gaussian, noise 0": (DisguisedNetsParams(block=(4, 4), matrix="gaussian"), 1, False),
    "rmt 4x4, noise 100": (DisguisedNetsParams(block=(4, 4), noise=100.0), 4, False),
    "aes 4x4 (16-pixel units)": (DisguisedNetsParams(method="aes"), 20, False),
    "aes 4x4, scale 8 (2-pixel units)": (DisguisedNetsParams(method="aes", scale=8), 20, True),
    "aes 4x4, scale 8, salt-and-pepper 3 %": (DisguisedNetsParams(method="aes", scale=8, salt_pepper=0.03), 20,
                                              False),
}
QUICK = ("rmt 2x2, noise 25 (papers' CIFAR-10)", "aes 4x4, scale 8 (2-pixel units)")


def grey_textures(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 32×32 crops of scikit-image's greyscale samples (48–160 source pixels), label = source."""
    from skimage import data

    photos = [getattr(data, name)() for name in GREY_SOURCES]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        label = index % len(photos)
        photo = photos[label]
        side = int(rng.integers(48, min(160, *photo.shape) + 1))
        y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        crop = resize_image(np.repeat(photo[y:y + side, x:x + side, None], 3, axis=2), 32, 32)
        images.append(crop)
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def private_set(name: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "grey-textures":
        return grey_textures(count, seed=0)
    return bundled_private_images(count, seed=int(name.removeprefix("bundled-")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--sets", default="bundled-0,bundled-1,grey-textures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys, noise and pairs")
    parser.add_argument("--quick", action="store_true", help="the papers' two settings, one set, 40 images")
    args = parser.parse_args()
    sets = args.sets.split(",")
    if args.quick:
        args.images, sets = 40, sets[:1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    photos = list(bundled_sources(PUBLIC_SOURCE_NAMES).values())
    results: dict = {"benchmark": "disguise_attack", "images": args.images, "seed": args.seed,
                     "cpu": platform.processor() or platform.machine(), "commit": commit, "sets": {}}
    for set_name in sets:
        images, labels = private_set(set_name, args.images)
        results["sets"][set_name] = {}
        for name, (params, pairs, curves) in SETTINGS.items():
            if args.quick and name not in QUICK:
                continue
            started = time.perf_counter()
            report = audit_disguise(images, labels, DisguiseDeployment(params, pairs, seed=args.seed, curves=curves),
                                    photos=photos)
            seconds = time.perf_counter() - started
            rows = {}
            for attack, row in report.attacks.items():
                success = row.attack_success
                rows[attack] = {
                    "mean_ssim": row.scores.mean_ssim, "above_0.5": row.recovery.fractions[0.5],
                    "above_0.8": row.recovery.fractions[0.8], "permutation_right": row.permutation_accuracy,
                    "hit_rate": row.hit_rate, "seconds": sum(row.stage_seconds.values()),
                    "attack_success": None if success is None else dataclasses.asdict(success)}
                extras = ("" if row.hit_rate is None else f"  hits {row.hit_rate:6.1%}") + \
                    ("" if success is None else f"  success {success.success:.2f}")
                print(f"{set_name:14s} {name:40s} {attack:25s} SSIM {row.scores.mean_ssim:6.3f}  "
                      f">0.5 {row.recovery.fractions[0.5]:6.1%}  >0.8 {row.recovery.fractions[0.8]:6.1%}  "
                      f"perm {row.permutation_accuracy:6.1%}{extras}", flush=True)
            curve = {int(p.value): p.mean_ssim for p in report.curves
                     if p.attack == "known_pairs" and p.axis == "known_pairs"}
            if curve:
                print(f"{set_name:14s} {name:40s} known pairs curve: " +
                      "  ".join(f"{m}: {v:.3f}" for m, v in curve.items()))
            print(f"{set_name:14s} {name:40s} audit {seconds:.1f} s ({pairs} pairs held, curves {curves})")
            results["sets"][set_name][name] = {"attacks": rows, "pairs_curve": curve, "seconds": seconds,
                                               "known_pairs": pairs}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
