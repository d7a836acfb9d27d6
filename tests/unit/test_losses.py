"""The loss terms of docs/method.md §2, checked against their definitions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dive.losses import avl, contrastive, cross_entropy, ema_center, pvl, replay, snd

D = 16


def _vectors(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)


def test_avl_is_zero_when_every_vector_equals_the_center():
    center = torch.randn(D)
    u = center.expand(5, D).clone()
    assert avl(u, u.clone(), center).item() == 0.0


def test_avl_matches_definition_and_grows_with_spread():
    center = torch.randn(D)
    u, v = _vectors()
    expected = (((u - center) ** 2).sum(1) + ((v - center) ** 2).sum(1)).mean()
    assert torch.allclose(avl(u, v, center), expected)
    small = avl(center + 0.1 * u, center + 0.1 * v, center)
    large = avl(center + 1.0 * u, center + 1.0 * v, center)
    assert 0 < small < large
    assert torch.allclose(large, small * 100, rtol=1e-4)  # quadratic in the spread


def test_pvl_is_zero_when_u_equals_v_and_matches_definition():
    u, v = _vectors()
    assert pvl(u, u.clone()).item() == 0.0
    assert torch.allclose(pvl(u, v), ((u - v) ** 2).sum(1).mean())


def test_no_gradient_reaches_the_center():
    center = torch.randn(D, requires_grad=True)
    u, v = _vectors()
    u.requires_grad_(True)
    avl(u, v, center).backward()
    assert center.grad is None
    assert u.grad is not None and u.grad.abs().sum() > 0


def test_ema_after_k_constant_updates_is_c_times_one_minus_alpha_to_the_k():
    alpha, c = 0.9, torch.randn(D)
    center = torch.zeros(D)
    for k in range(1, 8):
        center = ema_center(center, c.expand(3, D), c.expand(3, D), alpha)
        assert torch.allclose(center, c * (1 - alpha**k), atol=1e-6)


def test_ema_uses_the_mean_of_image_and_text_vectors_and_is_detached():
    u, v = _vectors()
    u.requires_grad_(True)
    new = ema_center(torch.zeros(D), u, v, 0.0)
    assert not new.requires_grad
    assert torch.allclose(new, torch.cat([u, v]).mean(0))


def test_contrastive_matches_direct_computation():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(6, D, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, D, generator=g), dim=-1)
    scale = torch.tensor(20.0)
    logits = scale * img @ txt.T
    target = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(contrastive(img, txt, scale), expected, atol=1e-6)
    assert torch.allclose(replay(img, txt, scale), expected, atol=1e-6)
    # Perfectly aligned, well separated pairs give a lower loss than shuffled ones.
    assert contrastive(img, img, scale) < contrastive(img, img.flip(0), scale)


def test_snd_and_cross_entropy():
    u, v = _vectors()
    assert torch.allclose(snd(u, v), ((u - v) ** 2).sum(1).mean())
    assert snd(u, u.clone()).item() == 0.0
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    assert torch.allclose(cross_entropy(logits, labels), F.cross_entropy(logits, labels))
