"""Time the report's statistics on the full ladder's worst case.

picked_gap for 26 experiments x 60 checkpoints on 10,000 test images (1,000 resamples each),
and 26 comparisons with the parent: one run per side (McNemar + paired bootstrap, 2,000
resamples) and three seed replicates per side (Welch). The data are synthetic: the time does
not depend on the values.

    python benchmarks/significance.py [--experiments 26] [--checkpoints 60] [--images 10000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from ladder.report import significance


def checkpoints(rng: np.random.Generator, k: int, n: int) -> list[np.ndarray]:
    """k checkpoints of one run: each one differs from the last on a few percent of images."""
    current = rng.random(n) < 0.5
    out = []
    for _ in range(k):
        current = current ^ (rng.random(n) < 0.03)
        out.append(current.copy())
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=26)
    parser.add_argument("--checkpoints", type=int, default=60)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--n-boot-gap", type=int, default=1000)
    parser.add_argument("--n-boot-delta", type=int, default=2000)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    runs = [checkpoints(rng, args.checkpoints, args.images) for _ in range(args.experiments)]

    start = time.perf_counter()
    for run in runs:
        significance.picked_gap(run, val_pick=len(run) // 2, n_boot=args.n_boot_gap)
    gap_seconds = time.perf_counter() - start

    start = time.perf_counter()
    for child, parent in zip(runs[1:] + runs[:1], runs, strict=True):
        significance.compare_to_parent([child[-1]], [parent[-1]], n_boot=args.n_boot_delta)
    pair_seconds = time.perf_counter() - start

    start = time.perf_counter()
    for child, parent in zip(runs[1:] + runs[:1], runs, strict=True):
        significance.compare_to_parent(child[-3:], parent[-3:])
    welch_seconds = time.perf_counter() - start

    results = {
        "picked_gap_seconds": gap_seconds,
        "pair_seconds": pair_seconds,
        "welch_seconds": welch_seconds,
    }
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"picked_gap: {args.experiments} experiments x {args.checkpoints} checkpoints x "
        f"{args.images} images, {args.n_boot_gap} resamples: {gap_seconds:.2f} s "
        f"({gap_seconds / args.experiments:.3f} s each)"
    )
    print(
        f"one run per side (McNemar + bootstrap, {args.n_boot_delta} resamples): "
        f"{args.experiments} comparisons in {pair_seconds:.3f} s"
    )
    welch = f"{args.experiments} comparisons in {welch_seconds:.3f} s"
    print(f"three replicates per side (Welch): {welch}")
    return results


if __name__ == "__main__":
    main()
