"""Training-step throughput of ldae's DiT backbone against timm's VisionTransformer.

What is measured (one optimizer step each: forward, MSE loss, backward, AdamW step, zero_grad):

  ours/backbone  tokens (B, L, D) + t -> DiT (Linear patch embed, fixed sin-cos pos, t-embed MLP,
                 ``depth`` adaLN-Zero blocks, final adaLN + Linear) -> (B, L, D); MSE against the
                 clean image tokens. No tokenizer, no noise: the pure backbone step.
  ours/l-DAE     images (B, 3, H, W) -> ``Denoiser.loss``: patchify, PCA encode to d dims, noise
                 z_t = z_0 + sigma_t eps, PCA decode, the same DiT, Eq. 4 (residual projected on
                 the full PCA basis, weighted MSE, lambda_t). The real pretraining step.
  timm           images (B, 3, H, W) -> ``VisionTransformer.forward_features`` (conv patch embed,
                 learned pos embed, ``depth`` pre-LN blocks, final LayerNorm; no class token)
                 -> Linear(W, D) per token -> (B, L, D); MSE against the clean image tokens.

Both sides have the same width W, depth, heads, MLP ratio, token count L = (H/p)^2 and token dim
D = 3 p^2, so the same matmul work; ours adds adaLN modulation (per-sample, almost free in FLOPs).
Same input batch, AdamW (fused on CUDA), fp32 on CPU, bf16 autocast on CUDA.

Timing: after warmup steps, the variants run interleaved (A, B, C, then C, B, A, ... for
``--repeats`` rounds of ``--steps`` steps each) so that drift from other load on the machine hits
every side alike; each reported time is the median over rounds, and the ratio ours/timm is the
median of the per-round ratios. Acceptance target: ours/timm step time <= 1.15 (backbone).

FLOPs per image (SPEC section 8, both sides, forward + backward):

    F_train = 6 * N * L + 12 * depth * W * L^2

N = weights applied to every token (patch embed, qkv, proj, fc1, fc2 of every block, output
Linear). Achieved GFLOP/s = F_train * img/s / 1e9; MFU = that / peak (``--peak-tflops``, or the
dense bf16 peak of a known GPU).

    .venv/bin/python bench/train_vs_timm.py                      # mini, 32 px, patch 4, batch 128
    .venv/bin/python bench/train_vs_timm.py --per-block --profile  # where the time goes
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

TARGET_RATIO = 1.15


# ----------------------------------------------------------------------------- reporting
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> str:
    """1/5/15-min load averages: other processes on the machine skew CPU numbers."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def hardware(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device), "loadavg": loadavg()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_sms=p.multi_processor_count,
                    gpu_mem_gib=round(p.total_memory / 2 ** 30, 1))
    return info


def hardware_line(hw: dict) -> str:
    s = (f"cpu: {hw['cpu']} ({hw['cpu_count']} logical CPUs), torch {hw['torch']}, "
         f"{hw['threads']} thread(s), load average {hw['loadavg']}")
    if "gpu" in hw:
        s += f"; gpu: {hw['gpu']} ({hw['gpu_sms']} SMs, {hw['gpu_mem_gib']} GiB)"
    return s


def emit_record(rec: dict, path: str | None) -> None:
    """Print a benchmark record as JSON, and write it to ``path`` when one is given."""
    import json
    from pathlib import Path

    print(json.dumps(rec, indent=2))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rec, indent=2) + "\n")


def default_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 tensor peak of GPUs we know (anchors-performance.md section 1); None otherwise."""
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    if ("H100" in p.name or "H200" in p.name or "H800" in p.name):
        return 989.4 if p.multi_processor_count >= 132 else 756.0  # SXM / PCIe
    if "A100" in p.name:
        return 312.0
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """What the trainer uses (ldae.dist.Runtime.autocast): bf16 on CUDA, fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_flops(n_per_token: int, depth: int, width: int, L: int) -> float:
    """SPEC section 8: 6 N L + 12 depth W L^2."""
    return 6.0 * n_per_token * L + 12.0 * depth * width * L * L


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but no CUDA device is visible")
    return torch.device(name)


def set_threads(device: torch.device, threads: int) -> None:
    torch.set_num_threads(max(1, threads))


# ------------------------------------------------------------------------------- models
class TimmRegressor(nn.Module):
    """timm ViT (no class token) + a per-token Linear(W, D): images -> (B, L, D)."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int,
                 mlp_ratio: float):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        # fc_norm=False keeps the final LayerNorm inside forward_features (applied to every token),
        # the counterpart of our final adaLN; global_pool='avg' / num_classes=0: no class token, no head.
        self.vit = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=3,
                                     num_classes=0, global_pool="avg", class_token=False,
                                     fc_norm=False, embed_dim=width, depth=depth, num_heads=heads,
                                     mlp_ratio=mlp_ratio)
        self.head = nn.Linear(width, 3 * patch_size ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit.forward_features(x))

    def per_token_params(self) -> int:
        n = self.vit.patch_embed.proj.weight.numel() + self.head.weight.numel()
        for b in self.vit.blocks:
            n += sum(m.weight.numel() for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2))
        return n


def build_config(args, extra: list[str] | None = None):
    from ldae.config import load_config

    ov = [f"model.name={args.model}", f"model.patch_size={args.patch_size}",
          f"data.image_size={args.image_size}", f"model.adaln={args.adaln}",
          f"tokenizer.dim={args.latent_dim}"]
    return load_config(None, ov + list(extra or []))


def build_denoiser(args, device: torch.device, x: torch.Tensor):
    """The l-DAE denoiser of the defaults (sigma_linear x image x inv1p_sigma2), PCA fitted on x."""
    from ldae.diffusion.objective import build_denoiser as _build
    from ldae.tokenizers import PCATokenizer

    cfg = build_config(args)
    tok = PCATokenizer(args.patch_size, args.latent_dim).fit([x.cpu()])
    return _build(cfg, tok).to(device)


def adamw(params, device: torch.device) -> torch.optim.Optimizer:
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **kw)


class Variant:
    """A model + optimizer + one training step closure, timed per round."""

    def __init__(self, name: str, what: str, flops: float, step: Callable[[], None]):
        self.name, self.what, self.flops, self.step = name, what, flops, step
        self.times: list[float] = []  # seconds per step, one entry per round

    def run(self, steps: int, device: torch.device) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(device)
        return (time.perf_counter() - t0) / steps


def make_variants(args, device: torch.device, which: tuple[str, ...] = ("ours", "ldae", "timm")
                  ) -> dict[str, Variant]:
    from ldae.models import DiT, get_size
    from ldae.tokenizers import patchify

    size = get_size(args.model)
    p, S, B = args.patch_size, args.image_size, args.batch
    L, D = (S // p) ** 2, 3 * p * p
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(B, 3, S, S, generator=g) * 2 - 1).to(device)  # the shared input batch
    tokens = patchify(x, p).contiguous()  # (B, L, D): our backbone's input and everyone's target
    t = torch.randint(0, 1000, (B,), generator=g).float().to(device)
    ac = lambda: autocast_for(device)  # noqa: E731
    out: dict[str, Variant] = {}

    if "ours" in which:
        torch.manual_seed(0)
        dit = DiT.from_size(args.model, in_dim=D, out_dim=D, num_tokens=L, adaln=args.adaln).to(device).train()
        opt = adamw(dit.parameters(), device)

        def step_ours() -> None:
            with ac():
                y = dit(tokens, t)
            F.mse_loss(y.float(), tokens).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out["ours"] = Variant("ours/backbone", "tokens (B,L,D) + t -> DiT -> (B,L,D), MSE vs clean tokens",
                              dit.train_flops_per_image(), step_ours)

    if "ldae" in which:
        torch.manual_seed(0)
        den = build_denoiser(args, device, x).train()
        opt2 = adamw([q for q in den.backbone.parameters() if q.requires_grad], device)
        gen = torch.Generator(device=device).manual_seed(0)

        def step_ldae() -> None:
            loss, _ = den.loss(x, None, gen, ac(), net=den.backbone)
            loss.backward()
            opt2.step()
            opt2.zero_grad(set_to_none=True)

        out["ldae"] = Variant("ours/l-DAE", "images -> Denoiser.loss (PCA enc d=%d, noise, PCA dec, DiT, "
                              "Eq. 4 full-basis weighted MSE)" % args.latent_dim,
                              den.backbone.train_flops_per_image(), step_ldae)

    if "timm" in which:
        torch.manual_seed(0)
        tm = TimmRegressor(S, p, size.width, size.depth, size.heads, size.mlp_ratio).to(device).train()
        opt3 = adamw(tm.parameters(), device)

        def step_timm() -> None:
            with ac():
                y = tm(x)
            F.mse_loss(y.float(), tokens).backward()
            opt3.step()
            opt3.zero_grad(set_to_none=True)

        out["timm"] = Variant("timm", "images -> VisionTransformer.forward_features (no cls) -> "
                              "Linear(W,D) per token, MSE vs clean tokens",
                              train_flops(tm.per_token_params(), size.depth, size.width, L), step_timm)
    return out


def interleaved(variants: list[Variant], steps: int, warmup: int, repeats: int,
                device: torch.device) -> None:
    """Warm every variant up, then rounds of (A, B, C) / (C, B, A) alternating; fills .times."""
    for v in variants:
        if warmup:
            v.run(warmup, device)
    for r in range(repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            v.times.append(v.run(steps, device))


# ------------------------------------------------------------------------- diagnostics
def per_block(args, device: torch.device, steps: int, repeats: int) -> dict:
    """Forward + backward of ONE block on (B, L, W) activations, interleaved:

    ours   our DiTBlock (adaLN-Zero with the modulation given non-zero weights, exact GELU,
           modulate and gated residual as fused addcmul);
    timm   timm's Block (pre-LN with affine LayerNorm, exact GELU).
    """
    from timm.models.vision_transformer import Block

    from ldae.models import get_size
    from ldae.models.layers import DiTBlock

    size = get_size(args.model)
    W, L, B = size.width, (args.image_size // args.patch_size) ** 2, args.batch
    g = torch.Generator().manual_seed(1)
    xa = torch.randn(B, L, W, generator=g).to(device)
    c = torch.randn(B, W, generator=g).to(device)
    torch.manual_seed(1)
    ours = DiTBlock(W, size.heads, size.mlp_ratio, args.adaln).to(device)
    # adaLN-Zero starts with zero gates; give it non-zero modulation, as after some training.
    nn.init.normal_(ours.modulation.net[-1].weight, std=0.02)
    theirs = Block(W, size.heads, size.mlp_ratio, qkv_bias=True,
                   norm_layer=functools.partial(nn.LayerNorm, eps=1e-6)).to(device)

    def fb(block: nn.Module, with_c: bool) -> Callable[[], None]:
        x = xa.clone().requires_grad_(True)

        def step() -> None:
            block.zero_grad(set_to_none=True)
            x.grad = None
            with autocast_for(device):
                y = block(x, c) if with_c else block(x)
            y.float().square().mean().backward()
        return step

    vs = [Variant("ours", "", 0.0, fb(ours, True)), Variant("timm", "", 0.0, fb(theirs, False))]
    interleaved(vs, steps, 1, repeats, device)
    flops = train_flops(int((4 + 2 * size.mlp_ratio) * W * W), 1, W, L) * B  # qkv, proj, fc1, fc2
    timm_t = vs[-1].times
    out = {}
    for v in vs:
        med = statistics.median(v.times)
        out[v.name] = {"ms": 1e3 * med, "gflop_per_s": flops / med / 1e9,
                       "ratio_vs_timm": statistics.median(a / b for a, b in zip(v.times, timm_t))}
    return out


def profile(variants: list[Variant], device: torch.device, rows: int, steps: int = 2) -> dict:
    """torch.profiler over ``steps`` steps of each variant: self time per op (ms per step) side by
    side, sorted by how much more time ours/backbone spends than timm. Self CPU time on CPU,
    self device time on CUDA."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def self_ms(e) -> float:
        if device.type == "cuda":
            us = getattr(e, "self_device_time_total", None)
            us = us if us is not None else getattr(e, "self_cuda_time_total", 0.0)
        else:
            us = e.self_cpu_time_total
        return us / 1e3 / steps

    table: dict[str, dict[str, tuple[float, int]]] = {}
    for v in variants:
        v.step()
        sync(device)
        with tprofile(activities=acts) as prof:
            for _ in range(steps):
                v.step()
            sync(device)
        table[v.name] = {e.key: (self_ms(e), e.count // steps) for e in prof.key_averages()}
    names = [v.name for v in variants]
    a, b = names[0], "timm"
    ops = set().union(*(t.keys() for t in table.values()))
    diff = lambda op: table[a].get(op, (0, 0))[0] - table[b].get(op, (0, 0))[0]  # noqa: E731
    top = sorted(ops, key=lambda op: -max(abs(diff(op)), *(t.get(op, (0, 0))[0] for t in table.values())))
    top = sorted(top[:rows], key=lambda op: -diff(op))
    unit = "self device ms" if device.type == "cuda" else "self CPU ms"
    print(f"\nprofile: {unit} per step (calls per step) over {steps} steps each; sorted by {a} - {b}")
    print(f"{'op':44s}" + "".join(f"{n:>22s}" for n in names) + f"{a + ' - ' + b:>24s}")
    for op in top:
        cells = "".join(f"{table[n].get(op, (0.0, 0))[0]:14.1f} ({table[n].get(op, (0.0, 0))[1]:4d}) "
                        for n in names)
        print(f"{op[:44]:44s}{cells}{diff(op):+16.1f}")
    totals = {n: sum(x[0] for x in table[n].values()) for n in names}
    print(f"{'total':44s}" + "".join(f"{totals[n]:14.1f}        " for n in names)
          + f"{totals[a] - totals[b]:+16.1f}")
    return {n: {op: {"ms": ms, "calls": c} for op, (ms, c) in t.items()} for n, t in table.items()}


# ---------------------------------------------------------------------------------- main
def shape_parser(doc: str, batch: int, batch_help: str = "images per step") -> argparse.ArgumentParser:
    """The model/shape arguments every bench script shares."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini", help="a size of ldae.models.registry (default mini)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=batch, help=batch_help)
    ap.add_argument("--latent-dim", type=int, default=4, help="PCA latent dim d of the l-DAE step")
    ap.add_argument("--adaln", choices=["mlp4", "linear"], default="mlp4")
    return ap


def main() -> None:
    ap = shape_parser(__doc__, batch=128)
    ap.add_argument("--steps", type=int, default=0, help="timed steps per round (default 1 CPU / 20 CUDA)")
    ap.add_argument("--warmup", type=int, default=-1, help="untimed steps per variant (default 1 CPU / 5 CUDA)")
    ap.add_argument("--repeats", type=int, default=0, help="interleaved rounds (default 9 CPU / 7 CUDA)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--no-ldae", action="store_true", help="skip the full l-DAE step (backbone vs timm only)")
    ap.add_argument("--per-block", action="store_true", help="also time one block fwd+bwd, ours vs timm")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler op table per variant")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="peak dense FLOP/s of the device in TFLOP/s for MFU (auto for H100/H200/A100)")
    ap.add_argument("--json", default="", help="write the results to this path")
    args = ap.parse_args()

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (20 if cuda else 1)
    warmup = args.warmup if args.warmup >= 0 else (5 if cuda else 1)
    repeats = args.repeats or (7 if cuda else 9)
    set_threads(device, args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.image_size % args.patch_size:
        sys.exit("--image-size must be a multiple of --patch-size")
    peak = args.peak_tflops or default_peak_tflops(device)

    from ldae.models import get_size

    size = get_size(args.model)
    L = (args.image_size // args.patch_size) ** 2
    hw = hardware(device)
    print(hardware_line(hw))
    print(f"model {args.model}: {size.depth} blocks x W {size.width}, {size.heads} heads, mlp x{size.mlp_ratio:g}, "
          f"adaln={args.adaln}; {args.image_size} px / patch {args.patch_size} -> L={L} tokens of "
          f"D={3 * args.patch_size ** 2}; batch {args.batch}; {'bf16 autocast' if cuda else 'fp32'}; "
          f"{warmup} warmup + {repeats} rounds x {steps} steps, interleaved")

    which = ("ours", "timm") if args.no_ldae else ("ours", "ldae", "timm")
    vs = make_variants(args, device, which)
    order = [vs[k] for k in ("ours", "timm", "ldae") if k in vs]
    interleaved(order, steps, warmup, repeats, device)

    print("\nwhat each side computes (one AdamW training step):")
    for v in order:
        print(f"  {v.name:14s} {v.what}")
    print(f"\n{'variant':14s} {'step ms':>9s} {'img/s':>9s} {'GFLOP/img':>10s} {'GFLOP/s':>9s}"
          + ("  MFU" if peak else ""))
    res: dict = {}
    for v in order:
        med = statistics.median(v.times)
        ips = args.batch / med
        gfs = v.flops * ips / 1e9
        res[v.name] = {"step_s_median": med, "step_s_all": v.times, "img_per_s": ips,
                       "flops_per_image": v.flops, "gflop_per_s": gfs,
                       "mfu": gfs / (peak * 1e3) if peak else None, "computes": v.what}
        print(f"{v.name:14s} {1e3 * med:9.1f} {ips:9.1f} {v.flops / 1e9:10.3f} {gfs:9.1f}"
              + (f"  {100 * gfs / (peak * 1e3):.1f} %" if peak else ""))

    print(f"\nratio ours/timm step time (median of per-round ratios; target <= {TARGET_RATIO}):")
    ratios: dict = {}
    for key in ("ours", "ldae"):
        if key not in vs:
            continue
        per_round = [a / b for a, b in zip(vs[key].times, vs["timm"].times)]
        r = statistics.median(per_round)
        verdict = "PASS" if r <= TARGET_RATIO else "FAIL"
        ratios[vs[key].name] = {"ratio": r, "per_round": per_round, "verdict": verdict}
        print(f"  {vs[key].name:14s} / timm = {r:.3f}  "
              f"(rounds {min(per_round):.3f}-{max(per_round):.3f})  {verdict}"
              + ("   <- acceptance" if key == "ours" else "   (includes the objective's cost)"))
    if "ldae" in vs:
        extra = statistics.median(a / b for a, b in zip(vs["ldae"].times, vs["ours"].times))
        print(f"  l-DAE objective overhead over the pure backbone step: x{extra:.3f}")
        ratios["ldae_over_backbone"] = extra

    blk = None
    if args.per_block:
        blk = per_block(args, device, max(steps * 2, 2), repeats)
        print(f"\none block, forward + backward on (B={args.batch}, L={L}, W={size.width}), interleaved:")
        for name, r in blk.items():
            print(f"  {name:13s} {r['ms']:8.2f} ms  {r['gflop_per_s']:7.1f} GFLOP/s  "
                  f"x{r['ratio_vs_timm']:.3f} of timm")
    prof = profile(order, device, 18) if args.profile else None

    if args.json:
        rec = {"bench": "train_vs_timm", "hardware": hw, "args": vars(args), "steps": steps,
               "warmup": warmup, "repeats": repeats, "tokens": L, "peak_tflops": peak,
               "results": res, "ratios": ratios, "target_ratio": TARGET_RATIO, "per_block": blk,
               "profile": prof, "loadavg_end": loadavg()}
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
