"""Leakage of a challenge-shaped set under the ciphertext-only, photo-aware and pool-aware attacks and the bound.

Builds N bundled private images × T encodings (default 100 × 50, k = 6, cross mode: the InstaHide
Challenge's shape) with the public pool cut from other photos, and runs the same audit the audit
service runs (``audits.reconstruction.audit_deployment``): the ciphertext-only attack, the pool-aware
attack (the same attacker holding the public pool, which anyone rebuilds from this package), the
key-aware bound, each scored the way the challenge scores; with --photo-aware also the attacker who holds
the photos the pool was cut from but not the pool (the InstaHide Challenge's position: its publics were
ImageNet crops). Writes the challenge files and the picture of originals over their best recoveries to
--out. The last line of output is one JSON object.

Anchors: Carlini et al. reached Max_SSIM 0.90 / Mean_SSIM 0.43 / Min_L2 0.01 / Mean_L2 0.31 in about
12 GPU-hours; the PRNG attack reached 0.98 because the challenge used a 32-bit seed.

Usage: python bench/attack.py [--quick] [--device cuda] [--photo-aware] [--no-pool-aware] [--no-key-aware]
                              [--pool-size P] [--pool-memory-mib M] [--private-dir DIR]
                              [--refine-sets S] [--refine-steps N] [--out DIR]
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

from instahide_ops.audits.reconstruction import AttackSettings, Deployment, audit_deployment, choose_attacks
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import SIMILARITIES
from instahide_ops.audits.reconstruction.instahide.self_refine import RefinementConfig
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.instahide.challenge import (
    PUBLIC_SOURCE_NAMES,
    build_challenge,
    bundled_private_images,
    challenge_public_pool,
    load_private_images,
    save_challenge,
)
from instahide_ops.transforms.instahide.encode import EncodeParams
from instahide_ops.transforms.instahide.pool import DEFAULT_POOL_SIZE

# The --quick set gives the refiner about 120 pairs, which 400 steps fit; 1,200 would take most of its 5 minutes.
QUICK_REFINE_STEPS = 400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small set: 30 images × 20 encodings")
    parser.add_argument("--images", type=int, default=None, help="private images (default 100; --quick 30)")
    parser.add_argument("--encodings-per-image", type=int, default=None, help="T (default 50; --quick 20)")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="seed of the set's keys (the attack never sees it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--similarity", choices=SIMILARITIES, default="auto",
                        help="the attack's similarity stage (auto: the learned network on CUDA, else high-pass)")
    parser.add_argument("--photo-aware", action="store_true",
                        help="also run the attacker who holds the public pool's photos but not the pool")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                        help=f"public images in the pool (default {DEFAULT_POOL_SIZE}); a larger one reuses each "
                             "image in fewer encodings")
    parser.add_argument("--pool-memory-mib", type=int, default=AttackSettings.working_bytes >> 20,
                        help="memory the pool-aware and photo-aware attacks' pursuits may hold (the server's "
                             "--audit-pool-memory-mib); below the Gram matrix's size its rows are computed instead")
    parser.add_argument("--no-pool-aware", action="store_true", help="skip the pool-aware attack")
    parser.add_argument("--no-key-aware", action="store_true", help="skip the key-aware bound")
    parser.add_argument("--attack", action="append", default=[], metavar="NAME",
                        help="run exactly these attacks (repeatable; with what they start from) instead of the "
                             "defaults and the flags above")
    parser.add_argument("--private-dir", default=None,
                        help="attack your own images instead of the bundled ones: a folder of images (pseudo-classes) "
                             "or of one sub-folder per class; the first --images of them are used")
    parser.add_argument("--refine-sets", type=int, default=RefinementConfig.sets,
                        help=f"sets the ciphertext-only attack simulates to train a refiner of its recoveries "
                             f"(default {RefinementConfig.sets}; 0 skips it)")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help=f"the refiner's training steps (default {RefinementConfig.steps}; --quick "
                             f"{QUICK_REFINE_STEPS})")
    parser.add_argument("--out", default=None,
                        help="folder for grid.png (default: temp); given, it also gets the challenge files")
    args = parser.parse_args()
    if args.pool_memory_mib < 1:
        parser.error(f"--pool-memory-mib must be at least 1, got {args.pool_memory_mib}")
    if args.refine_sets < 0:
        parser.error(f"--refine-sets must be 0 or more, got {args.refine_sets}")
    if args.refine_steps is not None and args.refine_steps < 1:
        parser.error(f"--refine-steps must be at least 1, got {args.refine_steps}")
    refine_steps = args.refine_steps or (QUICK_REFINE_STEPS if args.quick else RefinementConfig.steps)
    images = args.images or (30 if args.quick else 100)
    per_image = args.encodings_per_image or (20 if args.quick else 50)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="instahide-attack-"))
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    if args.private_dir:
        privates, classes = load_private_images(args.private_dir)
        if len(privates) < 2:
            parser.error(f"--private-dir {args.private_dir}: need at least 2 images, found {len(privates)}")
        privates, classes = privates[:images], classes[:images]
    else:
        privates, classes = bundled_private_images(images)
    pool = challenge_public_pool(count=args.pool_size, device=args.device)
    build_seconds = time.perf_counter() - start
    photos = list(bundled_sources(PUBLIC_SOURCE_NAMES).values()) if args.photo_aware or args.attack else None
    skipped = [name for name, off in (("pool_aware", args.no_pool_aware), ("key_aware", args.no_key_aware)) if off]
    attacks = [a.name for a in choose_attacks(args.attack, extra=["photo_aware"] if args.photo_aware else [],
                                              skipped=[] if args.attack else skipped)]
    report = audit_deployment(
        privates, classes, Deployment(EncodeParams(k=args.k), per_image, seed=args.seed), pool=pool, photos=photos,
        attacks=attacks, device=args.device,
        settings=AttackSettings(similarity=args.similarity, working_bytes=args.pool_memory_mib << 20,
                                refine_sets=args.refine_sets, refine_steps=refine_steps),
        progress=lambda stage, fraction, overall: print(f"  {overall:6.1%}  {stage:12s} {fraction:6.1%}",
                                                         end="\r", flush=True))
    if args.out:  # the same set (same seed), in the challenge's format for anyone to attack or rescore
        save_challenge(out, *build_challenge(privates, classes, encodings_per_image=per_image, k=args.k, pool=pool,
                                             seed=args.seed, device=args.device))
    (out / "grid.png").write_bytes(report.grid_png)

    results = {"benchmark": "attack", "cpu": platform.machine(), "cores": os.cpu_count(),
               "k": args.k, "encodings_per_image": per_image, "pool_size": args.pool_size,
               "pool_memory_mib": args.pool_memory_mib, "seed": args.seed,
               "similarity": args.similarity, "refine_sets": args.refine_sets,
               "refine_steps": refine_steps if args.refine_sets else 0, "setup_seconds": build_seconds,
               **report.summary(), "out": str(out)}
    print(" " * 60)
    for name in report.attacks:
        r = results[name]
        print(f"{name:16s} Max_SSIM {r['max_ssim']:.3f}  Mean_SSIM {r['mean_ssim']:.3f}  Min_L2 {r['min_l2']:.3f}  "
              f"Mean_L2 {r['mean_l2']:.3f}  recovered>0.5 {r['fractions']['0.5']:.2f}  "
              f">0.8 {r['fractions']['0.8']:.2f}  {sum(r['stage_seconds'].values()):.1f}s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
