"""Throughput of the final l-DAE: training steps and frozen-encoder features (img/s, MFU, memory).

What is timed:

  --mode train     (default) ``ldae.engine.pretrain.Trainer.train_step``, the pretraining loop's
                   own step: uint8 batch -> BatchAugment (to float, horizontal flip) ->
                   ``Denoiser.loss`` (patchify, PCA encode to d, t and noise, PCA decode, the DiT
                   under bf16 autocast on CUDA, Eq. 4 loss in fp32) -> backward -> AdamW step
                   (fused on CUDA) -> zero_grad. ``--compile`` compiles the backbone as
                   ``model.compile=true`` does, with the trainer's eager fallback if it fails.
  --mode features  ``Denoiser.features(x, t, [k])``: eval mode, no grad, bf16 autocast on CUDA,
                   clean input, the first k blocks only (k = the encoder split unless --blocks).
                   ``--compile`` compiles that whole call.

The model is the final l-DAE (sigma_linear x image x inv1p_sigma2, image in / image out) at DiT's
random init, and the PCA tokenizer is unfitted (identity basis, zero mean): speed depends on the
shapes alone, and those are a fitted tokenizer's. The input batch is on the device before timing
(the data loader is not timed). After --warmup untimed steps (the first one compiles), one window
of --steps steps is timed between two synchronisations and nothing syncs inside it on purpose
(the step's own host syncs, counted on CUDA with torch's sync debug mode, stay in).

FLOPs (SPEC section 8): training F = 6 N L + 12 depth W L^2 per image (``DiT.train_flops_per_image``;
N = weights applied to every token), features 2 N_k L + 4 k W L^2 over the first k blocks.
MFU = F x img/s / the device's dense bf16 peak, read from its name: H100 SXM / H200 / H800 989,
H100 PCIe 756, H100 NVL 835, A100 312, L4 121 TFLOP/s; other GPUs give no MFU unless
--peak-tflops; none on CPU.

    python bench/throughput.py --model halfL --image-size 256 --patch 16 --batch 256
    python bench/throughput.py --mode features --model halfL --image-size 256 --patch 16 --batch 1024
    python bench/throughput.py --sweep --json out.json      # the preset list, one process each
    python bench/throughput.py --model test --image-size 16 --patch 4 --batch 8 --steps 2 \\
        --warmup 1 --device cpu                             # smoke check on CPU
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import ldae  # noqa: F401
except ImportError:  # a checkout without `pip install -e .` (the GPU machine): use its src/
    sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
from train_vs_timm import hardware, hardware_line, loadavg  # noqa: E402

# Dense bf16 tensor-core peaks in TFLOP/s (anchors-performance.md section 1); first match wins.
PEAKS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
         ("H800", 989.0), ("A100", 312.0), ("L4", 121.0)]

# --sweep: (mode, model, image size, patch, batch, compile). Most informative first: a sweep cut
# short by its time budget loses the tail. The eager halfL line needs no compile, so a number
# for the paper's model comes back even if compiling is slow or fails.
SWEEP_CUDA = [
    ("train", "halfL", 256, 16, 256, False),     # paper's ViT-1/2L = DiT-L, eager (no compile wait)
    ("train", "halfL", 256, 16, 256, True),      # same, compiled (imagenet-halfL preset)
    ("features", "halfL", 256, 16, 1024, False),  # the probe's 12 x 1024 encoder, eager as
                                                  # `ldae linprobe` runs it
    ("train", "B", 256, 16, 256, True),          # imagenet-vitb preset shape
    ("train", "small", 32, 4, 512, True),        # cifar10-gpu preset
    ("train", "B", 256, 16, 64, True),           # small batch: where launch overhead shows
]
SWEEP_CPU = [  # a smoke check of the sweep machinery only
    ("train", "test", 16, 4, 8, False),
    ("features", "test", 16, 4, 8, False),
    ("train", "micro", 16, 4, 16, False),
]


def peak_tflops(device: torch.device, override: float = 0.0) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s or None, where it comes from)."""
    if override > 0:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "CPU: no MFU"
    p = torch.cuda.get_device_properties(device)
    name = p.name
    if "H100" in name and "PCIe" not in name and "NVL" not in name and p.multi_processor_count < 132:
        return 756.0, f"{name} with {p.multi_processor_count} SMs: the PCIe part's peak"
    for key, tf in PEAKS:
        if key in name:
            return tf, f"{name}: {key} dense bf16 datasheet peak"
    return None, f"{name}: peak unknown, MFU omitted (give --peak-tflops)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def auto_dim(patch: int) -> int:
    """The presets' PCA latent dim: 32 at patch 16 (imagenet-*), 4 at patch 4 (cifar10-*, demo)."""
    return 32 if patch >= 16 else 4


# ------------------------------------------------------------------------------ one config
def build(args, device_type: str):
    """(cfg, runtime, denoiser) as ``ldae pretrain`` builds them, at random init."""
    from ldae import dist
    from ldae.config import load_config
    from ldae.diffusion.objective import build_denoiser
    from ldae.tokenizers import PCATokenizer

    cfg = load_config(None, [f"model.name={args.model}", f"model.patch_size={args.patch}",
                             f"data.image_size={args.image_size}", f"tokenizer.dim={args.dim}",
                             f"optim.batch_size={args.batch}", f"model.compile={str(args.compile).lower()}",
                             f"train.device={device_type}", f"train.threads={args.threads}",
                             f"linprobe.t={args.t}", f"linprobe.blocks={args.blocks}"])
    rt = dist.setup(device_type, args.threads)  # TF32 on CUDA, the thread count on CPU
    tok = PCATokenizer(args.patch, args.dim)  # unfitted: identity basis, zero mean
    torch.manual_seed(0)
    den = build_denoiser(cfg, tok).to(rt.device)
    return cfg, rt, den


def make_train_step(cfg, rt, den, args):
    """The trainer's step on a fixed device-resident uint8 batch; returns (step, trainer, flops)."""
    from ldae.data import BatchAugment
    from ldae.engine.pretrain import Plan, Trainer
    from ldae.optim import scaled_lr

    den.train()
    plan = Plan(steps_per_epoch=10 ** 6, total_steps=10 ** 9, warmup_steps=0,
                lr=scaled_lr(cfg.optim.blr, args.batch), micro_batch=args.batch)
    trainer = Trainer(cfg, den, plan, rt)
    augment = BatchAugment(cfg.data.crop, cfg.data.rrc_scale, cfg.data.hflip)
    g = torch.Generator().manual_seed(0)
    S = args.image_size
    xb = torch.randint(0, 256, (args.batch, 3, S, S), generator=g, dtype=torch.uint8).to(rt.device)
    yb = torch.zeros(args.batch, dtype=torch.long)
    box: dict = {}

    def step() -> None:
        box["loss"] = trainer.train_step(xb, yb, augment)

    step.box = box  # type: ignore[attr-defined]
    return step, trainer, den.backbone.train_flops_per_image()


def make_feature_step(cfg, rt, den, args):
    den.eval().requires_grad_(False)
    bb = den.backbone
    k = args.blocks or bb.encoder_blocks
    g = torch.Generator().manual_seed(0)
    S = args.image_size
    x = (torch.rand(args.batch, 3, S, S, generator=g) * 2 - 1).to(rt.device)

    def feats(inp):
        return den.features(inp, args.t, [k], autocast=rt.autocast())

    box = {"fn": torch.compile(feats) if args.compile else feats, "k": k}

    def step() -> None:
        with torch.no_grad():
            box["out"] = box["fn"](x)

    step.box = box  # type: ignore[attr-defined]
    step.eager = feats  # type: ignore[attr-defined]
    return step, None, bb.encoder_flops_per_image(k)


def count_host_syncs(step, device: torch.device) -> int | None:
    """Host-device synchronisations in one step (torch.cuda sync debug mode); None on CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def run_one(args, device: torch.device) -> dict:
    """Build, warm up, time one window; a record with status ok / oom / error."""
    rec = {"mode": args.mode, "model": args.model, "image_size": args.image_size, "patch": args.patch,
           "tokens": (args.image_size // args.patch) ** 2, "dim": args.dim, "batch": args.batch,
           "compile_requested": bool(args.compile), "device": str(device), "status": "ok"}
    cuda = device.type == "cuda"
    try:
        cfg, rt, den = build(args, device.type)
        bb = den.backbone
        rec.update(width=bb.width, depth=bb.depth, params=bb.num_params(),
                   params_per_token=bb.num_params(per_token=True))
        maker = make_train_step if args.mode == "train" else make_feature_step
        step, trainer, flops = maker(cfg, rt, den, args)
        if args.mode == "features":
            rec["blocks"] = step.box["k"]
        rec["flops_per_image"] = flops
        compiled = bool(args.compile)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        try:
            step()
            sync(device)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # compile failed on this platform: fall back to eager, as run() does
            if not compiled:
                raise
            rec["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"  torch.compile failed ({rec['compile_error']}); continuing in eager mode",
                  file=sys.stderr, flush=True)
            compiled = False
            if trainer is not None:
                trainer.net, trainer.compiled = den.backbone, False
                trainer.opt.zero_grad(set_to_none=True)
            else:
                step.box["fn"] = step.eager
            t0 = time.perf_counter()
            step()
            sync(device)
        rec["compiled"] = compiled
        rec["first_step_s"] = time.perf_counter() - t0  # includes compiling
        t1 = time.perf_counter()
        for _ in range(max(0, args.warmup - 1)):
            step()
        sync(device)
        est = (time.perf_counter() - t1) / (args.warmup - 1) if args.warmup > 1 else rec["first_step_s"]
        steps = args.steps or max(5, min(200, math.ceil(args.window_s / max(est, 1e-6))))
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        dt = time.perf_counter() - t0
        rec["steps"] = steps
        rec["warmup"] = args.warmup
        rec["step_ms"] = 1e3 * dt / steps
        rec["img_per_s"] = args.batch * steps / dt
        rec["tflop_per_s"] = flops * rec["img_per_s"] / 1e12
        peak, _ = peak_tflops(device, args.peak_tflops)
        rec["peak_tflops"] = peak
        rec["mfu"] = rec["tflop_per_s"] / peak if peak else None
        rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None
        if args.mode == "train":
            loss = float(step.box["loss"])
            rec["loss"] = loss
            if not math.isfinite(loss):
                rec["status"] = "nonfinite-loss"
        rec["host_syncs_per_step"] = count_host_syncs(step, device)
    except torch.OutOfMemoryError as e:
        rec["status"] = "oom"
        rec["error"] = str(e).splitlines()[0][:300]
    except Exception as e:  # noqa: BLE001 - a benchmark line must come out whatever happened
        rec["status"] = "error"
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return rec


# ---------------------------------------------------------------------------------- table
HEADER = (f"{'mode':8s} {'model':6s} {'px/p':>7s} {'L':>4s} {'batch':>5s} {'d':>3s} {'comp':>4s} "
          f"{'1st s':>6s} {'steps':>5s} {'step ms':>8s} {'img/s':>9s} {'GFLOP/img':>9s} "
          f"{'TFLOP/s':>8s} {'MFU':>6s} {'mem GiB':>7s} {'syncs':>5s}  status")


def row(r: dict) -> str:
    def f(key, fmt, width):
        v = r.get(key)
        return f"{v:{width}{fmt}}" if isinstance(v, (int, float)) and v is not None else f"{'-':>{width}s}"

    comp = "yes" if r.get("compiled") else ("FAIL" if r.get("compile_error") else "no")
    mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") else f"{'-':>6s}"
    gf = r.get("flops_per_image")
    status = r.get("status", "?")
    if r.get("error"):
        status += f" ({r['error'][:90]})"
    if r.get("compile_error"):
        status += f" (compile failed, eager numbers: {r['compile_error'][:70]})"
    return (f"{r['mode']:8s} {r['model']:6s} {str(r['image_size']) + '/' + str(r['patch']):>7s} "
            f"{r['tokens']:4d} {r['batch']:5d} {r['dim']:3d} {comp:>4s} {f('first_step_s', '.1f', 6)} "
            f"{f('steps', 'd', 5)} {f('step_ms', '.1f', 8)} {f('img_per_s', '.1f', 9)} "
            f"{(f'{gf / 1e9:9.3f}' if gf else f'{chr(45):>9s}')} {f('tflop_per_s', '.2f', 8)} {mfu} "
            f"{f('peak_mem_gib', '.1f', 7)} {f('host_syncs_per_step', 'd', 5)}  {status}")


def write_json(path: str, hw: dict, peak, peak_note: str, records: list[dict], args) -> None:
    if not path:
        return
    rec = {"bench": "throughput", "hardware": hw, "peak_tflops": peak, "peak_note": peak_note,
           "args": {k: v for k, v in vars(args).items()}, "results": records, "loadavg_end": loadavg()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(rec, fh, indent=2)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- sweep
def sweep(args, device: torch.device, hw: dict, peak, peak_note: str) -> int:
    """Each preset in its own process (an OOM, a crash or a hung compile stays there), with a
    per-config timeout and an overall budget; results are printed and saved as they come."""
    presets = SWEEP_CUDA if device.type == "cuda" else SWEEP_CPU
    records: list[dict] = []
    start = time.perf_counter()
    print(HEADER, flush=True)
    for mode, model, S, p, B, comp in presets:
        base = {"mode": mode, "model": model, "image_size": S, "patch": p,
                "tokens": (S // p) ** 2, "dim": auto_dim(p), "batch": B, "compile_requested": comp}
        left = args.sweep_budget - (time.perf_counter() - start)
        if left < args.min_config_s:
            r = {**base, "status": f"skipped (sweep budget {args.sweep_budget:.0f} s spent)"}
            records.append(r)
            print(row(r), flush=True)
            write_json(args.json, hw, peak, peak_note, records, args)
            continue
        timeout = min(args.config_timeout, left)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "one.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode,
                   "--model", model, "--image-size", str(S), "--patch", str(p), "--batch", str(B),
                   "--compile" if comp else "--no-compile", "--device", device.type,
                   "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--window-s", str(args.window_s), "--threads", str(args.threads),
                   "--peak-tflops", str(args.peak_tflops), "--json", out]
            t0 = time.perf_counter()
            # own process group: a timeout also ends the child's compile workers
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
                if os.path.isfile(out):
                    with open(out) as fh:
                        r = json.load(fh)["results"][0]
                else:
                    tail = (stderr or stdout).strip().splitlines()[-1:] or [""]
                    r = {**base, "status": f"crashed rc={proc.returncode}", "error": tail[0][:300]}
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                r = {**base, "status": f"timeout after {timeout:.0f} s"}
            r["wall_s"] = time.perf_counter() - t0
        records.append(r)
        print(row(r), flush=True)
        write_json(args.json, hw, peak, peak_note, records, args)
    ok = sum(r.get("status") == "ok" for r in records)
    print(f"\n{ok}/{len(records)} configurations ok in {time.perf_counter() - start:.0f} s"
          + (f"; wrote {args.json}" if args.json else ""), flush=True)
    return 0 if ok else 1


# ----------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--mode", choices=["train", "features"], default="train")
    ap.add_argument("--model", default="B", help="a size of ldae.models.registry (default B)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--patch", "--patch-size", dest="patch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    ap.add_argument("--dim", type=int, default=0,
                    help="PCA latent dim d (0 = the presets': 32 at patch 16, else 4)")
    ap.add_argument("--steps", type=int, default=0,
                    help="timed steps (0 = enough for --window-s seconds, 5..200)")
    ap.add_argument("--warmup", type=int, default=-1,
                    help="untimed steps, the first compiles (default 3 CUDA / 1 CPU)")
    ap.add_argument("--window-s", type=float, default=2.0, help="timed window when --steps 0 (seconds)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile (default: on for CUDA, off for CPU)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--t", type=int, default=10, help="features: fixed timestep (App. A)")
    ap.add_argument("--blocks", type=int, default=0, help="features: encoder depth k (0 = the split)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads (0 = ldae's default: all usable cores)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="override the device's peak for MFU")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--sweep", action="store_true", help="run the preset list, one process each")
    ap.add_argument("--sweep-budget", type=float, default=150.0, help="--sweep: seconds for the whole list")
    ap.add_argument("--config-timeout", type=float, default=80.0, help="--sweep: seconds per configuration")
    ap.add_argument("--min-config-s", type=float, default=20.0,
                    help="--sweep: skip the rest when less than this is left of the budget")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but no CUDA device is visible")
    device = torch.device(name)
    cuda = device.type == "cuda"
    if args.warmup < 0:
        args.warmup = 3 if cuda else 1
    args.warmup = max(1, args.warmup)
    if args.compile is None:
        args.compile = cuda
    if args.dim <= 0:
        args.dim = auto_dim(args.patch)
    if args.image_size % args.patch:
        sys.exit("--image-size must be a multiple of --patch")

    peak, peak_note = peak_tflops(device, args.peak_tflops)
    if args.child:  # one sweep configuration: the parent prints
        rec = run_one(args, device)
        write_json(args.json, {}, peak, peak_note, [rec], args)
        return 0
    if cuda:
        torch.cuda.init()
    hw = hardware(device)
    print(hardware_line(hw))
    print(f"peak for MFU: {peak_note}" + (f" ({peak:g} TFLOP/s)" if peak else ""))
    print(f"{'bf16 autocast, fused AdamW' if cuda else 'fp32, AdamW'}; input batch on the device; "
          f"warmup {args.warmup} step(s) (the first compiles), then "
          + (f"{args.steps} timed steps" if args.steps else f"a ~{args.window_s:g} s timed window")
          + "; 'syncs' = host-device synchronisations in one step; PCA tokenizer unfitted (identity)",
          flush=True)
    if args.sweep:
        return sweep(args, device, hw, peak, peak_note)
    print(HEADER)
    rec = run_one(args, device)
    print(row(rec), flush=True)
    write_json(args.json, hw, peak, peak_note, [rec], args)
    if args.json:
        print(f"wrote {args.json}")
    return 0 if rec["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
