"""MoCo v3's views (src/ldae/data/views.py): each colour operation equals torchvision's on every
image with that image's factor; the blur equals torchvision's; the pair is seeded, in range,
and the same whatever the batch split."""
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ldae.data.views import _blend, _blur, _gray, _hue, two_views
from ldae.seeds import Rows


def images(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_colour_operations_equal_torchvisions_per_image():
    u = images()
    f = torch.tensor([0.6, 0.9, 1.2, 1.4])
    bright = _blend(u, torch.zeros_like(u), f)
    contrast = _blend(u, _gray(u).mean((1, 2, 3), keepdim=True).expand_as(u), f)
    sat = _blend(u, _gray(u).expand_as(u), f)
    for i in range(4):
        torch.testing.assert_close(bright[i], TF.adjust_brightness(u[i], float(f[i])))
        torch.testing.assert_close(contrast[i], TF.adjust_contrast(u[i], float(f[i])), atol=1e-5, rtol=0)
        torch.testing.assert_close(sat[i], TF.adjust_saturation(u[i], float(f[i])), atol=1e-5, rtol=0)
    torch.testing.assert_close(_gray(u)[0], TF.rgb_to_grayscale(u[0]))


@pytest.mark.parametrize("shift", [-0.1, -0.03, 0.0, 0.05, 0.1])
def test_hue_equals_torchvisions(shift):
    u = images(3)
    out = _hue(u, torch.full((3,), shift))
    for i in range(3):
        torch.testing.assert_close(out[i], TF.adjust_hue(u[i], shift), atol=1e-5, rtol=0)


def test_blur_equals_torchvisions():
    u = images(2, 24)
    sigma = torch.tensor([0.7, 0.7])
    r = 3  # ceil(3 * 0.7)
    torch.testing.assert_close(_blur(u, sigma), TF.gaussian_blur(u, [2 * r + 1, 2 * r + 1], [0.7, 0.7]),
                               atol=1e-5, rtol=0)
    two = _blur(u, torch.tensor([0.5, 1.5]))  # per-image sigma: the second is smoother
    assert two[1].diff(dim=-1).abs().mean() < two[0].diff(dim=-1).abs().mean()


def test_two_views_are_seeded_in_range_and_split_invariant():
    x = images(8, 16) * 2 - 1
    v1, v2 = two_views(x, torch.Generator().manual_seed(5))
    assert v1.shape == v2.shape == x.shape
    assert v1.min() >= -1 and v1.max() <= 1 and v2.min() >= -1 and v2.max() <= 1
    assert not torch.allclose(v1, v2)
    w1, w2 = two_views(x, torch.Generator().manual_seed(5))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    for r in range(2):  # rank r of 2 holds rows r, r + 2, ...
        h1, h2 = two_views(x[r::2], torch.Generator().manual_seed(5), Rows.of(8, r, 2))
        torch.testing.assert_close(h1, v1[r::2])
        torch.testing.assert_close(h2, v2[r::2])
