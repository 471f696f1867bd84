"""TSLoss forward+backward at P=100, d=4096, fp32 against the naive P x P x d formulation.

Goal (foundation issue): <= 5 ms per fwd+bwd on a CPU; the naive broadcast-difference version
(what a direct transcription of Eq. 1-5 builds) is the peer. Prints both times and the ratio.

    python benchmarks/bench_losses.py [--P 100] [--d 4096] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tsloss_harness.losses import ts_loss


def naive_ts_loss(points, tau=0.1, alpha=10.0):
    """Direct transcription: the difference tensor is [P, P, d]."""
    n = points.shape[0]
    diff = points[:, None, :] - points[None, :, :]
    dist = torch.sqrt((diff**2).sum(-1) + 1e-12)
    off = ~torch.eye(n, dtype=torch.bool)
    logits = torch.where(off, -dist / tau, torch.full_like(dist, -1e30))
    s = -tau * torch.logsumexp(logits, dim=1)
    l_h0 = ((s - s.mean()) ** 2).mean()
    pd = dist[off]
    delta = (torch.softmax(-alpha * pd, 0) * pd).sum()
    zeta = (torch.softmax(alpha * pd, 0) * pd).sum()
    l_h1 = (torch.relu(delta - pd) ** 2 + torch.relu(pd - zeta) ** 2).mean()
    return l_h0 + l_h1


def time_fwd_bwd(fn, x, repeats):
    times = []
    for i in range(repeats + 3):
        p = x.clone().requires_grad_()
        t0 = time.perf_counter()
        fn(p).backward()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--P", type=int, default=100)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    x = torch.randn(args.P, args.d) * 0.02
    ours = time_fwd_bwd(ts_loss, x, args.repeats)
    naive = time_fwd_bwd(naive_ts_loss, x, max(3, args.repeats // 10))
    agree = abs(ts_loss(x).item() - naive_ts_loss(x).item()) / max(abs(naive_ts_loss(x).item()), 1e-12)
    print(f"TSLoss fwd+bwd, P={args.P}, d={args.d}, fp32, torch threads={torch.get_num_threads()}")
    print(f"  ours  : {ours * 1e3:8.2f} ms  (goal <= 5 ms)")
    print(f"  naive : {naive * 1e3:8.2f} ms  (P x P x d difference tensor)")
    print(f"  speed-up vs naive: {naive / ours:.1f}x   relative difference of the values: {agree:.1e}")


if __name__ == "__main__":
    main()
