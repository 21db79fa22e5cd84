"""Training-step throughput at 1 vs 2 torch CPU threads (checks ldae's thread default, train.threads).

The claim under test (ldae.dist.pick_threads, anchors-performance.md section 7): on this
project's 2-vCPU machines the two vCPUs share one core's FMA units, so a second torch thread
does not speed a small ViT's training step up (it was measured ~3x slower). This script times
the same step in separate subprocesses, one per thread count, each calling
``torch.set_num_threads(n)`` (and started with OMP_NUM_THREADS=MKL_NUM_THREADS=n), and runs them
alternately (1, 2, then 2, 1, ...) for ``--repeats`` rounds; each number is the median over rounds.

The step (``--step``): ``ldae`` = the full l-DAE training step (Denoiser.loss with PCA
encode/decode, noise and Eq. 4, backward, AdamW), as ``ldae pretrain`` runs it; ``backbone`` =
the pure DiT step (tokens in, MSE on tokens). See bench/train_vs_timm.py for both.

FLOPs per image (SPEC section 8): F_train = 6 N L + 12 depth W L^2; GFLOP/s = F_train x img/s / 1e9.
Anything else running on the machine (another training job, tests) competes for the same core
and makes 2 threads look worse; the load average is printed with the result.

    .venv/bin/python bench/cpu_threads.py                 # mini, 32 px, patch 4, batch 64
    .venv/bin/python bench/cpu_threads.py --threads-list 1 2 --step backbone --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args) -> None:
    """One subprocess: set the thread count, build the step, warm up, time, print one JSON line."""
    import torch

    sys.path.insert(0, HERE)
    from train_vs_timm import make_variants

    torch.set_num_threads(args.threads)
    key = "ldae" if args.step == "ldae" else "ours"
    v = make_variants(args, torch.device("cpu"), (key,))[key]
    v.run(args.warmup, torch.device("cpu")) if args.warmup else None
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        v.step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                      "step_s": times, "flops_per_image": v.flops}))


def run_worker(args, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(n),
           "--model", args.model, "--image-size", str(args.image_size),
           "--patch-size", str(args.patch_size), "--batch", str(args.batch),
           "--latent-dim", str(args.latent_dim), "--adaln", args.adaln, "--step", args.step,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"worker with {n} thread(s) failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, HERE)
    from train_vs_timm import shape_parser

    ap = shape_parser(__doc__, batch=64)
    ap.add_argument("--step", choices=["ldae", "backbone"], default="ldae")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per subprocess")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (one subprocess per thread count each)")
    ap.add_argument("--threads-list", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", default="", help="write the results to this path")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    sys.path.insert(0, HERE)
    from train_vs_timm import cpu_model, loadavg

    load0 = loadavg()
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"load average {load0}")
    print(f"step: {args.step} ({args.model}, {args.image_size} px / patch {args.patch_size}, batch "
          f"{args.batch}, fp32); per subprocess {args.warmup} warmup + {args.steps} timed steps; "
          f"{args.repeats} rounds alternating {args.threads_list}")
    per: dict[int, list[float]] = {n: [] for n in args.threads_list}  # median step s per subprocess
    flops = 0.0
    for r in range(args.repeats):
        order = args.threads_list if r % 2 == 0 else args.threads_list[::-1]
        for n in order:
            out = run_worker(args, n)
            per[n].append(statistics.median(out["step_s"]))
            flops = out["flops_per_image"]
            print(f"  round {r + 1}: {n} thread(s): {args.batch / per[n][-1]:7.1f} img/s")

    print(f"\n{'threads':>7s} {'step ms':>9s} {'img/s':>8s} {'GFLOP/s':>8s}   rounds img/s")
    res = {}
    for n, v in per.items():
        med = statistics.median(v)
        ips = args.batch / med
        res[n] = {"step_s_median": med, "step_s_rounds": v, "img_per_s": ips,
                  "gflop_per_s": flops * ips / 1e9}
        rates = [args.batch / s for s in v]
        print(f"{n:7d} {1e3 * med:9.1f} {ips:8.1f} {flops * ips / 1e9:8.1f}   "
              f"{min(rates):.1f}-{max(rates):.1f}")
    load1 = loadavg()
    verdict = ""
    if 1 in res and 2 in res:
        sp = res[2]["img_per_s"] / res[1]["img_per_s"]
        verdict = ("2 threads faster: the all-cores default (train.threads=0) fits this machine" if sp > 1.05 else
                   "1 thread is as fast or faster: use train.threads=1 on this machine")
        print(f"\n2 threads / 1 thread throughput: x{sp:.2f} -> {verdict}")
        res["speedup_2_over_1"] = sp
    print(f"load average at start {load0}, at end {load1} (other work on the machine skews these)")
    if args.json:
        rec = {"bench": "cpu_threads", "cpu": cpu_model(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "args": vars(args), "flops_per_image": flops,
               "results": {str(k): v for k, v in res.items()}, "verdict": verdict,
               "loadavg_start": load0, "loadavg_end": load1}
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
