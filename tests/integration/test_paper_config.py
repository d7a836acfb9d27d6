"""The paper's config (pipeline/configs/paper/imagenet_vit_b16.yaml) on miniatures of every dataset it names.

Each set is made by ``dive data suite`` from a fabricated tree in a layout it ships in (real wnids and class lists,
a few classes each), the reference pairs are the tiny demo's captions. The config validates as written, and
trains, exports and evaluates a few steps through the same file with the tiny model swapped in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.convert.suites.convert import convert_suite
from pipeline.convert.suites.registry import Options, recipes
from pipeline.data.format import read_manifest
from pipeline.train import main, prepare_config, run
from tests.unit.test_suites_imagenet import (
    VAL_WNIDS,
    image,
    kaggle_tree,
    objectnet_tree,
    put,
    timm_list,
    wds_folder,
)
from tests.unit.test_suites_zeroshot import NAMES

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "pipeline" / "configs" / "paper" / "imagenet_vit_b16.yaml"


def _zero_shot_source(name: str, root: Path) -> Path:
    """A CLIP_benchmark wds folder (it carries its own class names: three here), two images a class. The
    recipes' official and CoOp layouts are covered in tests/unit/test_suites_zeroshot.py."""
    names = [f"class {i}" for i in range(3)]
    return wds_folder(
        root / f"wds_{name}",
        names,
        [(image(7000 + 10 * i + k, "PNG"), i) for i in range(3) for k in range(2)],
    )


def build_paper_data(data: Path, src: Path, demo_paths) -> None:
    """$DIVE_DATA as the paper config expects it, every labelled set converted by its recipe."""
    for i, wnid in enumerate(VAL_WNIDS):
        for k in range(6):
            put(src / "imagenet" / "train" / wnid / f"{wnid}_{k}.JPEG", image(500 + 10 * i + k))
    convert_suite(
        "imagenet",
        src / "imagenet",
        data / "imagenet" / "train",
        Options(split="train", layout="torchvision"),
        holdout=data / "imagenet" / "val_holdout",
        holdout_per_class=1,
    )
    convert_suite(
        "imagenet", kaggle_tree(src / "kaggle"), data / "imagenet" / "val", Options(layout="ilsvrc")
    )
    for folder in ("0", "10", "999"):
        put(
            src / "v2" / "imagenetv2-matched-frequency-format-val" / folder / "a.jpeg",
            image(int(folder) + 900),
        )
    convert_suite("imagenet-v2", src / "v2" / "imagenetv2-matched-frequency-format-val", data / "imagenet-v2")
    for short in ("r", "a"):
        for j, wnid in enumerate(timm_list(f"imagenet_{short}_synsets.txt")[:3]):
            put(src / f"imagenet-{short}" / wnid / f"{j}.jpg", image(1000 + j))
        convert_suite(f"imagenet-{short}", src / f"imagenet-{short}", data / f"imagenet-{short}")
    for j, wnid in enumerate(VAL_WNIDS):
        put(src / "sketch" / wnid / f"{j}.JPEG", image(1100 + j))
    convert_suite("imagenet-sketch", src / "sketch", data / "imagenet-sketch")
    convert_suite("objectnet", objectnet_tree(src / "objectnet") / "objectnet-1.0", data / "objectnet")
    for name in NAMES:
        convert_suite(name, _zero_shot_source(name, src / "zs"), data / "zs" / name, Options(layout="wds"))
    (data / "cc3m").mkdir()
    (data / "cc3m" / "train").symlink_to(demo_paths.reference)
    (data / "cc3m" / "val").symlink_to(demo_paths.pretrain)


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory, demo):
    root = tmp_path_factory.mktemp("paper")
    build_paper_data(root / "data", root / "src", demo[0])
    return root / "data"


def test_every_set_the_paper_config_names_has_a_recipe():
    names = set(recipes())
    assert {"imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "objectnet"} <= names
    assert set(NAMES) <= names


def test_the_paper_config_validates_on_the_miniatures(paper_data, monkeypatch, capsys):
    monkeypatch.setenv("DIVE_DATA", str(paper_data))
    assert main(["--config", str(PAPER), "--validate"]) == 0
    assert read_manifest(paper_data / "imagenet-r").head == "imagenet"
    assert len(read_manifest(paper_data / "imagenet" / "train").templates) == 80


def test_the_paper_config_without_its_data_root_is_one_error_line(monkeypatch, capsys):
    monkeypatch.delenv("DIVE_DATA", raising=False)
    assert main(["--config", str(PAPER), "--validate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DIVE_DATA" in err[0] and "data.id_train" in err[0]


@pytest.mark.ray
@pytest.mark.slow
def test_the_paper_config_trains_a_few_steps_with_the_tiny_model(
    ray_session, paper_data, demo, tmp_path, monkeypatch
):
    monkeypatch.setenv("DIVE_DATA", str(paper_data))
    cfg = prepare_config(
        str(PAPER),
        [
            "model.name=dive-tiny",  # 32 px, 64-d: the same config at a size CI trains in seconds
            f"model.pretrained={demo[1]}",
            "model.precision=fp32",
            "scaling.use_gpu=false",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=0.5",
            "optim.global_batch=8",
            "optim.max_steps=2",
            "optim.epochs=1",
            "optim.warmup_steps=1",
            "val.samples=8",
            "eval.rsa_samples=16",
            "eval.batch_size=64",
            "run.checkpoint.every=0",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.output_dir={tmp_path}/out",
        ],
    )
    assert (cfg.data.crop_scale, cfg.data.hflip) == ([0.9, 1.0], False)
    result = run(cfg)
    mlrun = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert mlrun.info.status == "FINISHED"
    metrics = mlrun.data.metrics
    for name in ("imagenet-r", "objectnet", "ucf101"):
        assert any(name in key for key in metrics), sorted(metrics)
