"""ph_exact forward+backward at P=100, d=4096, fp32, against ts_loss; prints both and the ratio.

Also splits ph_exact's time into its parts (float64 distances, ripser with cocycles, edge recovery,
torch), since nearly all of it is the exact persistence computation on the CPU.

    python benchmarks/bench_ph_exact.py [--P 100] [--d 4096] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tsloss_harness.losses import ts_loss
from tsloss_harness.ph_exact import _h1_edges, _mst_edges, persistence_edges, ph_exact
from tsloss_harness.topology import _as_numpy, euclidean_distances


def median_time(fn, repeats, warmup=2):
    times = []
    for i in range(repeats + warmup):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_bwd(loss, x):
    def run():
        p = x.clone().requires_grad_()
        loss(p).backward()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--P", type=int, default=100)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    x = torch.randn(args.P, args.d, generator=torch.Generator().manual_seed(0)) * 0.02  # the paper's init

    exact = median_time(fwd_bwd(ph_exact, x), args.repeats)
    smooth = median_time(fwd_bwd(ts_loss, x), args.repeats * 3)

    from ripser import ripser

    points = _as_numpy(x)
    dist = euclidean_distances(points)
    thresh = float(dist.max(axis=1).min())
    d32 = dist.astype(np.float32)
    result = ripser(dist, distance_matrix=True, maxdim=1, thresh=thresh, coeff=2, do_cocycles=True)
    finite = np.isfinite(result["dgms"][1][:, 1])
    cocycles = [c for c, alive in zip(result["cocycles"][1], finite) if alive]
    deaths = result["dgms"][1][finite, 1].astype(np.float32)
    parts = {
        "distances (scipy pdist, float64)": lambda: euclidean_distances(points),
        "ripser, maxdim 1, cocycles": lambda: ripser(
            dist, distance_matrix=True, maxdim=1, thresh=thresh, coeff=2, do_cocycles=True
        ),
        "H0 edges (MST)": lambda: _mst_edges(d32, thresh),
        "H1 edges (from cocycles)": lambda: _h1_edges(cocycles, deaths, d32) if cocycles else None,
    }
    edges = persistence_edges(x)
    print(f"ph_exact vs ts_loss fwd+bwd, P={args.P}, d={args.d}, fp32, torch threads={torch.get_num_threads()}")
    print(f"  diagram: {len(edges.h0_death)} finite H0 bars, {len(edges.h1_birth)} finite H1 bars")
    print(f"  ph_exact : {exact * 1e3:8.2f} ms")
    print(f"  ts_loss  : {smooth * 1e3:8.2f} ms")
    print(f"  ratio ph_exact / ts_loss: {exact / smooth:.1f}x")
    for name, fn in parts.items():
        print(f"    {name:<34} {median_time(fn, args.repeats) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
