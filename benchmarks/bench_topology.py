"""prompt_topology (ripser) against gudhi's Rips complex (the authors' library) on the same points,
at the paper's prompt lengths and model widths: P in {20, 100} x d in {2048, 4096, 5120}.

Goal (foundation issue): <= 0.1x gudhi's time for a P=100, d=4096 prompt snapshot, same numbers.
Prints one row per (P, d): both times, the ratio, the largest metric difference.
Needs the benchmark-only extra: pip install -e ".[bench]"

    python benchmarks/bench_topology.py [--P 20,100] [--d 2048,4096,5120] [--repeats 5]
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


def trained_looking(p: int, d: int) -> np.ndarray:
    """Gaussian init plus a few drifted clusters, as a prompt looks after some training."""
    rng = np.random.default_rng(0)
    return rng.normal(scale=0.02, size=(p, d)) + rng.normal(scale=0.05, size=(5, d))[rng.integers(0, 5, size=p)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--P", default="20,100", help="prompt lengths, comma-separated")
    parser.add_argument("--d", default="2048,4096,5120", help="widths, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    prompt_topology(trained_looking(20, 64))  # import and JIT warm-up outside the timing
    print("Rips persistence H0+H1, one snapshot; goal <= 0.1x gudhi at P=100, d=4096")
    print(f"{'P':>4}{'d':>6}{'ours ms':>10}{'gudhi ms':>10}{'ours/gudhi':>12}{'max |diff|':>12}")
    for p in map(int, args.P.split(",")):
        for d in map(int, args.d.split(",")):
            x = trained_looking(p, d)
            ours_t, ours = median_time(prompt_topology, x, args.repeats)
            gudhi_t, theirs = median_time(gudhi_topology, x, args.repeats)
            worst = max(abs(ours[k] - theirs[k]) for k in METRIC_KEYS)
            print(
                f"{p:>4}{d:>6}{ours_t * 1e3:>10.2f}{gudhi_t * 1e3:>10.2f}{ours_t / gudhi_t:>11.3f}x{worst:>12.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
