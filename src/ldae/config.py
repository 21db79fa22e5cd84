"""Typed config: schema -> YAML preset (with ``inherit``) -> ``key=value`` overrides -> checks.

The schema is a tree of dataclasses; a preset is a YAML file that may name a parent with
``inherit: NAME``; overrides address leaves as ``section.key=value`` (the value is parsed as
YAML, so ``optim.blr=1.5e-4`` and ``data.hflip=false`` work; a text field takes the text as typed,
so ``data.path=010`` stays '010'). Unknown keys, badly typed values (numbers must be finite,
integers within 64 bits, text one line) and out-of-range choices fail here, before any work, with
a one-line message that names the valid choices; so do unreadable or malformed YAML files.
Cross-field checks (a patch size that does not divide the image, an objective combination the
paper does not define) live in :func:`validate`, which asks each factory.

After dinov2's ``utils/config.py`` (defaults -> file -> CLI) and MAE's derived lr.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import difflib
import math
import re
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yaml

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    source: str = "digits"  # digits | npz | cifar | imagefolder | synthetic
    path: str = ""  # file or folder for npz / cifar / imagefolder
    image_size: int = 32  # pixels of the (square) images the model sees
    num_classes: int = 10  # classes of the dataset (labels 0..C-1)
    train_split: str = "train"  # split that pretraining and the probe's training use
    eval_split: str = "val"  # split the probe and fine-tune report on
    val_size: int = 5000  # the last val_size images of the training set form the val split
    crop: str = "center"  # center | random_resized (pretraining augmentation, Sec. 5)
    rrc_scale: tuple[float, float] = (0.2, 1.0)  # area range of random_resized crops
    hflip: bool = True  # random horizontal flips in pretraining
    limit: int = 0  # use at most this many images of a split (0 = all); for quick runs
    num_workers: int = 0  # DataLoader worker processes (0 = load in the main process)
    synthetic_size: int = 256  # images per split of the synthetic source (tests only)
    on_bad_image: str = "error"  # error (stop, naming the file) | skip (count and list in the run dir)
    max_image_pixels: int = 40_000_000  # a larger image file is a bad image (decompression bomb)


@dataclass
class ModelConfig:
    name: str = "micro"  # a size from ldae.models.registry
    patch_size: int = 4  # pixels per patch side (tokens = (image_size / patch_size)^2)
    adaln: str = "mlp4"  # mlp4 (paper App. A: hidden = width/4) | linear (DiT)
    class_cond: bool = False  # class-conditional (DiT, Tab. 1) or not (the SSL rows)
    label_dropout: float = 0.1  # class-conditional: share of labels dropped (classifier-free guidance)
    encoder_blocks: int = 0  # 0 = half the depth (the paper's split)
    compile: bool = False  # torch.compile the backbone (eager fallback if it fails)


@dataclass
class TokenizerConfig:
    name: str = "pca"  # pca | patch_ae | patch_vae | conv_vae | pixel (Tab. 2, Fig. 5)
    dim: int = 4  # d, latent dim per token
    whiten: bool = False  # off in the paper (V V^T = I); an ablation
    # pca: the latent's global scale, unit (one factor for unit overall std, as the learned
    # tokenizers' latents; the default by docs/open-points.md) | none (raw PCA coordinates). The
    # patch AE/VAE and conv VAE always scale to unit std (LDM's factor); pixel is the identity:
    # neither reads this key
    scale: str = "unit"
    fit_images: int = 50000  # at most this many training images feed the fit
    patches_per_image: int = 0  # 0 = every patch of each image
    path: str = ""  # load a fitted tokenizer from here instead of fitting one
    # gradient-trained tokenizers (patch_ae, patch_vae, conv_vae)
    fit_epochs: float = 20.0  # passes over the fit images
    fit_batch: int = 256  # images per step of the tokenizer fit
    fit_lr: float = 1e-3  # AdamW, warmup then cosine
    patch_batch: int = 1024  # patch_ae / patch_vae: patch rows per optimiser step (0 = a whole image batch)
    kl_weight: float = 1e-6  # patch_vae / conv_vae: weight of KL[q(z|x) || N(0, I)] (LDM's f8 default)
    # conv_vae (LDM-style KL autoencoder): a token is a 2x2 patch of latents, so d = 4 c
    stride: int = 0  # spatial downsampling; 0 = model.patch_size / 2 (the paper: 8 for patch 16)
    width: int = 64  # base channel width of the conv encoder/decoder
    res_blocks: int = 2  # residual blocks per resolution (LDM: 2)
    adversarial: bool = False  # hinge loss from a patch discriminator (LDM / VQGAN)
    adv_weight: float = 0.5  # conv_vae adversarial loss weight
    adv_start: float = 0.5  # fraction of the fit after which the adversarial loss switches on
    perceptual: bool = False  # LPIPS-style loss on VGG16 features; needs perceptual_weights
    perceptual_weight: float = 1.0  # conv_vae perceptual loss weight
    perceptual_weights: str = ""  # local VGG16 state-dict file (torchvision layout); never downloaded
    pretrained: str = ""  # conv_vae: load a pretrained KL autoencoder (diffusers layout) instead of fitting
    # pixel: identity on patches of the image resized to pixel_size (token count kept fixed)
    pixel_size: int = 0  # 0 = data.image_size


@dataclass
class DiffusionConfig:
    schedule: str = "sigma_linear"  # noise schedule (`ldae info` lists them)
    target: str = "image"  # what the network predicts: eps | image | ...
    loss_weight: str = "inv1p_sigma2"  # per-timestep loss weight
    input_space: str = "image"  # latent | image: what the network sees (Tab. 3)
    output_space: str = "image"  # latent | image: where the loss is computed (Tab. 3)
    w_rest: float = 0.1  # Eq. 4 weight of the PCA dims beyond d
    num_steps: int = 1000  # T
    sigma0: float = math.sqrt(1.0 / 3.0)  # the single noise level of the `constant` schedule


@dataclass
class OptimConfig:
    blr: float = 1e-4  # lr = blr * global_batch / 256 (App. A)
    batch_size: int = 256  # global batch: the unit, whatever the number of processes
    accum_steps: int = 1  # gradient accumulation steps per optimizer step
    weight_decay: float = 0.0  # AdamW weight decay (0 in the paper's pretraining)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    epochs: float = 400.0  # pretraining epochs (fractions allowed)
    warmup_epochs: float = 100.0  # linear warmup before the half-cycle cosine
    grad_clip: float = 0.0  # 0 = off
    ema: float = 0.0  # EMA decay of the weights; 0 = off


@dataclass
class TrainConfig:
    seed: int = 0  # seeds every random draw (data order, noise, t, init)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads per process; 0 = the process's share of the usable cores
    log_every: int = 20  # steps between metrics.jsonl lines
    ckpt_every: int = 500  # steps between checkpoints (and one at the end)
    keep_ckpts: int = 2  # newest checkpoints kept (>= 1)
    tensorboard: bool = False  # also log scalars to RUN/tb (needs the tensorboard extra)
    on_nonfinite: str = "stop"  # stop (keep the last good checkpoint) | skip (drop the step)
    max_nonfinite_skips: int = 10  # with skip: stop at the first bad step beyond this many
    # online kNN monitor (engine/monitor.py): every this many steps (and at the end) the encoder
    # at linprobe.t / clean_input embeds a bank of train images and queries from the probe's
    # holdout share of the train split; knn_top1 goes to metrics.jsonl. 0 = off
    monitor_every: int = 0
    monitor_bank: int = 5000  # kNN monitor: train images in its feature bank
    monitor_queries: int = 1000  # kNN monitor: held-out train images it classifies


@dataclass
class LinprobeConfig:
    t: int = 10  # fixed timestep at transfer (App. A)
    noisy: bool = False  # clean input (default) or noisy input at t
    # what "clean input" means for an image-space encoder: projected (decode(encode(x)), the PCA
    # residual removed: the distribution the encoder trained on) | original (the image itself).
    # Latent-input encoders take z0 either way; an exported ViT has its reading baked in
    clean_input: str = "projected"
    blocks: int = 0  # encoder depth k; 0 = the model's encoder split
    blr: float = 0.1  # MAE's LARS base lr; the paper text says 6.4e-3 at batch 16384
    batch_size: int = 256  # probe batch
    epochs: int = 90  # probe epochs (MAE: 90)
    warmup_epochs: int = 10  # probe warmup epochs
    weight_decay: float = 0.0  # LARS weight decay of the head
    momentum: float = 0.9  # LARS momentum
    fast: bool = False  # cache features once, train an lr grid of heads together
    lr_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # blr values of --fast
    # how --fast picks its blr: holdout (on a seeded `holdout` share of the train split, then the
    # chosen head retrained on all of it; val is only reported) | eval (on the reported split
    # itself: optimistically biased, kept to compare with old numbers)
    select: str = "holdout"
    holdout: float = 0.1  # share of the train split that picks the fast probe's blr
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # probe augmentation: random resized crop scale (full protocol)
    encoder: str = "ldae"  # ldae | random | pixels: what produces the features
    # App. A sweeps (``ldae linprobe --sweep``; always the fast protocol). Empty = not swept: the
    # axis takes linprobe.t / noisy / blocks (``--sweep`` fills empty axes with App. A's grids).
    sweep_t: tuple[int, ...] = ()  # fixed t of the "t x input" table (App. A: 0 10 20 40 80)
    sweep_noisy: tuple[bool, ...] = ()  # clean / noisy input rows of that table
    sweep_blocks: tuple[int, ...] = ()  # encoder depths k of the "enc. blocks" table
    sweep_cache_gb: float = 32.0  # feature-cache budget (host memory); over it, cache in float16


@dataclass
class FinetuneConfig:
    """End-to-end fine-tuning (App. B: MAE's protocol plus EMA). ``ldae finetune``."""
    init: str = "ldae"  # ldae (this run's encoder folded at t) | random (same ViT, timm init) | vit
    t: int = 10  # the fixed timestep folded into the encoder (clean input)
    clean_input: str = "projected"  # projected | original, as linprobe.clean_input
    blocks: int = 0  # encoder depth k; 0 = the model's encoder split
    blr: float = 1e-3  # lr = blr x batch / 256: 4e-3 at the paper's batch 1024
    min_lr: float = 1e-6  # floor of the half-cycle cosine (MAE)
    batch_size: int = 1024  # global batch
    accum_steps: int = 1  # gradient accumulation steps
    epochs: float = 100.0  # fine-tuning epochs (App. B: 100)
    warmup_epochs: float = 5.0  # linear warmup epochs
    weight_decay: float = 0.05  # not on biases, norms and the position embedding
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    layer_decay: float = 0.85  # layer-wise lr decay: 0.85 (ViT-B) / 0.65 (ViT-L) in App. B
    drop_path: float = 0.1  # stochastic depth rate
    mixup: float = 0.8  # Beta(alpha) of MixUp; 0 = off
    cutmix: float = 1.0  # Beta(alpha) of CutMix; 0 = off
    randaug: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec, RandAug(9, 0.5); "" = off
    smoothing: float = 0.1  # label smoothing
    reprob: float = 0.25  # random erasing probability (pixel mode)
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop scale
    ema: float = 0.9999  # model EMA decay, evaluated on its own; 0 = off
    head_norm: bool = True  # MAE: average pool -> LayerNorm (fc_norm) -> Linear head
    eval_every: int = 1  # evaluate raw and EMA weights every this many epochs (0 = at the end only)


@dataclass
class VitConfig:
    """An encoder from outside this run (``linprobe.encoder=vit``, ``finetune.init=vit``)."""
    source: str = ""  # an ``ldae export`` dir, or timm:MODEL_NAME (any timm ViT)
    weights: str = ""  # timm:MODEL_NAME's checkpoint file (.safetensors or a torch file); never downloaded


@dataclass
class SampleConfig:
    """Generation from a trained run (``ldae sample``, and the samples ``ldae fid`` scores)."""
    sampler: str = "ddpm"  # ddpm (ancestral, eta = 1) | ddim (eta below; 0 = deterministic)
    steps: int = 250  # reverse steps, evenly spaced over [0, T-1] (DiT's respacing)
    eta: float = 0.0  # ddim only: 0 = DDIM, 1 = the ancestral posterior variance
    guidance: float = 1.0  # classifier-free guidance scale for class-conditional runs; 1 = none
    n: int = 64  # images to generate (``ldae sample``)
    batch_size: int = 256  # global batch of the sampler
    seed: int = 0  # seeds the sampler's noise and classes
    ema: bool = True  # the EMA weights when the run has them
    classes: str = "balanced"  # balanced (image i gets class i mod C) | random
    grid: int = 100  # at most this many images in the PNG grid


@dataclass
class FidConfig:
    """FID (Heusel et al. 2017) of a run's samples against its training images (Tab. 1)."""
    weights: str = ""  # local Inception-V3 FID weights file (TF 2015-12-05, torch-fidelity/pytorch-fid format)
    n: int = 10000  # samples scored (the paper: 50,000)
    ref_split: str = "train"  # the reference images: this split of the run's data
    ref_limit: int = 0  # at most this many reference images (0 = the whole split)
    batch_size: int = 100  # Inception batch
    cache_dir: str = ""  # reference statistics cache; "" = $LDAE_CACHE or ~/.cache/ldae, then /fid


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    linprobe: LinprobeConfig = field(default_factory=LinprobeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    vit: VitConfig = field(default_factory=VitConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    fid: FidConfig = field(default_factory=FidConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# Choices of string fields. Registries are consulted lazily so that this module stays import-light.
def _choices() -> dict[str, list[str]]:
    from .data.datasets import SOURCES
    from .diffusion import objective
    from .models.registry import MODEL_SIZES
    from .tokenizers import TOKENIZERS

    return {
        "data.source": sorted(SOURCES),
        "data.crop": ["center", "random_resized"],
        "data.on_bad_image": ["error", "skip"],
        "train.on_nonfinite": ["stop", "skip"],
        "model.name": list(MODEL_SIZES),
        "model.adaln": ["mlp4", "linear"],
        "tokenizer.name": sorted(TOKENIZERS),
        "tokenizer.scale": ["none", "unit"],
        "diffusion.schedule": sorted(objective.SCHEDULES),
        "diffusion.target": sorted(objective.TARGETS),
        "diffusion.loss_weight": sorted(objective.LOSS_WEIGHTS),
        "diffusion.input_space": ["latent", "image"],
        "diffusion.output_space": ["latent", "image"],
        "train.device": ["auto", "cpu", "cuda"],
        "linprobe.encoder": ["ldae", "random", "pixels", "vit"],
        "linprobe.clean_input": ["original", "projected"],
        "linprobe.select": ["holdout", "eval"],
        "finetune.clean_input": ["original", "projected"],
        "finetune.init": ["ldae", "random", "vit"],
        "sample.sampler": ["ddpm", "ddim"],
        "sample.classes": ["balanced", "random"],
        "fid.ref_split": ["train", "val"],
    }


PRESET_KINDS = ("pretrain", "scale", "trajectory")


def preset_names(kind: str = "pretrain") -> list[str]:
    """Presets of one kind: ``pretrain`` (``-c NAME``), ``scale`` (``ldae trajectory --scale``) or
    ``trajectory`` (the paper's rows, ``ldae trajectory --rows``)."""
    return sorted(p.stem for p in (PRESET_DIR / kind).glob("*.yaml"))


def shown(value: Any, limit: int = 120) -> str:
    """``value`` for an error message: one line (control characters escaped), at most ``limit``
    characters, never raising (a 5000-digit int has no ``repr``)."""
    try:
        text = str(value) if isinstance(value, (str, PurePath, BaseException)) else repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _quoted(value: Any) -> str:
    """``shown``, with text in quotes (so that 'abc' and abc-the-number read apart)."""
    return f"'{shown(value)}'" if isinstance(value, str) else shown(value)


def _is_file(p: Path) -> bool:
    """``p.is_file()``, False for names the OS refuses (too long, embedded NUL)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _find_preset(name: str, kind: str = "pretrain") -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not _is_file(p):
            raise ConfigError(f"config file {shown(p)} does not exist; give a path to a YAML file "
                              f"or one of the presets: {', '.join(preset_names(kind))}.")
        return p
    if "/" in name and name.split("/", 1)[0] in PRESET_KINDS:  # inherit: pretrain/cifar10-gpu
        kind, name = name.split("/", 1)
    hit = PRESET_DIR / kind / f"{name}.yaml"
    if not _is_file(hit):
        names = preset_names(kind)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        what = {"pretrain": "preset", "scale": "scale", "trajectory": "trajectory row"}[kind]
        raise ConfigError(f"unknown {what} '{shown(name)}'.{hint} Choices: {', '.join(names)}"
                          f"{' (or give a path to a .yaml file)' if kind == 'pretrain' else ''}.")
    return hit


def _read_yaml(name: str, seen: tuple[str, ...] = (), kind: str = "pretrain") -> dict[str, Any]:
    path = _find_preset(name, kind)
    if str(path.resolve()) in seen:
        raise ConfigError(f"preset {shown(path)} inherits from itself (chain: "
                          f"{shown(' -> '.join(seen), 600)}).")
    raw = copy.deepcopy(_parse_yaml(str(path.resolve()), path.stat().st_mtime_ns))
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown(path)} must hold a mapping of sections (data:, model:, ...), "
                          f"not a {type(raw).__name__}.")
    parent = raw.pop("inherit", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{shown(path)}: inherit: {shown(parent)} must name a preset or a .yaml "
                          "file, e.g. inherit: cifar10-cpu.")
    if path.parent.resolve().parent == PRESET_DIR.resolve():  # a bare parent name: same kind
        kind = path.parent.name
    base = _read_yaml(parent, seen + (str(path.resolve()),), kind)
    return _merge(base, raw)


def _yaml_error(e: Exception) -> str:
    """A PyYAML error (several lines with a source snippet) as one line: what it was reading
    and where, then the problem and where."""
    def at(mark) -> str:
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    problem, context = getattr(e, "problem", None), getattr(e, "context", None)
    if not problem and not context:
        return shown(" ".join(str(e).split()), 200)
    head = f"{shown(context, 100)}{at(getattr(e, 'context_mark', None))}: " if context else ""
    return f"{head}{shown(problem or '', 200)}{at(getattr(e, 'problem_mark', None))}"


@functools.lru_cache(maxsize=512)
def _parse_yaml(path: str, mtime_ns: int) -> Any:
    """One parse per file version (the trajectory reads each row's chain many times)."""
    return _load_yaml_file(path)


def _load_yaml_file(path: str) -> Any:
    """A YAML file's content (None for an empty file); every failure, of reading or of parsing,
    is a ConfigError of one line that names the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{shown(path)} is not UTF-8 text; a config must be a YAML file.") from None
    except OSError as e:
        raise ConfigError(f"cannot read {shown(path)}: {shown(e.strerror or e)}.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse YAML in {shown(path)}: {_yaml_error(e)}.") from None
    except Exception as e:  # noqa: BLE001 -- only yaml.safe_load runs here
        # PyYAML's constructors raise plain exceptions for scalars that match a tag but do not
        # convert: a date 2001-13-45 or '!!float abc' (ValueError), an int of more than 4300
        # digits (ValueError), '!!bool' (KeyError), '!!timestamp x' (AttributeError); deep
        # nesting raises RecursionError
        raise ConfigError(f"cannot parse YAML in {shown(path)}: a value does not convert "
                          f"({shown(e, 200)}).") from None
    return {} if raw is None else raw  # an empty file is an empty mapping


def read_config_file(path: Path) -> dict[str, Any]:
    """A saved config (a run dir's config.yaml) as a dict; unreadable, malformed or non-mapping
    files raise a ConfigError that names the file."""
    path = Path(path)
    if not _is_file(path):
        raise ConfigError(f"config file {shown(path)} does not exist.")
    raw = _load_yaml_file(str(path))  # not cached: a run rewrites its config.yaml
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown(path)} must hold a mapping of sections (data:, model:, ...), "
                          f"not a {type(raw).__name__}; restore it from a backup or rerun.")
    return raw


def read_preset(name: str, kind: str = "pretrain") -> dict[str, Any]:
    """The merged YAML of a preset (its ``inherit`` chain resolved), not yet applied."""
    return _read_yaml(name, kind=kind)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_FLOAT_RE = re.compile(r"[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|inf|infinity|nan)", re.IGNORECASE)
_INT_LIMIT = 2 ** 63  # every int field ends up in torch / numpy, which hold 64 bits


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``typ``; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -_INT_LIMIT < value < _INT_LIMIT:
                raise ConfigError(f"{key}={shown(value, 40)} is out of range: an integer setting "
                                  "must lie within +-9.2e18 (64 bits).")
            return value
    elif typ is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                out = float(value)
            except OverflowError:  # an int beyond 1.8e308
                out = math.inf
            if not math.isfinite(out):
                raise ConfigError(f"{key}={shown(value, 40)} is not a finite number; give a finite "
                                  f"value (e.g. {key}=1.0).")
            return out
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                text = str(value)
            except ValueError:  # an int of more than 4300 digits
                text = None
            if text is not None:
                bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
                if bad is not None:  # NUL breaks every file API; a line break, every message
                    raise ConfigError(f"{key}='{shown(text)}' holds the control character "
                                      f"{bad.encode('unicode_escape').decode('ascii')}; a config "
                                      "value must be one line of text.")
                return text
    elif origin is tuple:
        args = typing.get_args(typ)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    tname = getattr(typ, "__name__", str(typ))
    hint = {bool: "true or false", int: "a whole number", float: "a number, e.g. 1e-4",
            str: "text"}.get(typ, "")
    if origin is tuple:
        args = typing.get_args(typ)
        n = "" if args[-1] is Ellipsis else f"{len(args)} "
        hint = f"a list of {n}{args[0].__name__} values, e.g. {key}=[...]"
    raise ConfigError(f"{key}={_quoted(value)} has the wrong type: expected {tname}"
                      f"{f' ({hint})' if hint else ''}.")


class _Item:
    """An override's value as YAML reads it, with the text as typed: a str field takes the text
    unless YAML reads it as a string (``data.path=010`` is the folder '010', not the octal int 8;
    ``data.train_split=no`` is 'no', not False; ``data.path=C:`` is 'C:', not a mapping)."""
    __slots__ = ("value", "text")

    def __init__(self, value: Any, text: str):
        self.value, self.text = value, text

    def for_type(self, typ: Any) -> Any:
        if typ is str and not isinstance(self.value, str):
            return self.text.strip()
        return self.value


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        where = f"'{prefix[:-1]}'" if prefix else "a config"
        raise ConfigError(f"{where} must be a mapping of keys, not {shown(data, 60)}.")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for k, v in data.items():
        key = f"{prefix}{shown(k, 80)}"
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}'.{hint} Valid keys here: "
                              f"{', '.join(prefix + n for n in names)}.")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                first = dataclasses.fields(cur)[0].name
                shown_v = shown(v.value if isinstance(v, _Item) else v, 60)
                raise ConfigError(f"'{key}' is a section, not a value ({key}={shown_v}); set its "
                                  f"keys, e.g. {key}.{first}=... (in YAML: '{key}:' with indented keys).")
            _apply(cur, v, prefix=f"{key}.")
        else:
            if isinstance(v, _Item):
                v = v.for_type(hints[k])
            setattr(obj, k, _coerce(v, hints[k], key))


def _yaml_value(raw: str) -> Any:
    """An override's value text as YAML; text YAML cannot read (or convert) stays text."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except Exception:  # noqa: BLE001 -- YAML errors, and PyYAML's constructors' plain exceptions
        # (2001-13-45, '!!float abc', '!!bool', > 4300 digits, deep nesting): see _parse_yaml
        return raw


def _override_tree(items: list[str], keep_text: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override '{shown(item)}' must look like section.key=value "
                              "(e.g. optim.epochs=10).")
        key, _, raw = item.partition("=")
        value = _yaml_value(raw)
        node = out
        parts = key.strip().split(".")
        if any(not p.strip() for p in parts):
            raise ConfigError(f"override key '{shown(key)}' is malformed (in '{shown(item)}'); use "
                              "section.key=value, e.g. optim.epochs=10.")
        parts = [p.strip() for p in parts]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{shown(item)}' conflicts with an earlier override "
                                  f"of '{shown(p)}'.")
        node[parts[-1]] = _Item(value, raw) if keep_text else value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``section.key=value`` items as a nested dict, each value parsed as YAML."""
    return _override_tree(items, keep_text=False)


def load_config(preset: str | None = None, overrides: list[str] | None = None,
                check: bool = True, base: dict[str, Any] | None = None,
                layers: list[dict[str, Any]] | None = None) -> Config:
    """Build a config: defaults, then ``base`` (e.g. a run's saved config) or ``preset`` (a name
    or a YAML path), then each of ``layers`` (plain dicts, in order), then ``overrides``."""
    cfg = Config()
    if base is not None:
        _apply(cfg, base)
    if preset:
        _apply(cfg, _read_yaml(preset))
    for layer in layers or []:
        _apply(cfg, layer)
    _apply(cfg, _override_tree(list(overrides or []), keep_text=True))
    if check:
        validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], check: bool = True) -> Config:
    return load_config(None, None, check=check, base=data)


def _warmup_fix(section: str, epochs: float, integer: bool = False) -> str:
    """The end of a warmup error: the override that fixes it (a quarter of training)."""
    if not (isinstance(epochs, (int, float)) and epochs > 0):
        return f"; {section}.epochs must be > 0."
    quarter = int(epochs // 4) if integer else round(epochs / 4, 4)
    return (f"; when shortening a run, set the warmup too, e.g. {section}.warmup_epochs={quarter:g} "
            "(a quarter of training).")


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Cross-field checks. Each names the keys involved and the valid alternatives."""
    for key, choices in _choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key}='{shown(value)}' is not valid.{hint} Choices: {', '.join(choices)}.")
    d, m, tk, o, lp = cfg.data, cfg.model, cfg.tokenizer, cfg.optim, cfg.linprobe
    _need(d.image_size > 0 and m.patch_size > 0, "data.image_size and model.patch_size must be > 0.")
    _need(d.image_size % m.patch_size == 0,
          f"model.patch_size={m.patch_size} must divide data.image_size={d.image_size}.")
    _need(d.num_classes >= 2, f"data.num_classes={d.num_classes} must be at least 2.")
    _need(0.0 < d.rrc_scale[0] <= d.rrc_scale[1] <= 1.0,
          f"data.rrc_scale={list(d.rrc_scale)} must satisfy 0 < lo <= hi <= 1.")
    _need(d.source in ("digits", "synthetic") or d.path != "",
          f"data.source={d.source} needs data.path=... (a file or folder).")
    D = 3 * m.patch_size ** 2
    _need(1 <= tk.dim <= D, f"tokenizer.dim={tk.dim} must be in [1, D={D}] "
          f"(D = 3 * model.patch_size^2 with patch_size={m.patch_size}).")
    _need(0.0 <= m.label_dropout < 1.0, "model.label_dropout must be in [0, 1).")
    from .models.registry import MODEL_SIZES
    depth = MODEL_SIZES[m.name].depth
    _need(0 <= m.encoder_blocks <= depth,
          f"model.encoder_blocks={m.encoder_blocks} must be in [0, {depth}] for model {m.name} "
          "(0 = half the depth).")
    _need(0 <= lp.blocks <= depth, f"linprobe.blocks={lp.blocks} must be in [0, {depth}].")
    _need(o.batch_size > 0 and o.accum_steps > 0, "optim.batch_size and optim.accum_steps must be > 0.")
    _need(o.batch_size % o.accum_steps == 0,
          f"optim.batch_size={o.batch_size} must be divisible by optim.accum_steps={o.accum_steps}.")
    _need(o.epochs > 0 and 0 <= o.warmup_epochs <= o.epochs,
          f"optim.warmup_epochs={o.warmup_epochs} must be in [0, optim.epochs={o.epochs}]"
          + _warmup_fix("optim", o.epochs))
    _need(0.0 <= o.ema < 1.0, f"optim.ema={o.ema} must be in [0, 1) (0 turns EMA off).")
    _need(o.blr > 0 and lp.blr > 0, "optim.blr and linprobe.blr must be > 0.")
    _need(0 <= lp.t < cfg.diffusion.num_steps,
          f"linprobe.t={lp.t} must be in [0, diffusion.num_steps={cfg.diffusion.num_steps}).")
    _need(lp.epochs > 0 and 0 <= lp.warmup_epochs <= lp.epochs,
          f"linprobe.warmup_epochs={lp.warmup_epochs} must be in [0, linprobe.epochs={lp.epochs}]"
          + _warmup_fix("linprobe", lp.epochs, integer=True))
    _need(len(lp.lr_grid) > 0 and all(v > 0 for v in lp.lr_grid), "linprobe.lr_grid must be positive.")
    _need(0.0 < lp.holdout < 1.0, f"linprobe.holdout={lp.holdout} must be in (0, 1): the share of "
          "the train split that selects the fast probe's blr (e.g. 0.1).")
    T = cfg.diffusion.num_steps
    _need(all(0 <= v < T for v in lp.sweep_t),
          f"linprobe.sweep_t={list(lp.sweep_t)} must hold timesteps in [0, diffusion.num_steps={T}).")
    _need(all(1 <= v <= depth for v in lp.sweep_blocks),
          f"linprobe.sweep_blocks={list(lp.sweep_blocks)} must hold encoder depths in [1, {depth}] "
          f"(model {m.name} has {depth} blocks).")
    for key in ("sweep_t", "sweep_noisy", "sweep_blocks"):
        vals = getattr(lp, key)
        _need(len(set(vals)) == len(vals), f"linprobe.{key}={list(vals)} repeats a value.")
    _need(lp.sweep_cache_gb > 0, f"linprobe.sweep_cache_gb={lp.sweep_cache_gb} must be > 0.")
    ft = cfg.finetune
    _need(0 <= ft.t < cfg.diffusion.num_steps,
          f"finetune.t={ft.t} must be in [0, diffusion.num_steps={cfg.diffusion.num_steps}).")
    _need(0 <= ft.blocks <= depth, f"finetune.blocks={ft.blocks} must be in [0, {depth}].")
    _need(ft.blr > 0 and ft.min_lr >= 0, "finetune.blr must be > 0 and finetune.min_lr >= 0.")
    _need(ft.batch_size > 0 and ft.accum_steps > 0 and ft.batch_size % ft.accum_steps == 0,
          f"finetune.batch_size={ft.batch_size} must be > 0 and divisible by "
          f"finetune.accum_steps={ft.accum_steps}.")
    _need(ft.epochs > 0 and 0 <= ft.warmup_epochs <= ft.epochs,
          f"finetune.warmup_epochs={ft.warmup_epochs} must be in [0, finetune.epochs={ft.epochs}]"
          + _warmup_fix("finetune", ft.epochs))
    _need(0 < ft.layer_decay <= 1, f"finetune.layer_decay={ft.layer_decay} must be in (0, 1] (1 = off).")
    _need(0 <= ft.drop_path < 1 and 0 <= ft.reprob <= 1 and 0 <= ft.smoothing < 1,
          "finetune.drop_path and finetune.smoothing must be in [0, 1), finetune.reprob in [0, 1].")
    _need(ft.mixup >= 0 and ft.cutmix >= 0, "finetune.mixup and finetune.cutmix must be >= 0 (0 = off).")
    _need((ft.mixup == 0 and ft.cutmix == 0) or (ft.batch_size // ft.accum_steps) % 2 == 0,
          f"MixUp/CutMix pair each image with another of its batch: the micro-batch "
          f"finetune.batch_size / accum_steps = {ft.batch_size // ft.accum_steps} must be even "
          "(or set finetune.mixup=0 finetune.cutmix=0).")
    _need(0 <= ft.ema < 1, f"finetune.ema={ft.ema} must be in [0, 1) (0 turns EMA off).")
    _need(0.0 < ft.rrc_scale[0] <= ft.rrc_scale[1] <= 1.0,
          f"finetune.rrc_scale={list(ft.rrc_scale)} must satisfy 0 < lo <= hi <= 1.")
    _need(ft.eval_every >= 0, "finetune.eval_every must be >= 0 (0 = evaluate at the end only).")
    _need(not ft.randaug or ft.randaug.startswith("rand-"),
          f"finetune.randaug='{shown(ft.randaug)}' must be a timm RandAugment spec such as "
          "'rand-m9-mstd0.5-inc1' (RandAug(9, 0.5)), or '' for none.")
    uses_vit = lp.encoder == "vit" or ft.init == "vit"
    _need(not uses_vit or cfg.vit.source != "",
          "linprobe.encoder=vit / finetune.init=vit need vit.source=... (an `ldae export` dir or "
          "timm:MODEL_NAME with vit.weights=FILE); on the CLI: --from SRC [--weights FILE].")
    _need(not (lp.encoder == "vit" and lp.noisy),
          "linprobe.noisy=true needs the run's own denoiser (an exported ViT has no noise process); "
          "probe the run dir instead (linprobe.encoder=ldae).")
    _need(cfg.train.max_nonfinite_skips >= 0, "train.max_nonfinite_skips must be >= 0.")
    _need(cfg.train.keep_ckpts >= 1, f"train.keep_ckpts={cfg.train.keep_ckpts} must be >= 1 (the "
          "newest checkpoints kept; a run needs at least its last one to resume).")
    _need(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0 (0 = load in the "
          "main process).")
    _need(d.max_image_pixels >= 1, f"data.max_image_pixels={d.max_image_pixels} must be >= 1.")
    _need(cfg.train.monitor_every >= 0 and cfg.train.monitor_bank > 0 and cfg.train.monitor_queries > 0,
          "train.monitor_every must be >= 0 (0 = off), train.monitor_bank and "
          "train.monitor_queries > 0.")
    _need(cfg.train.threads >= 0 and cfg.train.log_every > 0 and cfg.train.ckpt_every > 0,
          "train.threads >= 0, train.log_every > 0 and train.ckpt_every > 0 are required.")
    sp, fd = cfg.sample, cfg.fid
    _need(1 <= sp.steps <= cfg.diffusion.num_steps,
          f"sample.steps={sp.steps} must be in [1, diffusion.num_steps={cfg.diffusion.num_steps}].")
    _need(0.0 <= sp.eta <= 1.0, f"sample.eta={sp.eta} must be in [0, 1] (0 = DDIM, 1 = ancestral).")
    _need(sp.guidance >= 0.0, f"sample.guidance={sp.guidance} must be >= 0 (1 = no guidance).")
    _need(sp.n > 0 and sp.batch_size > 0 and sp.grid >= 0,
          "sample.n and sample.batch_size must be > 0, sample.grid >= 0.")
    _need(fd.n >= 2 and fd.batch_size > 0 and fd.ref_limit >= 0,
          "fid.n must be >= 2, fid.batch_size > 0 and fid.ref_limit >= 0.")
    from .diffusion.objective import check_combination
    check_combination(cfg.diffusion)
    from .tokenizers import TOKENIZERS
    _need(tk.fit_epochs > 0 and tk.fit_batch > 0 and tk.fit_lr > 0 and tk.kl_weight >= 0,
          "tokenizer.fit_epochs, tokenizer.fit_batch and tokenizer.fit_lr must be > 0, "
          "tokenizer.kl_weight >= 0.")
    dz = cfg.diffusion
    _need(tk.name == "pca" or dz.input_space == "latent" and dz.output_space == "latent",
          f"diffusion.input_space/output_space=image needs the PCA tokenizer (inverse PCA maps "
          f"the noisy latent to pixels and Eq. 4 needs its full basis); tokenizer.name={tk.name} "
          "works in latent space only: set diffusion.input_space=latent diffusion.output_space=latent.")
    try:
        TOKENIZERS[tk.name].check_config(cfg)
    except OSError as e:  # a path check on a name the OS refuses (e.g. too long)
        raise ConfigError(f"tokenizer.name={tk.name}: a path setting cannot be checked "
                          f"({shown(e, 200)}); give an existing file.") from None


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


#: the settings that name files or folders: a run's saved config holds them absolute, so the run
#: dir works from any directory (``timm:NAME`` sources are names, not paths)
PATH_KEYS = ("data.path", "tokenizer.path", "tokenizer.perceptual_weights", "tokenizer.pretrained",
             "vit.source", "vit.weights", "fid.weights", "fid.cache_dir")


def absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """A copy of ``cfg`` with every ``PATH_KEYS`` setting made absolute (relative to ``base``,
    default the current directory; ``~`` expanded; symlinks kept as named)."""
    import os

    out = copy.deepcopy(cfg)
    root = Path(base) if base is not None else Path.cwd()
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(out, section), name)
        if value and not value.startswith("timm:"):
            setattr(getattr(out, section), name,
                    os.path.normpath(str(root / Path(value).expanduser())))
    return out


def describe_keys(section: str | None = None) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` of every setting (of one section), read from the schema
    itself: the dataclass fields, their defaults and the comment on (or just above) each field's
    line in this file, so the listing cannot go stale."""
    import inspect

    rows, choices, default = [], _choices(), Config()
    for sec in dataclasses.fields(Config):
        if section and sec.name != section:
            continue
        cls = type(getattr(default, sec.name))
        lines, comments, above = inspect.getsource(cls).splitlines(), {}, []
        for ln in lines[1:]:
            text = ln.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# ").strip())
                continue
            m = re.match(r"(\w+)\s*:", text)
            if m:
                tail = text.split("  # ", 1)[1].strip() if "  # " in text else ""
                comments[m.group(1)] = tail or " ".join(above)
            above = []
        defaults = getattr(default, sec.name)
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            shown_value = yaml.safe_dump(list(value) if isinstance(value, tuple) else value,
                                         default_flow_style=True).strip().removesuffix("...").strip()
            key = f"{sec.name}.{f.name}"
            meaning = comments.get(f.name, "")
            if key in choices:
                meaning = f"{meaning} [choices: {', '.join(map(str, choices[key]))}]".strip()
            rows.append((key, shown_value, meaning))
    if section and not rows:
        names = [f.name for f in dataclasses.fields(Config)]
        raise ConfigError(f"no config section '{shown(section)}'; sections: {', '.join(names)}.")
    return rows


def diff_configs(a: Config, b: Config) -> list[str]:
    """Leaf keys whose values differ, as ``key: a -> b`` lines (path settings compared as
    absolute paths, so a run saved with absolute paths matches the same relative ones)."""
    a, b = absolute_paths(a), absolute_paths(b)
    out = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict):
            for k in x:
                walk(x[k], y.get(k), f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix[:-1]}: {y!r} -> {x!r}")

    walk(b.to_dict(), a.to_dict(), "")
    return out


__all__ = ["absolute_paths", "describe_keys", "PATH_KEYS", "Config", "load_config", "read_preset", "PRESET_KINDS", "config_from_dict", "validate", "dump_yaml", "preset_names",
           "parse_overrides", "diff_configs"]
