"""Attacks on DisguisedNets: what the Level-2 attacks recover (RMT: least squares; AES-ECB: the codebook), by
block size, noise and pairs held.

A private set of --images 32×32 crops of the bundled photos (seeded; every photo contributes) is disguised under a
fresh key of each setting; the attacker holds m other crops and their disguises (the owner's images, not chosen
for texture) and the disguised set, never the key. Reports per setting and m: the permutation positions found
right, mean and minimum SSIM of the recoveries against the originals (the audits' SSIM), the share above 0.5 and
0.8, seconds and, for AES, the share of disguised codewords the codebook decrypted (the papers' hit rate); beside
them the key-aware bound, ``undisguise`` with the key less the noise's mean (RMT), which the noise alone keeps below
1. The Level-1 attacks are not here yet.

Usage: python bench/disguise_attack.py [--images 100] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import numpy as np
import torch

from instahide_ops.audits.reconstruction.disguisednets.codebook import codebook_attack
from instahide_ops.audits.reconstruction.disguisednets.known_pairs import known_pair_attack
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.images import resize_image
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise, draw_noise, undisguise

SETTINGS = {  # name: (parameters, pairs held)
    "rmt 2x2, noise 0": (DisguisedNetsParams(block=(2, 2)), (1, 2)),
    "rmt 4x4, noise 0": (DisguisedNetsParams(block=(4, 4)), (1, 2)),
    "rmt 8x8, noise 0": (DisguisedNetsParams(block=(8, 8)), (1, 2)),
    "rmt 4x4 gaussian, noise 0": (DisguisedNetsParams(block=(4, 4), matrix="gaussian"), (1, 2)),
    "rmt 2x2, noise 25 (papers' CIFAR-10)": (DisguisedNetsParams(block=(2, 2), noise=25.0), (1, 2, 4, 8, 16, 32)),
    "rmt 4x4, noise 100": (DisguisedNetsParams(block=(4, 4), noise=100.0), (1, 4, 16, 32)),
    "aes 4x4 (16-pixel units)": (DisguisedNetsParams(method="aes"), (1, 4, 20)),
    "aes 4x4, scale 8 (2-pixel units)": (DisguisedNetsParams(method="aes", scale=8), (1, 4, 20)),
    "aes 4x4, scale 8, salt-and-pepper 3 %": (DisguisedNetsParams(method="aes", scale=8, salt_pepper=0.03),
                                              (1, 4, 20)),
}


def crops(count: int, rng: np.random.Generator) -> torch.Tensor:
    photos = list(bundled_sources().values())
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(48, 160))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        out.append(resize_image(photo[y:y + side, x:x + side], 32, 32))
    return torch.from_numpy(np.stack(out)[rng.permutation(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the noise-free settings and 30 images")
    args = parser.parse_args()
    if args.quick:
        args.images = 30
    rng = np.random.default_rng(args.seed)
    private, held = crops(args.images, rng), crops(32, rng)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    results: dict = {"benchmark": "disguise_attack", "attack": "known_pairs", "images": args.images,
                     "seed": args.seed, "cpu": platform.processor() or platform.machine(), "commit": commit,
                     "settings": {}}
    for name, (params, pair_counts) in SETTINGS.items():
        if args.quick and params.noise:
            continue
        key = create_key(params, (32, 32, 3), seed=args.seed + 1)
        noises = [draw_noise(key, len(images), seed=args.seed + 2 + i) for i, images in enumerate((private, held))]
        disguised, held_disguised = (disguise(images, key, noise=noise)
                                     for images, noise in zip((private, held), noises, strict=True))
        rows: dict = {}
        if params.method == "rmt":
            bound = ssim((undisguise(disguised, key) - params.noise / 2).clamp(0, 255) / 127.5 - 1,
                         private.float() / 127.5 - 1)
            rows["key_aware_bound"] = {"mean_ssim": float(bound.mean()), "min_ssim": float(bound.min())}
            print(f"{name:40s} key-aware bound: SSIM mean {bound.mean():.3f} min {bound.min():.3f}")
        for m in pair_counts:
            started = time.perf_counter()
            hit_rate = None
            if params.method == "rmt":
                recovered, permutation = known_pair_attack(disguised, held[:m], held_disguised[:m], params)
            else:
                result = codebook_attack(disguised, held[:m], held_disguised[:m], params)
                recovered, permutation, hit_rate = result.recovered, result.permutation, result.hit_rate
            seconds = time.perf_counter() - started
            scores = ssim(recovered / 127.5 - 1, private.float() / 127.5 - 1)
            rows[m] = {"permutation_right": float((permutation == key.permutation).mean()),
                       "mean_ssim": float(scores.mean()), "min_ssim": float(scores.min()),
                       "above_0.5": float((scores > 0.5).float().mean()),
                       "above_0.8": float((scores > 0.8).float().mean()), "seconds": seconds,
                       "hit_rate": hit_rate}
            hits = "" if hit_rate is None else f"  hits {hit_rate:6.1%}"
            print(f"{name:40s} pairs {m:3d}: permutation {rows[m]['permutation_right']:6.1%}  SSIM mean "
                  f"{rows[m]['mean_ssim']:.3f} min {rows[m]['min_ssim']:.3f}  >0.5 {rows[m]['above_0.5']:6.1%}  "
                  f">0.8 {rows[m]['above_0.8']:6.1%}{hits}  {seconds:.2f} s")
        results["settings"][name] = rows
    print(json.dumps(results))


if __name__ == "__main__":
    main()
