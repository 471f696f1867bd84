"""prompt_topology (ripser) against gudhi's Rips complex (the authors' library) on the same points.

Goal (foundation issue): <= 0.1x gudhi's time for a P=100, d=4096 prompt snapshot, same numbers.
Needs the benchmark-only extra: pip install -e ".[bench]"

    python benchmarks/bench_topology.py [--P 100] [--d 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tsloss_harness.topology import METRIC_KEYS, prompt_topology, summarize_diagrams


def gudhi_topology(points):
    import gudhi
    from scipy.spatial.distance import pdist, squareform

    rips = gudhi.RipsComplex(distance_matrix=squareform(pdist(points)))
    tree = rips.create_simplex_tree(max_dimension=2)  # triangles are needed to kill H1 bars
    tree.compute_persistence(homology_coeff_field=2, min_persistence=0)
    return summarize_diagrams([tree.persistence_intervals_in_dimension(k) for k in (0, 1)])


def median_time(fn, x, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--P", type=int, default=100)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # A trained-looking prompt: Gaussian init plus a few drifted clusters.
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.02, size=(args.P, args.d)) + rng.normal(scale=0.05, size=(5, args.d))[
        rng.integers(0, 5, size=args.P)
    ]
    prompt_topology(x)  # import and JIT warm-up outside the timing
    ours_t, ours = median_time(prompt_topology, x, args.repeats)
    gudhi_t, theirs = median_time(gudhi_topology, x, args.repeats)
    print(f"Rips persistence H0+H1, P={args.P}, d={args.d}")
    print(f"  ours (ripser): {ours_t * 1e3:9.2f} ms")
    print(f"  gudhi        : {gudhi_t * 1e3:9.2f} ms")
    print(f"  ratio ours/gudhi: {ours_t / gudhi_t:.3f}x  (goal <= 0.1x)")
    worst = max(abs(ours[k] - theirs[k]) for k in METRIC_KEYS)
    print(f"  same numbers: max |difference| over the metrics = {worst:.2e}")
    for k in METRIC_KEYS:
        print(f"    {k:<22} ours {ours[k]:<14.8g} gudhi {theirs[k]:.8g}")


if __name__ == "__main__":
    main()
