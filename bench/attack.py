"""Leakage of a challenge-shaped set under the ciphertext-only attack and the key-aware bound.

Builds N bundled private images × T encodings (default 100 × 50, k = 6, cross mode: the InstaHide
Challenge's shape), writes the challenge files, runs the ciphertext-only attack from those files
alone, scores it the way the challenge does, runs the key-aware bound, and writes a picture of the
originals over their best recoveries. The last line of output is one JSON object.

Anchors: Carlini et al. reached Max_SSIM 0.90 / Mean_SSIM 0.43 / Min_L2 0.01 / Mean_L2 0.31 in about
12 GPU-hours; the PRNG attack reached 0.98 because the challenge used a 32-bit seed.

Usage: python bench/attack.py [--quick] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import torch

from instahide_ops.attacks import create_attack
from instahide_ops.challenge import (
    GROUND_TRUTH_FILE,
    build_challenge,
    bundled_private_images,
    load_challenge,
    load_ground_truth,
    save_challenge,
)
from instahide_ops.grid import image_grid, write_png
from instahide_ops.metrics import challenge_scores, recovered_fractions


def score(result, truth) -> dict:
    privates = torch.from_numpy(truth.privates)
    scores = challenge_scores(result.decryption, privates, torch.from_numpy(truth.pair_indices)).to_dict()
    recovery = recovered_fractions(result.recovered, privates)
    return {**scores, **recovery.to_dict(), "stage_seconds": result.stage_seconds,
            "seconds": sum(result.stage_seconds.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CPU-sized set: 30 images × 20 encodings")
    parser.add_argument("--images", type=int, default=None, help="private images (default 100; --quick 30)")
    parser.add_argument("--encodings-per-image", type=int, default=None, help="T (default 50; --quick 20)")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="seed of the set's keys (the attack never sees it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--recovery-steps", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder for the challenge files and grid.png (default: temp)")
    args = parser.parse_args()
    images = args.images or (30 if args.quick else 100)
    per_image = args.encodings_per_image or (20 if args.quick else 50)

    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="instahide-attack-"))
    start = time.perf_counter()
    privates, classes = bundled_private_images(images)
    challenge, truth = build_challenge(privates, classes, encodings_per_image=per_image, k=args.k, seed=args.seed)
    save_challenge(out, challenge, truth)
    build_seconds = time.perf_counter() - start

    # The attack reads the challenge files with the ground truth moved out of reach.
    hidden = out.parent / f".{out.name}-{GROUND_TRUTH_FILE}"
    (out / GROUND_TRUTH_FILE).rename(hidden)
    try:
        view = load_challenge(out, k=args.k, encodings_per_image=per_image)
        attack = create_attack("ciphertext_only")(
            view.encryption, view.labels, k=view.k, encodings_per_image=view.encodings_per_image,
            device=args.device, recovery_steps=args.recovery_steps,
            progress=lambda stage, fraction: print(f"  {stage:12s} {fraction:6.1%}", end="\r", flush=True))
    finally:
        hidden.rename(out / GROUND_TRUTH_FILE)
    truth = load_ground_truth(out)
    bound = create_attack("key_aware")(
        challenge.encryption, challenge.labels, pair_indices=truth.pair_indices,
        coefficients=truth.coefficients, num_images=images, device=args.device,
        recovery_steps=args.recovery_steps)

    results = {
        "benchmark": "attack", "device": args.device, "cpu": platform.machine(), "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "images": images, "encodings_per_image": per_image, "k": args.k, "seed": args.seed,
        "build_seconds": build_seconds,
        "ciphertext_only": score(attack, truth),
        "key_aware": score(bound, truth),
    }
    recovery = recovered_fractions(attack.recovered, torch.from_numpy(truth.privates))
    shown = min(20, images)
    grid = image_grid(truth.privates[:shown], attack.recovered[recovery.best_match[:shown]])
    write_png(out / "grid.png", grid)
    results["grid"] = str(out / "grid.png")

    print(" " * 40)
    for name in ("ciphertext_only", "key_aware"):
        r = results[name]
        print(f"{name:16s} Max_SSIM {r['max_ssim']:.3f}  Mean_SSIM {r['mean_ssim']:.3f}  Min_L2 {r['min_l2']:.3f}  "
              f"Mean_L2 {r['mean_l2']:.3f}  recovered>0.5 {r['fractions']['0.5']:.2f}  "
              f">0.8 {r['fractions']['0.8']:.2f}  {r['seconds']:.1f}s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
