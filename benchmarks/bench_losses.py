"""TSLoss forward+backward against the naive P x P x d formulation, fp32, at the paper's prompt
lengths and model widths: P in {20, 100} x d in {2048 (Gemma-2B), 4096 (7B models), 5120 (13-14B)}.

Goal (foundation issue): <= 5 ms per fwd+bwd at P=100, d=4096 on a CPU; the naive broadcast-difference
version (what a direct transcription of Eq. 1-5 builds) is the peer. Prints one row per (P, d): both
times and the ratio.

    python benchmarks/bench_losses.py [--P 20,100] [--d 2048,4096,5120] [--repeats 30]
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
    parser.add_argument("--P", default="20,100", help="prompt lengths, comma-separated")
    parser.add_argument("--d", default="2048,4096,5120", help="widths, comma-separated")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"TSLoss fwd+bwd, fp32, torch threads={torch.get_num_threads()}; goal <= 5 ms at P=100, d=4096")
    print(f"{'P':>4}{'d':>6}{'ours ms':>10}{'naive ms':>10}{'naive/ours':>12}{'rel. diff':>11}")
    for p in map(int, args.P.split(",")):
        for d in map(int, args.d.split(",")):
            x = torch.randn(p, d, generator=torch.Generator().manual_seed(0)) * 0.02
            ours = time_fwd_bwd(ts_loss, x, args.repeats)
            naive = time_fwd_bwd(naive_ts_loss, x, max(3, args.repeats // 10))
            want = naive_ts_loss(x).item()
            agree = abs(ts_loss(x).item() - want) / max(abs(want), 1e-12)
            print(
                f"{p:>4}{d:>6}{ours * 1e3:>10.2f}{naive * 1e3:>10.2f}{naive / ours:>11.1f}x{agree:>11.1e}", flush=True
            )


if __name__ == "__main__":
    main()
