"""Accuracy, RSA (identity, rotation invariance, sensitivity to distortion) and metric summaries."""

from __future__ import annotations

import math

import pytest
import torch

from dive.metrics import SetResult, accuracy, rsa, rsa_cross, rsa_report, summarize, table_rows


def _emb(n: int = 40, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _rotation(d: int, seed: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q


def test_accuracy_on_a_hand_example():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 2, 1, 2])
    assert accuracy(scores, labels) == pytest.approx(0.5)  # rows 0 and 3
    assert accuracy(scores, labels, k=2) == pytest.approx(1.0)
    assert accuracy(scores, torch.tensor([1, 0, 2, 0])) == 0.0


def test_accuracy_rejects_bad_shapes_and_k():
    with pytest.raises(ValueError, match="labels"):
        accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be"):
        accuracy(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), k=3)


def test_rsa_is_one_for_identical_embeddings():
    a = _emb()
    assert rsa(a, a.clone()) == pytest.approx(1.0)


def test_rsa_is_invariant_to_rotation_and_scale():
    a = _emb()
    rotated = 3.0 * a @ _rotation(a.shape[1])
    assert not torch.allclose(rotated, a)
    assert rsa(a, rotated) == pytest.approx(1.0, abs=1e-6)


def test_rsa_drops_when_the_geometry_is_distorted():
    a = _emb()
    noisy = a + 2.0 * _emb(seed=5)
    assert rsa(a, noisy) < 0.9
    assert rsa(a, torch.tanh(4 * a) ** 3) < 0.99
    assert abs(rsa(a, _emb(seed=7))) < 0.3  # unrelated embeddings


def test_rsa_input_checks():
    with pytest.raises(ValueError, match="same samples"):
        rsa(_emb(5), _emb(6))
    with pytest.raises(ValueError, match="at least 3 samples"):
        rsa(_emb(2), _emb(2))


def test_rsa_of_a_collapsed_space_is_nan():
    assert math.isnan(rsa(_emb(5), torch.ones(5, 4)))


def test_rsa_cross_uses_the_full_asymmetric_matrix():
    img, txt = _emb(seed=1), _emb(seed=2)
    q = _rotation(16)
    assert rsa_cross(img, txt, img @ q, txt @ q) == pytest.approx(1.0, abs=1e-6)
    # Swapping the modalities transposes the (non-symmetric) matrix: no longer the same structure.
    assert rsa_cross(img, txt, txt, img) < 0.9
    with pytest.raises(ValueError, match="img_a and txt_a"):
        rsa_cross(img, txt[:10], img, txt)


def test_rsa_report_keys_and_mean():
    t_img, t_txt = _emb(seed=1), _emb(seed=2)
    s_img, s_txt = t_img + _emb(seed=3), t_txt + 0.1 * _emb(seed=4)
    report = rsa_report(t_img, t_txt, s_img, s_txt)
    assert set(report) == {"rsa_image", "rsa_text", "rsa_cross", "rsa_mean"}
    assert report["rsa_text"] > report["rsa_image"]
    parts = [report["rsa_image"], report["rsa_text"], report["rsa_cross"]]
    assert report["rsa_mean"] == pytest.approx(sum(parts) / 3)


def test_summarize_and_table_rows_on_a_hand_example():
    results = [
        SetResult("imagenet", "id", 0.8, 1000),
        SetResult("sketch", "ood", 0.4, 500),
        SetResult("imagenet-r", "ood", 0.6, 300),
        SetResult("cars", "zs", 0.25, 100),
    ]
    assert summarize(results) == pytest.approx(
        {
            "id_acc": 0.8,
            "ood/sketch": 0.4,
            "ood/imagenet-r": 0.6,
            "ood_avg": 0.5,
            "zs/cars": 0.25,
            "zs_avg": 0.25,
        }
    )
    only_id = summarize(results[:1])
    assert only_id == {"id_acc": 0.8}  # no averages without sets of that kind
    rows = table_rows(results)
    assert rows[1] == {"name": "sketch", "kind": "ood", "accuracy": 0.4, "samples": 500}


def test_set_result_and_summarize_validation():
    with pytest.raises(ValueError, match="kind must be one of"):
        SetResult("x", "test", 0.5, 1)
    with pytest.raises(ValueError, match="fraction"):
        SetResult("x", "id", 50.0, 1)
    with pytest.raises(ValueError, match="duplicate ood set name 'a'"):
        summarize([SetResult("a", "ood", 0.1, 1), SetResult("a", "ood", 0.2, 1)])


def test_retrieval_counts_a_repeated_caption_as_a_hit_and_objective_mixes_val_metrics():
    from dive.metrics import retrieval_accuracy, val_objective

    text = torch.eye(3)
    image = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])  # image 1 retrieves caption 0
    assert retrieval_accuracy(image, text, ["a cat", "a cat", "a dog"]) == 1.0  # the same words: a hit
    assert retrieval_accuracy(image, text, ["a", "b", "c"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="captions: expected 3"):
        retrieval_accuracy(image, text, ["a"])
    assert val_objective({"val/id_acc": 0.8, "val/ref_retrieval": 0.4}, 0.25) == pytest.approx(0.5)
    assert val_objective({"val/ref_retrieval": 0.4}, 0.25) == 0.4 and val_objective({}, 0.5) is None


def test_objective_can_weigh_id_against_zero_shot_validation():
    from dive.metrics import val_objective

    metrics = {"val/id_acc": 0.8, "val/ref_retrieval": 0.4, "val/zs_acc": 0.2}
    assert val_objective(metrics, 0.5, "val/zs_acc") == pytest.approx(0.5)
    assert val_objective(metrics, 0.5) == pytest.approx(0.6)  # the default still mixes in retrieval
    assert val_objective({"val/zs_acc": 0.3}, 0.5, "val/zs_acc") == 0.3


def test_objective_can_keep_the_mean_of_near_and_far_zero_shot():
    from dive.config import VAL_OBJECTIVES, ValObjective
    from dive.metrics import val_objective

    kept = VAL_OBJECTIVES[ValObjective.id_zs_far]
    metrics = {"val/id_acc": 0.9, "val/zs_acc": 0.3, "val/zs_far_acc": 0.6}
    assert val_objective(metrics, 1 / 3, kept) == pytest.approx((0.9 + 0.3 + 0.6) / 3)  # ID, near, far alike
    assert val_objective(metrics, 0.5, kept) == pytest.approx(0.45 + 0.225)
    assert val_objective({"val/zs_far_acc": 0.6}, 0.5, kept) == 0.6
