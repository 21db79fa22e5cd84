"""The auxiliary losses of an LDM / VQGAN autoencoder: hinge GAN losses with a PatchGAN
discriminator, VQGAN's adaptive generator weight, and an LPIPS-style perceptual loss.

Used by the ``conv_vae`` tokenizer (SPEC §4) to retrace the paper's Tab. 1 (Sec. 4.1: "remove
VQGAN perceptual loss", "remove VQGAN adversarial loss"). Both are off by default.

Hinge losses (VQGAN, Esser et al. 2021; after Lim & Ye 2017), on discriminator logits:

    L_D = 1/2 ( E[relu(1 - D(x))] + E[relu(1 + D(x_hat))] ),      L_G = -E[D(x_hat)].

Adaptive weight (VQGAN Eq. 7), on the decoder's last layer weight w:

    lambda = || grad_w L_rec || / ( || grad_w L_G || + 1e-4 ),  clamped to [0, 1e4], detached,

then multiplied by ``tokenizer.adv_weight`` (LDM's ``disc_weight``).

Discriminator: pix2pix's PatchGAN ``NLayerDiscriminator`` as in taming-transformers / LDM
(64 base filters, 3 stride-2 stages, LeakyReLU 0.2, BatchNorm, N(0, 0.02) conv init). We keep
LDM's BatchNorm. On images too small for 3 stages (the output must stay at least 1 x 1) the
number of stride-2 stages is reduced (16 px: 2 stages), see :func:`disc_layers_for`.

Perceptual loss (LPIPS, Zhang et al. 2018): VGG16 features at relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3 of both images (inputs in [-1, 1] mapped to ImageNet normalisation), each
unit-normalised over channels, squared difference summed over channels, averaged over space,
summed over the five layers. LPIPS's learned per-channel linear heads are not available offline,
so every channel has weight 1 (LPIPS's ``lpips=False`` baseline variant). The VGG16 weights come
from a local file only (torchvision's ``vgg16-397923af.pth`` or a safetensors of it); the net is
frozen. The paper (Sec. 4.1) notes that this loss injects supervised ImageNet features, so a
tokenizer trained with it is "not legitimate" for self-supervised learning.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_tensor_file
from ..errors import CheckpointError


# ---------------------------------------------------------------- GAN losses
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 1/2 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss of the hinge GAN: -mean D(x_hat)."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    eps: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance ||grad rec|| / (||grad g|| + eps), clamped to [0, max_weight], detached.
    Both losses must still hold their graphs (they are kept for the backward that follows)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = torch.linalg.vector_norm(g_rec) / (torch.linalg.vector_norm(g_gan) + eps)
    return w.clamp(0.0, max_weight).detach()


# ---------------------------------------------------------------- discriminator
def disc_layers_for(image_size: int, n_layers: int = 3) -> int:
    """Stride-2 stages that keep the PatchGAN output at least 1 x 1: the map after the stages is
    image_size / 2^n and the two final k4 s1 p1 convs take 2 off it, so image_size / 2^n >= 3."""
    n = n_layers
    while n > 1 and image_size // 2 ** n < 3:
        n -= 1
    if image_size // 2 ** n < 3:
        raise ValueError(f"images of {image_size} px are too small for the patch discriminator "
                         "(need at least 6 px)")
    return n


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix; taming-transformers' / LDM's layout): logits per patch."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False),
                   nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.apply(_disc_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _disc_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- perceptual
#: torchvision's VGG16 ``features`` up to relu5_3 (configuration "D"); "M" = 2x2 max-pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS's taps)
VGG16_TAPS = (3, 8, 15, 22, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_features() -> nn.Sequential:
    """Same module indices as ``torchvision.models.vgg16().features[:30]``, so its state dict
    keys ("0.weight", ..., "28.bias") are torchvision's without the "features." prefix."""
    layers: list[nn.Module] = []
    c = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


def load_vgg16_features(path: str | Path) -> nn.Sequential:
    """VGG16 conv weights from a local torchvision state dict (``.pth``, read with
    ``weights_only=True``) or a safetensors file; keys with or without "features."."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"VGG16 weights file {path} does not exist (tokenizer.perceptual_weights).")
    sd = load_tensor_file(path, "(VGG16 weights, tokenizer.perceptual_weights)")
    with torch.device("meta"):
        net = _vgg16_features()
    want = net.state_dict().keys()
    picked = {}
    for k in want:
        v = sd.get(f"features.{k}", sd.get(k))
        if v is None:
            raise CheckpointError(f"{path} is not a VGG16 state dict: it lacks 'features.{k}' "
                                  "(expected torchvision's vgg16 IMAGENET1K_V1 layout).")
        picked[k] = v.float()
    try:
        net.load_state_dict(picked, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match VGG16: {e}") from None
    return net


class PerceptualLoss(nn.Module):
    """LPIPS-style distance with uniform channel weights on frozen VGG16 features; per image (B,)."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        # (x + 1) / 2 normalised with ImageNet statistics == (x - shift) / scale (LPIPS's ScalingLayer)
        self.register_buffer("shift", (2 * torch.tensor(IMAGENET_MEAN) - 1).view(1, 3, 1, 1))
        self.register_buffer("scale", (2 * torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1))

    @classmethod
    def from_file(cls, path: str | Path) -> "PerceptualLoss":
        return cls(load_vgg16_features(path))

    def train(self, mode: bool = True) -> "PerceptualLoss":  # the net stays in eval mode
        return super().train(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG16_TAPS:
                out.append(h)
            if i == VGG16_TAPS[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for fx, fy in zip(self.taps(x), self.taps(y)):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (fx - fy).pow(2).sum(1).mean((1, 2))
        return total


__all__ = ["hinge_d_loss", "hinge_g_loss", "adaptive_weight", "disc_layers_for",
           "NLayerDiscriminator", "load_vgg16_features", "PerceptualLoss", "VGG16_TAPS"]
