"""CUDA checks: bf16 autocast, torch.compile, the training loop and feature extraction on a GPU.

Every test is skipped where no CUDA device is visible (the CPU suite and CI). On a GPU machine:

    python -m pytest tests/test_gpu.py -rs          # ~30-40 s on an H100, compile included

``LDAE_GPU_TESTS_ON_CPU=1`` runs the same tests with the CPU standing in for the GPU (CPU bf16
autocast, inductor's C++ backend): it checks the tests' own logic on a machine without a GPU,
not the GPU. Comparisons use the relative error ||a - b|| / ||b|| over whole tensors; fp32 paths
run with TF32 off so that "fp32" means fp32.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time

import pytest
import torch

from ldae import checkpoint
from ldae.config import load_config
from ldae.diffusion.objective import build_denoiser
from ldae.engine import pretrain
from ldae.tokenizers import PCATokenizer

ON_CPU = os.environ.get("LDAE_GPU_TESTS_ON_CPU") == "1"
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and not ON_CPU,
                                reason="needs a CUDA device (LDAE_GPU_TESTS_ON_CPU=1 runs the logic on CPU)")

# fp32 vs fp32 on another device or after inductor's fusions: only the order of floating-point
# additions differs, which moves results by ~1e-7..1e-6 relative; 1e-4 leaves room for depth.
FP32_TOL = 1e-4
# bf16 operands: 8 significant bits, unit roundoff 2^-9 ~ 2e-3 per rounding; over the blocks
# of the `mini` model the errors add up to 4e-3..5e-3 relative on the features and the output
# (measured with CPU bf16 autocast; typical bf16 results lie between 1e-3 and 1e-2). 5e-2 is 10x
# that, and 4x below what one block changes (~0.2 with `trained_looking` weights): a dropped
# block, a wrong kernel or a non-finite value still fails.
BF16_TOL = 5e-2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bf16() -> contextlib.AbstractContextManager:
    """What the trainer and the probe use on CUDA (ldae.dist.Runtime.autocast)."""
    return torch.autocast(DEV, dtype=torch.bfloat16)


@pytest.fixture(autouse=True)
def _restore_tf32():
    """pretrain.run turns TF32 on for the process (ldae.dist.setup); keep every test's fp32 exact
    and leave the flags as they were."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def trained_looking(module: torch.nn.Module, seed: int = 1) -> None:
    """Redraw every weight matrix from N(0, 1/fan_in). At DiT's init the adaLN-Zero gates and the
    final Linear are zero (the output is exactly 0 in every precision, so a comparison would pass
    trivially) and the t-embedding is small (each block then changes the features by ~2 %, less
    than bf16 noise could hide). With unit-gain weights each block moves the features by ~20 %
    (measured on CPU), so a dropped or wrong block shows far above the tolerances. Biases stay 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def make_denoiser(model: str = "mini", image: int = 32, patch: int = 4, dim: int = 4, n: int = 32):
    """The final l-DAE (config defaults: sigma_linear x image x inv1p_sigma2), a PCA fitted on
    smooth random images, non-zero weights; returns (denoiser on CPU, images on CPU)."""
    cfg = load_config(None, [f"model.name={model}", f"data.image_size={image}",
                             f"model.patch_size={patch}", f"tokenizer.dim={dim}"])
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, image // 4, image // 4, generator=g) * 2 - 1  # smooth: patches correlate
    x = torch.nn.functional.interpolate(low, size=image, mode="bilinear", align_corners=False)
    x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    tok = PCATokenizer(patch, dim).fit([x])
    torch.manual_seed(0)
    den = build_denoiser(cfg, tok)
    trained_looking(den.backbone)
    return den, x


# ------------------------------------------------------------------------------ precision
def test_bf16_autocast_loss_matches_fp32():
    """Same weights, batch, t and noise: the bf16-autocast loss and gradient are the fp32 ones up
    to bf16 rounding, the loss stays fp32, and autocast does engage (the two are not identical)."""
    den, x = make_denoiser()
    den = den.to(DEV).train()
    x = x.to(DEV)

    def loss_and_grad(autocast):
        den.zero_grad(set_to_none=True)
        gen = torch.Generator(device=DEV).manual_seed(0)  # same t and noise for both
        loss, _ = den.loss(x, generator=gen, autocast=autocast)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in den.backbone.parameters() if p.grad is not None])
        return loss.detach(), grad

    l32, g32 = loss_and_grad(None)
    l16, g16 = loss_and_grad(bf16())
    assert l16.dtype == torch.float32, "the loss must be computed in fp32 (SPEC section 7)"
    assert math.isfinite(float(l16)) and float(l32) > 0
    assert float(l16) != float(l32), "bf16 autocast changed nothing: is it engaged?"
    # The loss is a mean over B L D squared residuals: independent bf16 roundings mostly cancel,
    # so 1e-2 (~2.5 bf16 eps) is ample; a dropped autocast region or an fp16 overflow is not.
    assert abs(float(l16) - float(l32)) / float(l32) < 1e-2, (float(l16), float(l32))
    assert rel_err(g16, g32) < 5e-2  # gradients pass through ~2x more bf16 matmuls than the loss
    cos = torch.nn.functional.cosine_similarity(g16.double(), g32.double(), dim=0)
    assert cos > 0.998, float(cos)


# -------------------------------------------------------------------------------- compile
def test_compiled_backbone_matches_eager():
    """torch.compile of the backbone, called the way the trainer calls it (``Denoiser.loss(...,
    net=compiled)``, what model.compile=true trains), computes the eager function: loss, output
    and gradients in fp32, the output under bf16 autocast."""
    den, x = make_denoiser(model="test", image=16, n=8)  # 2 blocks x 32: compile stays short
    den = den.to(DEV).train()
    x = x.to(DEV)
    bb = den.backbone
    compiled = torch.compile(bb)

    def loss_grad(net):
        bb.zero_grad(set_to_none=True)
        gen = torch.Generator(device=DEV).manual_seed(0)
        loss, _ = den.loss(x, generator=gen, net=net)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in bb.parameters()])

    t0 = time.perf_counter()
    try:
        loss_c, grads_c = loss_grad(compiled)
    except TypeError as e:
        pytest.fail(f"Denoiser.loss cannot take a compiled backbone ({e}): `net or self.backbone` "
                    "asks torch.compile's OptimizedModule for len(); write `net if net is not None "
                    "else self.backbone`. Until then model.compile=true silently trains in eager mode.")
    compile_s = time.perf_counter() - t0
    loss_e, grads_e = loss_grad(None)
    assert rel_err(loss_c, loss_e) < FP32_TOL
    # all gradients as one vector: a small bias gradient is a sum of cancelling terms whose own
    # relative error says nothing
    assert rel_err(grads_c, grads_e) < FP32_TOL

    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(8, bb.num_tokens, bb.in_dim, generator=g).to(DEV)  # the loss's shapes:
    t = torch.randint(0, 1000, (8,), generator=g).float().to(DEV)  # no recompile for these
    assert rel_err(compiled(tokens, t, None), bb(tokens, t, None)) < FP32_TOL
    with torch.no_grad(), bf16():
        e16, c16 = bb(tokens, t), compiled(tokens, t)
    assert e16.dtype == c16.dtype
    assert rel_err(c16, e16) < BF16_TOL
    print(f"compile (fp32 fwd+bwd): {compile_s:.1f} s")


# ------------------------------------------------------------------------ training loop
TINY = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=64", "data.val_size=16",
        "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "optim.batch_size=16",
        "optim.blr=2e-3", "optim.epochs=2", "optim.warmup_epochs=1", "train.log_every=2",
        "train.ckpt_every=3", "train.keep_ckpts=10", f"train.device={DEV}",
        "optim.ema=0.9", "data.crop=random_resized"]


def _states(run_dir) -> dict:
    return checkpoint.load(checkpoint.latest(run_dir))


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (model, EMA, optimizer moments) under a flat name."""
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"ema.{k}": v for k, v in (state.get("ema") or {}).items()})
    for i, st in state["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


def test_pretrain_on_cuda_checkpoints_and_resumes(tmp_path):
    """``pretrain.run`` on the GPU (bf16 autocast, fused AdamW, EMA, random resized crops):
    8 steps leave a finite loss and a checkpoint; 4 steps + resume 4 equal 8 uninterrupted.

    Exact resume can only be asked of a deterministic computation: the 8-step run is done twice
    from scratch. If those two agree bit for bit (cuBLAS is deterministic on one GPU; SDPA's
    backward may not be), the resumed run must too; otherwise resume is held to rtol 1e-4 /
    atol 1e-6 on every tensor, far below what a resume bug does (a lost optimizer state or a
    replayed batch moves weights by ~lr = 1.25e-4 per step)."""
    cfg = load_config(None, TINY)
    full = pretrain.run(cfg, tmp_path / "full")
    assert full["steps"] == 8 and full["device"].startswith(DEV)
    assert full["final_loss"] is not None and math.isfinite(full["final_loss"])
    ck = checkpoint.latest(tmp_path / "full")
    assert ck is not None and ck.name == "ckpt-00000008.pt"
    a = _states(tmp_path / "full")
    assert all(torch.isfinite(v).all() for v in _tensors(a).values() if v.is_floating_point())

    pretrain.run(cfg, tmp_path / "again")
    part = pretrain.run(cfg, tmp_path / "split", max_steps=4)
    assert part["steps"] == 4
    resumed = pretrain.run(cfg, tmp_path / "split", resume="auto")
    assert resumed["steps"] == 8 and resumed["steps_this_run"] == 4
    ta, tb, tc = (_tensors(s) for s in (a, _states(tmp_path / "again"), _states(tmp_path / "split")))
    assert ta.keys() == tb.keys() == tc.keys()
    deterministic = all(torch.equal(ta[k], tb[k]) for k in ta)
    if deterministic:
        bad = [k for k in ta if not torch.equal(ta[k], tc[k])]
        assert not bad, f"resume is not bit-exact although two fresh runs are: {bad[:5]}"
    else:
        print("two identical fresh CUDA runs differ (nondeterministic kernels): resume checked "
              "to rtol 1e-4 / atol 1e-6")
        for k in ta:
            torch.testing.assert_close(tc[k], ta[k], rtol=1e-4, atol=1e-6, msg=k)
    assert _states(tmp_path / "split")["step"] == a["step"] == 8


# ---------------------------------------------------------------------------- transfer
def test_features_on_cuda_match_cpu():
    """``Denoiser.features`` (the probe's encoder, eval, no grad, clean input at t=10) on the GPU
    equals the CPU's: in fp32 to reduction order, under bf16 autocast (what ``ldae linprobe``
    runs on CUDA) to bf16 rounding."""
    den, x = make_denoiser()
    den.eval().requires_grad_(False)
    k = den.backbone.encoder_blocks
    blocks = [1, k]
    with torch.no_grad():
        ref = den.features(x, 10, blocks)
        gpu = copy.deepcopy(den).to(DEV)
        out = gpu.features(x.to(DEV), 10, blocks)
        out16 = gpu.features(x.to(DEV), 10, blocks, autocast=bf16())
    for r, o, o16 in zip(ref, out, out16):
        assert o.shape == r.shape == (x.shape[0], den.backbone.width)
        assert o16.dtype == torch.float32
        assert rel_err(o, r) < FP32_TOL
        assert rel_err(o16, r) < BF16_TOL


def test_ddim_sampling_on_cuda_matches_cpu():
    """`ldae sample`'s chain (deterministic DDIM, the z0 target on a VP schedule) on the GPU:
    fp32 equals the CPU's to reduction order; under bf16 autocast (what `ldae sample` runs on
    CUDA) each of the 5 steps adds bf16 rounding, so the tolerance is the bf16 one. The noise is
    drawn on the CPU and moved, so both devices start from the same z_T."""
    from ldae.diffusion.sampling import ddim_step, timesteps
    from ldae.diffusion.schedules import LinearGamma2
    from ldae.diffusion.targets import TARGETS

    den, _ = make_denoiser()
    den.schedule, den.target = LinearGamma2(1000), TARGETS["z0"]()
    den.input_space = den.output_space = "latent"
    den.eval().requires_grad_(False)
    z_start = torch.randn(8, den.backbone.num_tokens, den.tokenizer.dim,
                          generator=torch.Generator().manual_seed(0))

    def chain(d, dev, autocast=None):
        s = d.schedule
        z = z_start.to(dev) * s.sigma[-1]
        ts = timesteps(s, 5, "z0").to(dev)
        for i, t in enumerate(ts):
            z0 = d.predict_z0(z, t.expand(z.shape[0]), autocast=autocast)
            if i == len(ts) - 1:
                return z0
            p = ts[i + 1]
            z = ddim_step(z, z0, s.gamma[t], s.sigma[t], s.gamma[p], s.sigma[p], 0.0, None)

    # a z0-predicting backbone must map latent tokens to latent tokens: swap in/out dims
    from ldae.models.dit import DiT

    L, dim = den.backbone.num_tokens, den.tokenizer.dim
    torch.manual_seed(0)
    den.backbone = DiT.from_size("mini", in_dim=dim, out_dim=dim, num_tokens=L).eval()
    trained_looking(den.backbone)
    with torch.no_grad():
        ref = chain(den, "cpu")
        gpu = copy.deepcopy(den).to(DEV)
        out, out16 = chain(gpu, DEV), chain(gpu, DEV, bf16())
    assert rel_err(out, ref) < FP32_TOL
    assert rel_err(out16, ref) < BF16_TOL


def test_fid_moments_on_cuda_match_numpy():
    """FID's streamed float64 statistics on the GPU equal NumPy's mean and covariance."""
    import numpy as np

    from ldae.engine.fid import Moments

    f = torch.randn(300, 64, generator=torch.Generator().manual_seed(0)) * 2 + 1
    acc = Moments(64, torch.device(DEV))
    for chunk in f.split(70):
        acc.update(chunk.to(DEV))
    mu, sigma, n = acc.finish()
    ref = f.double().numpy()
    assert n == 300
    np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-8, atol=1e-10)
