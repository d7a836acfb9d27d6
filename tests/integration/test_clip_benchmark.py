"""A third-party evaluator reads our exports: CLIP_benchmark (PyPI ``clip-benchmark``) scores a ``local-dir:``
export zero-shot through its own command line, and agrees with ``pipeline.evaluate`` on the same images."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dive.config import Config, ModelSettings
from dive.export import export_model
from dive.models import build_model
from pipeline.data.format import LABELLED, check_dataset, iter_rows
from pipeline.evaluate import Suite, evaluate_accuracy

CLI = Path(sys.executable).parent / "clip_benchmark"


def _as_clip_benchmark_wds(folder: str, root: Path) -> tuple[Path, int]:
    """CLIP_benchmark's local webdataset layout (its ``build_wds_dataset``): ``test/0.tar`` of ``<key>.png`` +
    ``<key>.cls``, ``classnames.txt``, ``zeroshot_classification_templates.txt`` (``{c}`` for the class)."""
    manifest = check_dataset(folder, LABELLED)
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(manifest.classnames) + "\n")
    templates = [t.replace("{}", "{c}") for t in manifest.templates]
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (root / "test" / "nshards.txt").write_text("1\n")
    n = 0
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, row in enumerate(iter_rows(folder, columns=["image", "label"])):
            for name, data in ((f"{i:06d}.png", row["image"]), (f"{i:06d}.cls", str(row["label"]).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return root, n


SETS = ("id_test", "ood_outline", "ood_noisy", "ood_pixel", "zs_color", "zs_position")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not CLI.is_file(), reason="clip-benchmark is not installed (pip install -e '.[dev]')")
def test_clip_benchmark_scores_an_export_like_we_do(ray_session, demo, tmp_path):
    paths, teacher_weights = demo
    bundle = build_model(ModelSettings(pretrained=str(teacher_weights)))
    export = export_model(
        bundle.model, tmp_path / "export", bundle.model_cfg, bundle.preprocess_cfg, tokenizer=bundle.tokenizer
    )
    folders = {name: str(paths.splits()[name]) for name in SETS}
    suites = [Suite(name, "zs", folder) for name, folder in folders.items()]
    ours = evaluate_accuracy({"export": ModelSettings(name=f"local-dir:{export}")}, suites, Config())[
        "export"
    ]

    sizes = {name: _as_clip_benchmark_wds(f, tmp_path / name)[1] for name, f in folders.items()}
    cmd = [
        str(CLI), "eval",
        "--model", f"local-dir:{export}", "--pretrained", "",
        "--dataset", *[f"wds/{name}" for name in SETS], "--dataset_root", str(tmp_path / "{dataset_cleaned}"),
        "--task", "zeroshot_classification", "--batch_size", "64", "--num_workers", "0",
        "--no_amp",  # fp32 like ours: CPU autocast would score in bfloat16
        "--output", str(tmp_path / "{dataset}.json"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    theirs = {}
    for name in SETS:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["model"] == f"local-dir:{export}" and result["dataset"] == f"wds/{name}"
        theirs[name] = result["metrics"]["acc1"]
    mine = {r.name: r.accuracy for r in ours}
    # Same images, class names, templates and preprocessing: per set, at most one image may flip on rounding.
    for name in SETS:
        assert abs(theirs[name] - mine[name]) <= 1 / sizes[name] + 1e-9, (name, theirs, mine, sizes)
    assert len(set(mine.values())) >= 3  # six different sets, not one constant answer agreeing by accident
    for name in SETS:
        shutil.rmtree(tmp_path / name)
