"""``ldae fid``: Frechet Inception Distance of a run's samples against its training images
(Heusel et al. 2017; the paper's Tab. 1; SPEC §5).

The network is Inception-V3 with the TensorFlow 2015-12-05 weights of the original FID code,
through torch-fidelity's ``FeatureExtractorInceptionV3`` (2048-d pool features). torch-fidelity,
rather than pytorch-fid or clean-fid, because: it takes a local weights file as an argument (the
other two fetch theirs from a URL, and these machines have no internet); it reproduces TF1's
bilinear resize to 299 px, so features match the reference TF implementation on small images
such as CIFAR's 32 px (pytorch-fid uses torch's bilinear resize, clean-fid a PIL one on purpose);
it eats uint8 images of any size, which is what the datasets and samples are; torchmetrics' FID
uses it too. Its own loader unpickles the file (``weights_only=False``); ldae reads the file itself
first, tensors only (safetensors or ``torch.load(weights_only=True)``), and hands torch-fidelity
the re-serialised tensors, so a crafted file cannot run code.

Statistics are streamed in float64 (sum of features and of their outer products; rank sums are
all-reduced under torchrun): mu = S / n, Sigma = (Q - n mu mu^T) / (n - 1). The reference
statistics (``fid.ref_split`` of the run's data) are computed once per (data, split, size, limit,
network) and cached as ``.npz`` under ``fid.cache_dir``.

Frechet distance of N(mu1, S1) and N(mu2, S2):
    d^2 = |mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr (S1^1/2 S2 S1^1/2)^1/2
The trace term is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
S1^1/2 S2 S1^1/2 (``eigh``, float64), which equals Tr (S1 S2)^1/2 of the usual formula.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from unittest import mock

import numpy as np
import torch
import torch.distributed as tdist
from torch.utils.data import Subset

from ..checkpoint import atomic_path, atomic_write_json, load_tensor_file
from ..config import Config
from ..data import build_dataset
from ..data.loader import iterate_in_order
from ..dist import Runtime, setup
from ..errors import CheckpointError, ConfigError
from ..logging import Timer, progress
from . import sample as sampling

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"
NO_WEIGHTS = (
    "FID needs the Inception-V3 FID weights (TensorFlow 2015-12-05, converted to PyTorch) as a local "
    f"file; ldae never downloads. Get {WEIGHTS_NAME} from {WEIGHTS_URL} (pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth is the same file), then pass --weights FILE or "
    "fid.weights=FILE.")


# ---------------------------------------------------------------------------- the math
def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """d^2 between N(mu1, s1) and N(mu2, s2) (module docstring), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross)


class Moments:
    """Streaming float64 mean and covariance of feature rows (sums, then all-reduce, then finish)."""

    def __init__(self, dim: int, device: torch.device):
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.s = torch.zeros(dim, dtype=torch.float64, device=device)
        self.q = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, f: torch.Tensor) -> None:
        f = f.to(torch.float64)
        self.n += f.shape[0]
        self.s += f.sum(0)
        self.q += f.T @ f

    def all_reduce(self, rt: Runtime) -> None:
        if rt.distributed:
            for x in (self.n, self.s, self.q):
                tdist.all_reduce(x)

    def finish(self) -> tuple[np.ndarray, np.ndarray, int]:
        n = int(self.n.item())
        if n < 2:
            raise ConfigError(f"FID needs at least 2 images per side, got {n}.")
        mu = self.s / n
        sigma = (self.q - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), ((sigma + sigma.T) / 2).cpu().numpy(), n


# ------------------------------------------------------------------------ the network
@dataclass
class Extractor:
    """uint8 (B, 3, H, W) -> (B, dim) features. ``ident`` names the network and its weights
    (it keys the reference cache)."""
    fn: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    ident: str
    info: dict


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file, tensors only (no code runs)."""
    if not path.is_file():
        raise ConfigError(f"fid.weights={path} does not exist. {NO_WEIGHTS}")
    state = load_tensor_file(path, NO_WEIGHTS)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors. {NO_WEIGHTS}")
    return state


def inception(weights: str | Path, device: torch.device) -> Extractor:
    """torch-fidelity's FID Inception-V3 with the weights of ``weights`` (2048-d features)."""
    from torch_fidelity.feature_extractor_inceptionv3 import (  # lazy: only an FID run needs it
        FeatureExtractorInceptionV3)

    path = Path(weights)
    state = read_weights(path)
    buf = io.BytesIO()
    torch.save(state, buf)  # plain tensors we just read: safe for torch-fidelity's own loader
    buf.seek(0)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=buf)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit torch-fidelity's Inception-V3 "
                              f"({str(e).splitlines()[0]}). {NO_WEIGHTS}") from None
    net = net.to(device).eval()

    @torch.no_grad()
    def fn(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(device))[0]

    digest = sha256(path)
    return Extractor(fn, 2048, f"inception-v3-compat-{digest[:16]}",
                     {"network": "torch-fidelity inception-v3-compat (pool3, 2048-d)",
                      "weights": str(path), "sha256": digest})


def write_standin_weights(path: str | Path, seed: int = 0) -> Path:
    """torch-fidelity's Inception-V3 at random init, saved in the real weights file's format.

    For plumbing checks where the real file cannot be had (tests, machines without internet):
    everything but the weights is the real pipeline. An FID from this file means nothing."""
    from torch_fidelity.feature_extractor_inceptionv3 import (  # lazy: only an FID run needs it
        FeatureExtractorInceptionV3 as Net)

    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url",
                    lambda *a, **k: {}), \
            mock.patch.object(Net, "load_state_dict", lambda self, *a, **k: None):
        net = Net("inception-v3-compat", ["2048"])  # its constructor always loads: skip that
    # torch's default conv init shrinks activations ~10x per layer: by pool3 the features are
    # ~1e-7 and every FID reads 0. He-normal weights (std sqrt(2 / fan_in), the ReLU-preserving
    # scale) keep them O(0.1) and different across images.
    g = torch.Generator().manual_seed(seed)
    state = net.state_dict()
    for k, v in state.items():
        if v.ndim == 4:
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


@contextlib.contextmanager
def full_fp32():
    """FID convs and matmuls in true fp32 (no TF32) on CUDA, as the reference implementation."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def moments(extractor: Extractor, batches: Iterable[torch.Tensor], n: int, rt: Runtime, desc: str,
            show: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Feature statistics of uint8 (B, 3, H, W) batches (this rank's share), summed over ranks."""
    acc = Moments(extractor.dim, rt.device)
    bar = progress(n, desc, show and rt.is_main)
    with full_fp32():
        for xb in batches:
            acc.update(extractor.fn(xb.to(rt.device)).to(rt.device))
            bar.update(xb.shape[0] * rt.world)
    bar.close()
    acc.all_reduce(rt)
    return acc.finish()


def _my_range(n: int, rt: Runtime) -> tuple[int, int]:
    """[lo, hi): this rank's contiguous share of n items."""
    per = -(-n // rt.world)
    return min(n, rt.rank * per), min(n, (rt.rank + 1) * per)


def _shard(images: np.ndarray, rt: Runtime, batch: int):
    """(n, H, W, 3) uint8 samples -> this rank's (B, 3, H, W) uint8 batches."""
    lo, hi = _my_range(len(images), rt)
    for i in range(lo, hi, batch):
        yield torch.from_numpy(np.ascontiguousarray(images[i:min(i + batch, hi)])).permute(0, 3, 1, 2)


def _dataset_shard(ds, n: int, rt: Runtime, batch: int, workers: int = 0):
    """This rank's share of the first n images of a dataset, streamed as uint8 (B, 3, H, W)
    batches (never the whole set in memory: an ImageFolder reference may be ImageNet)."""
    lo, hi = _my_range(n, rt)
    if hasattr(ds, "gather"):
        for i in range(lo, hi, batch):
            yield ds.gather(torch.arange(i, min(i + batch, hi)))[0]
        return
    for xb, _ in iterate_in_order(Subset(ds, range(lo, hi)), batch, workers):
        yield xb


# -------------------------------------------------------------------- reference stats
def cache_dir(cfg: Config) -> Path:
    if cfg.fid.cache_dir:
        return Path(cfg.fid.cache_dir)
    root = os.environ.get("LDAE_CACHE") or Path.home() / ".cache" / "ldae"
    return Path(root) / "fid"


def reference_key(cfg: Config, extractor: Extractor) -> tuple[str, dict]:
    d, f = cfg.data, cfg.fid
    desc = {"source": d.source, "path": str(Path(d.path).resolve()) if d.path else "",
            "split": f.ref_split, "image_size": d.image_size, "val_size": d.val_size,
            "limit": d.limit, "ref_limit": f.ref_limit, "network": extractor.ident}
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    return f"{d.source}-{f.ref_split}-{d.image_size}px-{key}", desc


def reference_stats(cfg: Config, extractor: Extractor, rt: Runtime, show: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """(mu, sigma, n, description) of the reference images, from the cache or computed once."""
    name, desc = reference_key(cfg, extractor)
    path = cache_dir(cfg) / f"{name}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["mu"], z["sigma"], int(z["n"]), {**desc, "cache": str(path), "cached": True}
        except Exception as e:  # a corrupt cache entry is recomputed, never trusted
            print(f"ldae fid: ignoring unreadable cache {path} ({type(e).__name__})", file=sys.stderr)
    ds = build_dataset(cfg, cfg.fid.ref_split)
    n_ref = min(len(ds), cfg.fid.ref_limit) if cfg.fid.ref_limit else len(ds)
    mu, sigma, n = moments(extractor, _dataset_shard(ds, n_ref, rt, cfg.fid.batch_size,
                                                     cfg.data.num_workers),
                           n_ref, rt, f"fid reference ({cfg.fid.ref_split})", show)
    if rt.is_main:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mu=mu, sigma=sigma, n=np.int64(n), desc=json.dumps(desc))
    return mu, sigma, n, {**desc, "cache": str(path), "cached": False}


# ------------------------------------------------------------------------------- run
def check(cfg: Config) -> None:
    """Fail before any work when the network cannot be built."""
    if not cfg.fid.weights:
        raise ConfigError(f"fid.weights is not set. {NO_WEIGHTS}")
    if not Path(cfg.fid.weights).is_file():
        raise ConfigError(f"fid.weights={cfg.fid.weights} does not exist. {NO_WEIGHTS}")


def run(cfg: Config, run_dir: Path | None, samples: Path | None = None,
        extractor: Extractor | None = None, rt: Runtime | None = None, show: bool = True) -> dict:
    """FID of ``samples`` (an .npz; default: ``fid.n`` samples of the run, made or reused with
    the ``sample.*`` settings) against the run's reference images. Writes
    ``RUN_DIR/eval/fid-<sample tag>-n<n>.json`` (or next to the samples file) and returns the record.

    ``extractor`` replaces the Inception network (tests use a small stand-in for plumbing)."""
    if extractor is None:
        check(cfg)
    if samples is None and run_dir is None:
        raise ConfigError("give a run dir to sample from, or --samples FILE.npz.")
    rt = rt or setup(cfg.train.device, cfg.train.threads)
    timer = Timer()
    meta: dict = {}
    if samples is None:
        rec = sampling.run(cfg, run_dir, n=cfg.fid.n, rt=rt, show=show)
        samples = Path(rec["files"]["npz"])
        meta = {k: v for k, v in rec.items() if k not in ("files", "reused", "n", "seconds", "img_per_s")}
        tag = samples.parent.name
    else:
        samples = Path(samples)
        if (samples.parent / sampling.META_FILE).is_file():
            meta = json.loads((samples.parent / sampling.META_FILE).read_text())
            meta = {k: v for k, v in meta.items() if k not in ("n", "seconds", "img_per_s")}
        tag = samples.parent.name if meta else samples.stem
    images, _ = sampling.read_npz(samples)
    if len(images) < cfg.fid.n:
        raise ConfigError(f"{samples} holds {len(images)} images but fid.n={cfg.fid.n}; sample more "
                          f"or set fid.n={len(images)} (the n is recorded with the FID).")
    images = images[: cfg.fid.n]
    if images.shape[1:3] != (cfg.data.image_size, cfg.data.image_size):
        raise ConfigError(f"samples are {images.shape[1]}x{images.shape[2]} px but the reference "
                          f"images are {cfg.data.image_size} px (data.image_size); FID across "
                          "resolutions is not comparable.")
    extractor = extractor or inception(cfg.fid.weights, rt.device)
    mu_r, s_r, n_r, ref = reference_stats(cfg, extractor, rt, show)
    mu_s, s_s, n_s = moments(extractor, _shard(images, rt, cfg.fid.batch_size),
                             len(images), rt, "fid samples", show)
    fid = frechet_distance(mu_s, s_s, mu_r, s_r)
    record = {"fid": round(fid, 4), "n": n_s, "n_ref": n_r, "samples": str(samples),
              "sampling": meta, "reference": ref, "network": extractor.info,
              "seconds": round(timer.elapsed(), 2), "device": str(rt.device)}
    if rt.is_main:
        out = (Path(run_dir) / "eval" if run_dir is not None else samples.parent) / f"fid-{tag}-n{n_s}.json"
        atomic_write_json(out, record)
        record["file"] = str(out)
    return record
