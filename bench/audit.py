"""Service overhead of a leakage audit: the library run vs the same audit through the AuditService.

In one run, on one machine, with the same bundled private images, seed and public pool:
  (a) ``audits.reconstruction.audit_deployment`` in-process;
  (b) the same audit through a real instahide-server process: upload (StartAudit), queue, run,
      watch to the end, read the report (GetAudit).
Reports both wall times, the overhead (b / a − 1; target ≤ 10 %) and checks that the two reports'
numbers agree. The last line of output is one JSON object.

Usage: python bench/audit.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np
import torch
from _process import start_instahide_server, stop_process
from instahide_client import InstaHideClient

from instahide_ops.audits.reconstruction import Deployment, audit_deployment
from instahide_ops.transforms.instahide.challenge import bundled_private_images, challenge_public_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 images × 20 encodings")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, per_image = (30, 20) if args.quick else (100, 50)
    privates, classes = bundled_private_images(images)
    pool = challenge_public_pool(device=args.device)

    start = time.perf_counter()
    library = audit_deployment(privates, classes, Deployment(encodings_per_image=per_image, seed=args.seed),
                               pool=pool, device=args.device)
    library_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        np.save(tmp / "pool.npy", pool.pixels.cpu().numpy())
        server, target = start_instahide_server(tmp, "--device", args.device, "--pool", str(tmp / "pool.npy"),
                                                "--state-dir", str(tmp / "state"), "--log-level", "WARNING")
        try:
            with InstaHideClient(target) as client:
                start = time.perf_counter()
                audit = client.start_audit(privates, classes, k=6, encodings_per_image=per_image, seed=args.seed)
                audit = client.wait_audit(audit.name)
                service_seconds = time.perf_counter() - start
        finally:
            stop_process(server)
    if audit.state != "succeeded":
        raise SystemExit(f"the audit ended {audit.state}: {audit.error}")
    served = audit.report.attacks()["ciphertext_only"]
    expected = library.attacks["ciphertext_only"].scores
    agree = all(abs(getattr(served, m) - getattr(expected, m)) < 1e-6
                for m in ("max_ssim", "mean_ssim", "min_l2", "mean_l2"))
    results = {
        "benchmark": "audit", "device": args.device, "cpu": platform.machine(), "cores": os.cpu_count(),
        "images": images, "encodings_per_image": per_image, "seed": args.seed,
        "library_seconds": library_seconds, "service_seconds": service_seconds,
        "service_overhead": service_seconds / library_seconds - 1, "reports_agree": agree,
        "max_ssim": served.max_ssim, "key_aware_max_ssim": audit.report.attacks()["key_aware"].max_ssim,
    }
    print(f"library {library_seconds:.1f} s, service {service_seconds:.1f} s, "
          f"overhead {results['service_overhead']:+.1%}, reports agree: {agree}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
