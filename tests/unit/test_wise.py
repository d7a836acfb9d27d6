"""WiSE-FT interpolation: exact endpoints, midpoint, integer buffers, wrapper prefixes and clear errors."""

from __future__ import annotations

import pytest
import torch

from dive.config import ModelSettings
from dive.models import build_model
from dive.wise import interpolate, wise_model


def _pair():
    g = torch.Generator().manual_seed(0)
    pre = {
        "w": torch.randn(4, 3, generator=g),
        "logit_scale": torch.tensor(2.6592),
        "position_ids": torch.arange(5),
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
    }
    ft = {
        "w": torch.randn(4, 3, generator=g),
        "logit_scale": torch.tensor(4.6052),
        "position_ids": torch.arange(5) + 10,
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
    }
    return pre, ft


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    pre = build_model(ModelSettings()).model
    ft = build_model(ModelSettings()).model  # random init is seeded: the same weights as `pre` …
    torch.manual_seed(1)
    with torch.no_grad():  # … so move every float tensor, as fine-tuning would
        for p in ft.state_dict().values():
            if p.is_floating_point():
                p.add_(0.01 * torch.randn_like(p))
    return pre, ft


def test_endpoints_are_bit_identical(models):
    pre, ft = (m.state_dict() for m in models)
    at0, at1 = interpolate(pre, ft, 0.0), interpolate(pre, ft, 1)
    assert at0.keys() == pre.keys() == at1.keys()
    assert all(torch.equal(at0[k], pre[k]) for k in pre)
    assert all(torch.equal(at1[k], ft[k]) for k in ft)
    assert not torch.equal(at0["visual.proj"], at1["visual.proj"])
    # Copies, not aliases: changing the result leaves the inputs alone.
    at0["visual.proj"].add_(1.0)
    assert not torch.equal(at0["visual.proj"], pre["visual.proj"])


def test_midpoint_of_float_tensors_and_int_buffers_from_ft():
    pre, ft = _pair()
    mid = interpolate(pre, ft, 0.5)
    assert torch.allclose(mid["w"], (pre["w"] + ft["w"]) / 2, atol=1e-7)
    assert mid["logit_scale"].item() == pytest.approx((2.6592 + 4.6052) / 2)
    assert torch.equal(mid["position_ids"], ft["position_ids"])
    assert mid["half"].dtype == torch.bfloat16
    assert torch.allclose(mid["half"].float(), (pre["half"].float() + ft["half"].float()) / 2, atol=1e-2)
    quarter = interpolate(pre, ft, 0.25)
    assert torch.allclose(quarter["w"], 0.75 * pre["w"] + 0.25 * ft["w"], atol=1e-6)


def test_wrapper_prefixes_are_stripped():
    pre, ft = _pair()
    ddp_pre = {f"module._orig_mod.{k}": v for k, v in pre.items()}
    compiled_ft = {f"_orig_mod.{k}": v for k, v in ft.items()}
    out = interpolate(ddp_pre, compiled_ft, 0.5)
    assert set(out) == set(pre)


def test_mismatched_keys_shapes_and_bad_alpha_are_named():
    pre, ft = _pair()
    extra = {**ft, "visual.new_head": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"missing from theta_pre: \['visual.new_head'\]"):
        interpolate(pre, extra, 0.5)
    with pytest.raises(ValueError, match=r"missing from theta_ft: \['w'\]"):
        interpolate(pre, {k: v for k, v in ft.items() if k != "w"}, 0.5)
    with pytest.raises(ValueError, match=r"shape mismatch for 'w'"):
        interpolate(pre, {**ft, "w": torch.zeros(3, 4)}, 0.5)
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha must be in"):
            interpolate(pre, ft, alpha)


def test_wise_model_on_two_tiny_models(models):
    pre, ft = models
    before = {k: v.clone() for k, v in ft.state_dict().items()}
    mixed = wise_model(pre, ft, 0.3)
    assert mixed is not ft
    sd, p, f = mixed.state_dict(), pre.state_dict(), ft.state_dict()
    for key in ("logit_scale", "visual.proj", "token_embedding.weight"):
        assert torch.allclose(sd[key], 0.7 * p[key] + 0.3 * f[key], atol=1e-6), key
    assert all(torch.equal(v, before[k]) for k, v in ft.state_dict().items())  # ft untouched
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = mixed.eval().encode_image(images)
        assert not torch.allclose(out, ft.eval().encode_image(images))
    with torch.no_grad():
        assert torch.equal(wise_model(pre, ft, 0.0).encode_image(images), pre.eval().encode_image(images))
