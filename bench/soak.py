"""Memory soak (issue 7): a long micro pretraining run with its resident memory sampled, checking
that RSS stops growing once warm-up is over (no leak across steps, log lines, checkpoint writes
and pruning, EMA updates, epochs).

    python bench/soak.py                                   # 20,000 steps (~15 min on 2 vCPUs)
    python bench/soak.py --steps 300                       # smoke: checks the script itself
    python bench/soak.py --json docs/soak.json --plot docs/figures/soak-rss.png

`ldae pretrain` runs as a subprocess (so the RSS is the training process's alone) with the `demo`
preset's data (scikit-learn's bundled digits, 1,437 training images at 16 px, patch 4, PCA d = 4,
the final l-DAE objective), a small model and batch, 1 torch thread, EMA on (optim.ema), a
metrics line every 100 steps, a checkpoint every 1,000 (keeping 2: each write also prunes one),
and optim.epochs set so that the schedule is exactly --steps steps (warmup: the first 5 %).

Every --interval seconds the child's VmRSS (and VmHWM) is read from /proc/PID/status; each sample
gets a step by interpolating the (time first seen, step) pairs of metrics.jsonl's lines. Samples
before --warmup-steps (default: the first 10 % of the steps; it includes start-up and the
tokenizer fit) are warm-up, and samples taken once the last step's line is written (the final
checkpoint, train_summary.json, the training-curves figure: matplotlib's import) are not part of
the loop and are left out. Over the rest:

    growth = median(RSS of the last 10 % of samples) / median(RSS of the first 10 %) - 1
    slope  = least-squares RSS against step, in MB per 1,000 steps

PASS when growth < --max-growth (5 %). Exit status 0 on PASS, 1 on FAIL, 2 when the run failed.
The child's own peak RSS over its whole life comes from wait4's ru_maxrss.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_vs_timm import hardware, hardware_line  # noqa: E402

MB = 1024 * 1024


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes ({} once it has exited)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val, unit = line.split()
                    assert unit == "kB"
                    out[key[:-1]] = int(val) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


class MetricsTail:
    """New ``step`` values of a growing metrics.jsonl, read incrementally (only whole lines)."""

    def __init__(self, path: Path):
        self.path, self.pos, self.buf = path, 0, ""

    def new_steps(self) -> list[int]:
        if not self.path.is_file():
            return []
        with open(self.path) as f:
            f.seek(self.pos)
            chunk = f.read()
            self.pos = f.tell()
        self.buf += chunk
        *lines, self.buf = self.buf.split("\n")
        steps = []
        for ln in lines:
            if ln.strip():
                rec = json.loads(ln)
                if "step" in rec:
                    steps.append(int(rec["step"]))
        return steps


def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def analyse(samples: list[dict], seen: list[tuple[float, int]], steps: int, warmup_steps: int,
            frac: float = 0.1) -> dict:
    """Steps for every sample, the loop's post-warm-up samples, growth and slope."""
    t_seen = np.array([t for t, _ in seen], dtype=np.float64)
    s_seen = np.array([s for _, s in seen], dtype=np.float64)
    t_end = next((t for t, s in seen if s >= steps), float("inf"))  # the last step's line appeared
    if len(seen) >= 2 and s_seen[1] > s_seen[0]:  # step 0: extrapolated back from the first lines
        t0 = t_seen[0] - (t_seen[1] - t_seen[0]) * s_seen[0] / (s_seen[1] - s_seen[0])
    else:
        t0 = 0.0
    t0 = min(max(t0, 0.0), t_seen[0]) if len(seen) else 0.0
    for smp in samples:
        smp["step"] = (float(np.interp(smp["t"], np.r_[t0, t_seen], np.r_[0.0, s_seen]))
                       if len(seen) else 0.0)
        smp["phase"] = ("after" if smp["t"] >= t_end else
                        "warmup" if smp["step"] < warmup_steps else "loop")
    loop = [s for s in samples if s["phase"] == "loop"]
    rec: dict = {"loop_samples": len(loop)}
    if len(loop) < 4:
        rec["error"] = (f"only {len(loop)} RSS samples after warm-up; lower --interval or raise "
                        "--steps")
        return rec
    k = max(1, int(round(frac * len(loop))))
    base = median([s["rss"] for s in loop[:k]])
    end = median([s["rss"] for s in loop[-k:]])
    x = np.array([s["step"] for s in loop])
    y = np.array([s["rss"] for s in loop], dtype=np.float64) / MB
    slope = float(np.polyfit(x, y, 1)[0]) * 1000 if np.ptp(x) > 0 else 0.0
    rec.update(window_samples=k, rss_warmup_end_mb=round(base / MB, 2), rss_end_mb=round(end / MB, 2),
               growth_pct=round(100 * (end - base) / base, 3),
               slope_mb_per_1k_steps=round(slope, 4),
               loop_rss_min_mb=round(float(y.min()), 2), loop_rss_max_mb=round(float(y.max()), 2),
               loop_steps=[round(float(x[0]), 1), round(float(x[-1]), 1)])
    return rec


def plot(path: str, samples: list[dict], rec: dict) -> None:
    from ldae.plots import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8), constrained_layout=True)
    colours = {"warmup": "tab:gray", "loop": "tab:blue", "after": "tab:red"}
    labels = {"warmup": "warm-up", "loop": "loop (measured)", "after": "after the last step"}
    for phase in ("warmup", "loop", "after"):
        pts = [(s["step"], s["rss"] / MB) for s in samples if s["phase"] == phase]
        if pts:
            ax.plot(*zip(*pts), ".", ms=2.5, color=colours[phase], label=labels[phase])
    ax.axvspan(0, rec["warmup_steps"], color="0.85", alpha=0.6, lw=0)
    if "rss_warmup_end_mb" in rec:
        base = rec["rss_warmup_end_mb"]
        lim = rec["max_growth_pct"]
        ax.axhspan(base, base * (1 + lim / 100), color="tab:green", alpha=0.12, lw=0,
                   label=f"+{lim:g} % band over the post-warm-up median")
        ax.axhline(base, color="tab:green", lw=0.8)
        ax.axhline(rec["rss_end_mb"], color="tab:blue", lw=0.8, ls="--",
                   label=f"end median ({rec['growth_pct']:+.2f} %)")
        lo = min(s["rss"] / MB for s in samples if s["phase"] != "warmup")
        hi = max(s["rss"] / MB for s in samples)
        ax.set_ylim(min(lo, base) * 0.97, max(hi, base * (1 + lim / 100)) * 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("RSS (MB)")
    ax.set_xlim(0, rec["steps"] * 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", markerscale=3)
    verdict = "PASS" if rec.get("pass") else "FAIL"
    ax.set_title(f"ldae pretrain soak: {rec['steps']:,} steps, model {rec['model']}, batch "
                 f"{rec['batch']}, {rec['image_size']} px; growth {rec.get('growth_pct', float('nan')):+.2f} %, "
                 f"{rec.get('slope_mb_per_1k_steps', float('nan')):+.3f} MB / 1k steps: {verdict}",
                 fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: 10 %% of --steps")
    ap.add_argument("--max-growth", type=float, default=5.0, help="PASS threshold, %% (default 5)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--model", default="micro")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--keep-ckpts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="run dir (default: a temporary one, removed after)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="more `ldae pretrain` overrides")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    hw = hardware(torch.device("cpu"))
    print(hardware_line(hw), flush=True)

    from ldae.config import load_config
    from ldae.data import build_dataset
    from ldae.engine.pretrain import make_plan

    base = [f"data.image_size={a.image_size}", f"model.name={a.model}",
            f"model.patch_size={a.patch_size}", f"optim.batch_size={a.batch}",
            f"optim.ema={a.ema}", "train.device=cpu", f"train.threads={a.threads}",
            f"train.log_every={a.log_every}", f"train.ckpt_every={a.ckpt_every}",
            f"train.keep_ckpts={a.keep_ckpts}", *a.overrides]
    cfg = load_config(a.preset, base + ["optim.epochs=1", "optim.warmup_epochs=0"])
    n_images = len(build_dataset(cfg, cfg.data.train_split))
    spe = n_images // a.batch
    epochs = a.steps / spe
    overrides = base + [f"optim.epochs={epochs!r}", f"optim.warmup_epochs={0.05 * epochs!r}"]
    plan = make_plan(load_config(a.preset, overrides), n_images, 1)
    if plan.total_steps != a.steps:
        raise SystemExit(f"the schedule has {plan.total_steps} steps, not {a.steps}")
    warmup_steps = a.warmup_steps if a.warmup_steps is not None else round(0.1 * a.steps)

    tmp = None
    if a.out is None:
        tmp = tempfile.mkdtemp(prefix="ldae-soak-")
        out = Path(tmp) / "run"
    else:
        out = Path(a.out)
    cmd = [sys.executable, "-m", "ldae.cli", "pretrain", "-c", a.preset, "--out", str(out),
           "--force", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    print(f"{n_images} training images, batch {a.batch}: {spe} steps per epoch, "
          f"optim.epochs={epochs:.6g} -> {plan.total_steps} steps; warm-up {warmup_steps} steps",
          flush=True)
    print("$ " + " ".join(cmd), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    child_log = out.parent / f"{out.name}.child.log"
    samples: list[dict] = []
    seen: list[tuple[float, int]] = []
    tail = MetricsTail(out / "metrics.jsonl")
    last_print = 0.0
    with open(child_log, "w") as logf:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        status = ru = None
        while True:
            pid, st, usage = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                status, ru = st, usage
                break
            t = time.perf_counter() - t0
            for s in tail.new_steps():
                seen.append((t, s))
            ps = proc_status(p.pid)
            if ps.get("VmRSS"):  # none yet between fork and exec
                samples.append({"t": t, "rss": ps["VmRSS"], "hwm": ps.get("VmHWM", 0)})
            if t - last_print >= 60:
                last_print = t
                step = seen[-1][1] if seen else 0
                print(f"  {t:7.0f} s  step {step:6d}  RSS {ps.get('VmRSS', 0) / MB:7.1f} MB", flush=True)
            time.sleep(a.interval)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    t = time.perf_counter() - t0
    for s in tail.new_steps():
        seen.append((t, s))
    if p.returncode != 0:
        print(f"ldae pretrain failed with status {p.returncode}; its output:", file=sys.stderr)
        print(child_log.read_text()[-3000:], file=sys.stderr)
        return 2
    summary = json.loads((out / "train_summary.json").read_text())
    ckpts = sorted(x.name for x in (out / "checkpoints").glob("*.pt")) if (out / "checkpoints").is_dir() else []

    rec = {"hardware": hw, "command": " ".join(cmd), "preset": a.preset, "model": a.model,
           "image_size": a.image_size, "patch_size": a.patch_size, "batch": a.batch,
           "train_images": n_images, "steps": a.steps, "epochs": round(epochs, 4), "ema": a.ema,
           "threads": a.threads, "log_every": a.log_every, "ckpt_every": a.ckpt_every,
           "keep_ckpts": a.keep_ckpts, "checkpoints_left": ckpts, "interval_s": a.interval,
           "warmup_steps": warmup_steps, "max_growth_pct": a.max_growth,
           "wall_s": round(wall, 1), "train_wall_s": summary["wall_seconds"],
           "steps_per_s": round(a.steps / summary["wall_seconds"], 2),
           "final_loss": summary["final_loss"], "samples": len(samples),
           "rss_first_mb": round(samples[0]["rss"] / MB, 2) if samples else None,
           "vmhwm_last_mb": round(samples[-1]["hwm"] / MB, 2) if samples else None,
           "maxrss_mb": round(ru.ru_maxrss * 1024 / MB, 2)}
    rec.update(analyse(samples, seen, a.steps, warmup_steps))
    rec["pass"] = "growth_pct" in rec and rec["growth_pct"] < a.max_growth
    rec["metrics_seen"] = [[round(t, 2), s] for t, s in seen]  # [time first seen (s), step]
    rec["rss_samples"] = [[round(s["step"], 1), round(s["t"], 2), round(s["rss"] / MB, 2), s["phase"]]
                          for s in samples]
    if "error" in rec:
        print(rec["error"], file=sys.stderr)

    print(f"steps {a.steps} in {summary['wall_seconds']:.1f} s of training ({rec['wall_s']:.1f} s "
          f"with start-up): {rec['steps_per_s']:.2f} steps/s, final loss {summary['final_loss']:.4f}")
    print(f"RSS: {len(samples)} samples every {a.interval:g} s, {rec['loop_samples']} after "
          f"warm-up ({warmup_steps} steps); first {rec['rss_first_mb']} MB")
    if "growth_pct" in rec:
        print(f"RSS at warm-up end (median of the first {rec['window_samples']}) "
              f"{rec['rss_warmup_end_mb']:.1f} MB, at the end (median of the last "
              f"{rec['window_samples']}) {rec['rss_end_mb']:.1f} MB; loop min/max "
              f"{rec['loop_rss_min_mb']:.1f}/{rec['loop_rss_max_mb']:.1f} MB")
        print(f"growth {rec['growth_pct']:+.3f} % (limit {a.max_growth:g} %), slope "
              f"{rec['slope_mb_per_1k_steps']:+.4f} MB per 1,000 steps")
    print(f"peak RSS (VmHWM) {rec['vmhwm_last_mb']} MB at the last sample, ru_maxrss "
          f"{rec['maxrss_mb']} MB; checkpoints left: {', '.join(ckpts)}")
    print("PASS" if rec["pass"] else "FAIL", flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        head = json.dumps({k: v for k, v in rec.items() if k not in ("rss_samples", "metrics_seen")},
                          indent=2)
        head = head[:-2] + ',\n  "metrics_seen": ' + json.dumps(rec["metrics_seen"]) + "\n}"
        rows = ",\n    ".join(json.dumps(r) for r in rec["rss_samples"])
        Path(a.json).write_text(head[:-2] + ',\n  "rss_samples_columns": ["step", "t_s", "rss_mb", '
                                '"phase"],\n  "rss_samples": [\n    ' + rows + "\n  ]\n}\n")
    if a.plot:
        plot(a.plot, samples, rec)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if rec["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
