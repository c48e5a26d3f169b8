"""How much of the key-aware bound's shortfall is the recovery's sign guessing, and how much is the noise.

On the challenge-shaped set (bundled images, default 100 × 50, k = 6) this runs the recovery three ways,
all given the true partners and coefficients:

- ``key_aware``: the key-aware recovery from the private pairs alone (signs of the unmasked sums inferred by
  EM; the audit's bound goes on to solve the publics the key names more than once, ``joint_recovery``);
- ``known_signs``: the same solver told the true sign of every unmasked sum, as if the masks had leaked
  too (without the colour prior, which only serves to orient red): the ceiling of a recovery that treats
  the public images as Gaussian noise;
- ``pool_aware``: the key-aware bound continued by the pool-aware attack (``attacks.pool_aware``), which
  also holds the public pool: each encoding's public images are named and taken out, so the public mix is
  no longer noise and the Gaussian-noise ceiling above no longer bounds it;
- the fraction of sums whose sign the key-aware recovery gets right.

Per-private SSIM is each private image against its own recovery; Max_SSIM is the challenge's metric.
The last line of output is one JSON object.

Usage: python bench/recovery_ceiling.py [--images 100] [--encodings-per-image 50] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from instahide_ops.audits.reconstruction.audit import device_name
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import pick_decryption, recovery_options
from instahide_ops.audits.reconstruction.instahide.key_aware import key_aware_attack
from instahide_ops.audits.reconstruction.instahide.pool_aware import BOUND_PUBLIC_MIX_STEPS, pool_aware_attack
from instahide_ops.audits.reconstruction.instahide.recovery import recover_privates
from instahide_ops.audits.reconstruction.scores import challenge_scores, ssim
from instahide_ops.transforms.instahide.challenge import build_challenge, bundled_private_images, challenge_public_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--encodings-per-image", type=int, default=50)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    privates, classes = bundled_private_images(args.images)
    pool = challenge_public_pool(device=args.device)
    challenge, truth = build_challenge(privates, classes, encodings_per_image=args.encodings_per_image, k=args.k,
                                       pool=pool, seed=args.seed, device=args.device, with_sum_signs=True)
    originals = torch.from_numpy(truth.privates)
    members = torch.from_numpy(truth.pair_indices)
    weights = torch.from_numpy(truth.coefficients[:, :2])

    start = time.perf_counter()
    bound = key_aware_attack(challenge.encryption, challenge.labels, pair_indices=truth.pair_indices,
                                       coefficients=truth.coefficients, num_images=args.images, k=args.k,
                                       device=args.device)
    bound_seconds = time.perf_counter() - start
    encryption = torch.from_numpy(challenge.encryption).to(args.device)
    signs = torch.from_numpy(truth.sum_signs).to(args.device)
    # The public mean the attacks assume, so the two runs differ only in where the signs come from.
    options = recovery_options(encryption, args.k, None, None)
    start = time.perf_counter()
    ceiling = recover_privates(encryption.abs(), members.to(args.device), weights.to(args.device),
                               num_images=args.images, known_signs=signs, colour_weight=0.0, **options).cpu()
    ceiling_seconds = time.perf_counter() - start

    start = time.perf_counter()
    demixed = pool_aware_attack(challenge.encryption, challenge.labels, pool=pool, start=bound,
                                          encodings_per_image=args.encodings_per_image, k=args.k, recluster=False,
                                          steps=BOUND_PUBLIC_MIX_STEPS,
                                          device=args.device)
    demixed_seconds = time.perf_counter() - start

    predicted = (weights[:, 0, None, None, None] * bound.recovered[members[:, 0]]
                 + weights[:, 1, None, None, None] * bound.recovered[members[:, 1]]
                 + (1 - weights.sum(1))[:, None, None, None] * options["public_mean"].cpu())
    sign_accuracy = float((predicted.sign() == signs.cpu()).float().mean())
    results = {"benchmark": "recovery_ceiling", "device": device_name(args.device), "images": args.images,
               "encodings_per_image": args.encodings_per_image, "k": args.k, "seed": args.seed}
    for name, recovered, seconds in (("key_aware", bound.recovered, bound_seconds),
                                     ("known_signs", ceiling, ceiling_seconds),
                                     ("pool_aware", demixed.recovered, demixed_seconds)):
        scores = challenge_scores(pick_decryption(recovered, members, weights), originals, members)
        results[name] = {"per_private_ssim": float(ssim(recovered, originals).mean()),
                         "max_ssim": scores.max_ssim, "mean_ssim": scores.mean_ssim, "seconds": seconds}
        print(f"{name:12s} per-private SSIM {results[name]['per_private_ssim']:.3f}  "
              f"Max_SSIM {scores.max_ssim:.3f}  Mean_SSIM {scores.mean_ssim:.3f}  {seconds:.1f}s")
    results["key_aware_sign_accuracy"] = sign_accuracy
    print(f"signs of the unmasked sums the key-aware recovery gets right: {sign_accuracy:.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
