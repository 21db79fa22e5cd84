"""The config schema: one dataclass per section, each field with its default and meaning.

The comment on (or just above) a field is its documentation (``ldae info --keys`` reads it from
this file). Two markers put the rules that are facts about a key next to the key itself:

- ``one_of(default, choices)``: the key takes one of a fixed set of values. Keys whose values are
  the names in a component's registry (``tokenizer.name``, ``diffusion.target``, ...) are not
  listed here: the component registers them (:func:`ldae.config.checks.register_choices`).
- ``runtime(default)`` (or ``one_of(..., runtime=True)``): a run-time setting that does not change
  what a run computes (logging, checkpoint cadence, devices, threads, workers), so a resume may
  change it (:func:`resume_free_keys`).

This module imports nothing of ldae: it is the leaf every other layer builds on.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any

#: field metadata: the fixed choices of a text key
CHOICES = "choices"
#: field metadata: a run-time key, which a resume may change
RUNTIME = "runtime"


class Space(enum.StrEnum):
    """Where tokens live (Tab. 3): the tokenizer's latent (d per token) or image tokens (D = 3 p^2
    per token). A ``StrEnum``: ``Space.IMAGE == "image"``, so configs keep plain text."""
    LATENT = "latent"
    IMAGE = "image"


SPACES = tuple(s.value for s in Space)


def one_of(default: str, choices: tuple[str, ...], runtime: bool = False) -> Any:
    """A text field that takes one of ``choices`` (listed in this order in error messages)."""
    assert default in choices, (default, choices)
    return field(default=default, metadata={CHOICES: tuple(choices), RUNTIME: runtime})


def runtime(default: Any) -> Any:
    """A run-time field: it changes how a run goes (logs, checkpoints, devices), not what it
    computes, so a resume may change it."""
    return field(default=default, metadata={RUNTIME: True})


@dataclass
class DataConfig:
    source: str = "digits"  # digits | npz | cifar | imagefolder | synthetic
    path: str = ""  # file or folder for npz / cifar / imagefolder
    image_size: int = 32  # pixels of the (square) images the model sees
    num_classes: int = 10  # classes of the dataset (labels 0..C-1)
    train_split: str = "train"  # split that pretraining and the probe's training use
    eval_split: str = "val"  # split the probe and fine-tune report on
    val_size: int = 5000  # the last val_size images of the training set form the val split
    # center | random_resized (pretraining augmentation, Sec. 5)
    crop: str = one_of("center", ("center", "random_resized"))
    rrc_scale: tuple[float, float] = (0.2, 1.0)  # area range of random_resized crops
    hflip: bool = True  # random horizontal flips in pretraining
    limit: int = 0  # use at most this many images of a split (0 = all); for quick runs
    num_workers: int = runtime(0)  # DataLoader worker processes (0 = load in the main process)
    synthetic_size: int = 256  # images per split of the synthetic source (tests only)
    # error (stop, naming the file) | skip (count and list in the run dir)
    on_bad_image: str = one_of("error", ("error", "skip"), runtime=True)
    max_image_pixels: int = runtime(40_000_000)  # a larger image file is a bad image (decompression bomb)


@dataclass
class ModelConfig:
    name: str = "micro"  # a size from ldae.models.registry
    patch_size: int = 4  # pixels per patch side (tokens = (image_size / patch_size)^2)
    adaln: str = one_of("mlp4", ("mlp4", "linear"))  # mlp4 (paper App. A: hidden = width/4) | linear (DiT)
    class_cond: bool = False  # class-conditional (DiT, Tab. 1) or not (the SSL rows)
    label_dropout: float = 0.1  # class-conditional: share of labels dropped (classifier-free guidance)
    encoder_blocks: int = 0  # 0 = half the depth (the paper's split)
    compile: bool = False  # torch.compile the backbone (eager fallback if it fails)


@dataclass
class TokenizerConfig:
    name: str = "pca"  # the tokenizer (Tab. 2, Fig. 5): a name in ldae.tokenizers.TOKENIZERS
    dim: int = 4  # d, latent dim per token
    whiten: bool = False  # off in the paper (V V^T = I); an ablation
    # pca: the latent's global scale, unit (one factor for unit overall std, as the learned
    # tokenizers' latents; the default by docs/open-points.md) | none (raw PCA coordinates). The
    # patch AE/VAE and conv VAE always scale to unit std (LDM's factor); pixel is the identity:
    # neither reads this key
    scale: str = one_of("unit", ("none", "unit"))
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
    input_space: str = one_of("image", SPACES)  # latent | image: what the network sees (Tab. 3)
    # latent | image: where the loss is computed (Tab. 3)
    output_space: str = one_of("image", SPACES)
    w_rest: float = 0.1  # Eq. 4 weight of the PCA dims beyond d
    num_steps: int = 1000  # T
    sigma0: float = math.sqrt(1.0 / 3.0)  # the single noise level of the `constant` schedule


@dataclass
class ObjectiveConfig:
    """What pretraining optimises: the denoising objective that ``diffusion`` describes (every row
    of the deconstruction, the l-DAE included), or a baseline of Tab. 4 on the same ViT."""
    name: str = "diffusion"  # diffusion | mae | moco_v3 (names registered by ldae.objectives)
    mask_ratio: float = 0.75  # mae: share of each image's patches hidden from the encoder
    norm_pix: bool = True  # mae: the target is each patch normalised by its own mean and std
    temperature: float = 0.2  # moco_v3: InfoNCE temperature tau
    momentum: float = 0.99  # moco_v3: the momentum encoder's m at the start (cosine to 1)
    proj_dim: int = 256  # moco_v3: output dim of the projection and prediction MLPs
    proj_hidden: int = 4096  # moco_v3: their hidden width
    frozen_patch_embed: bool = False  # moco_v3: the random patch projection, never trained


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
    device: str = one_of("auto", ("auto", "cpu", "cuda"), runtime=True)  # auto | cpu | cuda
    threads: int = runtime(0)  # torch CPU threads per process; 0 = the process's share of the usable cores
    log_every: int = runtime(20)  # steps between metrics.jsonl lines
    ckpt_every: int = runtime(500)  # steps between checkpoints (and one at the end)
    keep_ckpts: int = runtime(2)  # newest checkpoints kept (>= 1)
    tensorboard: bool = runtime(False)  # also log scalars to RUN/tb (needs the tensorboard extra)
    # stop (keep the last good checkpoint) | skip (drop the step)
    on_nonfinite: str = one_of("stop", ("stop", "skip"), runtime=True)
    max_nonfinite_skips: int = runtime(10)  # with skip: stop at the first bad step beyond this many
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
    clean_input: str = one_of("projected", ("original", "projected"))
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
    select: str = one_of("holdout", ("holdout", "eval"))
    holdout: float = 0.1  # share of the train split that picks the fast probe's blr
    # probe augmentation: random resized crop scale (full protocol)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    # ldae | random | pixels: what produces the features
    encoder: str = one_of("ldae", ("ldae", "random", "pixels", "vit"))
    # App. A sweeps (``ldae linprobe --sweep``; always the fast protocol). Empty = not swept: the
    # axis takes linprobe.t / noisy / blocks (``--sweep`` fills empty axes with App. A's grids).
    sweep_t: tuple[int, ...] = ()  # fixed t of the "t x input" table (App. A: 0 10 20 40 80)
    sweep_noisy: tuple[bool, ...] = ()  # clean / noisy input rows of that table
    sweep_blocks: tuple[int, ...] = ()  # encoder depths k of the "enc. blocks" table
    sweep_cache_gb: float = 32.0  # feature-cache budget (host memory); over it, cache in float16


@dataclass
class FinetuneConfig:
    """End-to-end fine-tuning (App. B: MAE's protocol plus EMA). ``ldae finetune``."""
    # ldae (this run's encoder folded at t) | random (same ViT, timm init) | vit
    init: str = one_of("ldae", ("ldae", "random", "vit"))
    t: int = 10  # the fixed timestep folded into the encoder (clean input)
    # projected | original, as linprobe.clean_input
    clean_input: str = one_of("projected", ("original", "projected"))
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
    # ddpm (ancestral, eta = 1) | ddim (eta below; 0 = deterministic)
    sampler: str = one_of("ddpm", ("ddpm", "ddim"))
    steps: int = 250  # reverse steps, evenly spaced over [0, T-1] (DiT's respacing)
    eta: float = 0.0  # ddim only: 0 = DDIM, 1 = the ancestral posterior variance
    guidance: float = 1.0  # classifier-free guidance scale for class-conditional runs; 1 = none
    n: int = 64  # images to generate (``ldae sample``)
    batch_size: int = 256  # global batch of the sampler
    seed: int = 0  # seeds the sampler's noise and classes
    ema: bool = True  # the EMA weights when the run has them
    # balanced (image i gets class i mod C) | random
    classes: str = one_of("balanced", ("balanced", "random"))
    grid: int = 100  # at most this many images in the PNG grid


@dataclass
class FidConfig:
    """FID (Heusel et al. 2017) of a run's samples against its training images (Tab. 1)."""
    # local Inception-V3 FID weights file (TF 2015-12-05, torch-fidelity/pytorch-fid format)
    weights: str = ""
    n: int = 10000  # samples scored (the paper: 50,000)
    ref_split: str = one_of("train", ("train", "val"))  # the reference images: this split of the run's data
    ref_limit: int = 0  # at most this many reference images (0 = the whole split)
    batch_size: int = 100  # Inception batch
    cache_dir: str = ""  # reference statistics cache; "" = $LDAE_CACHE or ~/.cache/ldae, then /fid


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
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


def fields_of(cfg: Config | None = None):
    """Every leaf field as ``(key, dataclasses.Field)``, in schema order (``data.source`` first)."""
    cfg = cfg or Config()
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(cfg, sec.name)):
            yield f"{sec.name}.{f.name}", f


def fixed_choices() -> dict[str, tuple[str, ...]]:
    """``key -> choices`` of every ``one_of`` field."""
    return {k: f.metadata[CHOICES] for k, f in fields_of() if CHOICES in f.metadata}


def resume_free_keys() -> tuple[str, ...]:
    """The run-time keys (``runtime``): a resume may change them without ``--allow-config-change``."""
    return tuple(k for k, f in fields_of() if f.metadata.get(RUNTIME))
