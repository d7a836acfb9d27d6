"""The WiSE-FT command's exports: α = 0 is the teacher, α = 1 the fine-tuned model, in between the mix."""

from __future__ import annotations

import torch

from dive.config import ModelSettings, load_config
from dive.export import export_model, load_export
from dive.models import build_model
from pipeline.wise import main, wise_exports


def test_wise_exports_interpolate_teacher_and_finetuned(tmp_path):
    teacher = build_model(ModelSettings())
    ft = build_model(ModelSettings())
    with torch.no_grad():
        for p in ft.model.parameters():
            p.add_(0.05)
    export_model(ft.model, tmp_path / "ft", ft.model_cfg, ft.preprocess_cfg)
    folders = wise_exports(load_config(), f"local-dir:{tmp_path / 'ft'}", [0.0, 0.5, 1.0], tmp_path / "wise")
    weights = {a: load_export(f)[0].state_dict() for a, f in folders.items()}
    pre, post = teacher.model.state_dict(), ft.model.state_dict()
    key = "visual.conv1.weight"
    assert torch.equal(weights[0.0][key], pre[key])
    assert torch.equal(weights[1.0][key], post[key])
    assert torch.allclose(weights[0.5][key], 0.5 * (pre[key] + post[key]), atol=1e-6)


def test_wise_command_rejects_alphas_outside_unit_interval(capsys):
    assert main(["--model", "local-dir:/nowhere", "--alphas", "0,1.5"]) == 2
    assert "--alphas" in capsys.readouterr().err
