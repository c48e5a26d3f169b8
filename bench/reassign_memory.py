"""Peak memory and time of the pool-aware attack's reassignment over a large pool.

The reassignment (``pool_aware.reassign_pairs``) pursues a public mix over the whole pool for every pair of
clusters each encoding's labels allow, so its buffers grow with the pairs pursued at once times the pool's
size. Its batches shrink to fit the working memory (``PoolGram``'s ``working_bytes``, the server's
``--audit-pool-memory-mib``); this bench measures what that holds them to.

The set is the challenge-shaped one (bundled images, default 100 × 50, k = 6, true signs of the unmasked
sums); the recoveries are the true private images plus noise, as an attack's are; the encodings are those of
the label-class pair with the most candidate pairs (the worst case: one encoding's pairs may not fit a batch).
The pool is N random images: memory and time do not depend on what its images show, only the pairs chosen do.
Peak resident memory is sampled every 5 ms, above what the process held before the stage began.
The last line of output is one JSON object.

Usage: python bench/reassign_memory.py [--pool-size 65536] [--encodings 30] [--working-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import torch
from _process import rss_mib

from instahide_ops.audits.reconstruction.instahide import pursuit
from instahide_ops.audits.reconstruction.instahide.clustering import label_classes
from instahide_ops.audits.reconstruction.instahide.pool_aware import reassign_pairs
from instahide_ops.audits.reconstruction.instahide.pursuit import PoolGram
from instahide_ops.transforms.instahide.challenge import build_challenge, bundled_private_images, challenge_public_pool


class PeakMemory:
    """Samples resident memory in a thread while its block runs; ``peak`` is the most above the start, in MiB."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak = every, 0.0
        self._stop = threading.Event()

    def _sample(self, start: float) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_mib(os.getpid()) - start)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, args=(rss_mib(os.getpid()),), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool-size", type=int, default=65536)
    parser.add_argument("--encodings", type=int, default=30, help="encodings of the label-class pair reassigned")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--encodings-per-image", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--working-mib", type=int, default=pursuit.WORKING_BYTES >> 20,
                        help="the pursuits' working memory (the server's --audit-pool-memory-mib)")
    args = parser.parse_args()

    privates, classes = bundled_private_images(args.images)
    view, truth = build_challenge(privates, classes, encodings_per_image=args.encodings_per_image,
                                  pool=challenge_public_pool(), seed=args.seed, with_sum_signs=True)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.from_numpy(truth.privates).reshape(args.images, -1)
    images = images + 0.3 * torch.randn(images.shape, generator=generator)
    signed = (torch.from_numpy(truth.sum_signs).float() * torch.from_numpy(view.encryption).abs()).flatten(1)
    labels, cluster_classes = torch.from_numpy(view.labels), torch.from_numpy(truth.private_labels)
    pair_classes = label_classes(labels)
    counts = torch.bincount(cluster_classes, minlength=labels.shape[1])
    worst = (counts[pair_classes[:, 0]] * counts[pair_classes[:, 1]]).argmax()
    rows = (pair_classes == pair_classes[worst]).all(dim=1).nonzero().flatten()[:args.encodings]
    pool = torch.rand(args.pool_size, signed.shape[1], generator=generator).mul_(2).sub_(1)
    gram = PoolGram(pool, working_bytes=args.working_mib << 20)

    began = time.perf_counter()
    with PeakMemory() as memory:
        reassign_pairs(signed[rows], labels[rows], cluster_classes, images, gram)
    seconds = time.perf_counter() - began
    pairs = int(counts[pair_classes[worst, 0]] * counts[pair_classes[worst, 1]])
    result = {"pool_size": args.pool_size, "encodings": len(rows), "candidate_pairs_per_encoding": pairs,
              "gram_stored": gram.stored, "working_bytes": gram.working_bytes, "gram_rows_computed": gram.rows_computed,
              "peak_gib": round(memory.peak / 1024, 3), "seconds": round(seconds, 1)}
    print(f"reassignment of {len(rows)} encodings ({pairs} candidate pairs each) over {args.pool_size} pool images: "
          f"peak {result['peak_gib']} GiB above the start, {result['seconds']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
