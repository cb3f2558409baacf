"""The figures are written as valid PNGs of the expected pixel size; the numbers behind them are right."""

import struct

import numpy as np
import pytest

from hyper_retrieval.evaluation.plots import (
    bar_values,
    is_collapsed,
    mean_attention_by_task,
    pca_2d,
    plot_attention_heatmap,
    plot_attention_projection,
    plot_collection_bars,
    plot_training_curves,
)


def png_size(path):
    """(width, height) from the PNG signature and IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def attention():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((90, 12)) + np.repeat(np.eye(3) * 3, 30, axis=0).repeat(4, axis=1)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True), ["nq"] * 30 + ["qasc"] * 30 + ["drop"] * 30


def test_collection_bars(tmp_path):
    scores = {"bm25": {"ropes": 0.74, "multirc": 0.94}, "hyper": {"ropes": 0.8, "qasc": 0.9}}
    path = plot_collection_bars(scores, tmp_path / "sub" / "bars.png", figsize=(6, 4), dpi=50)
    assert png_size(path) == (300, 200)


def test_training_curves(tmp_path):
    logs = {"hyper": [{"step": 1, "loss/contrastive": 2.0}, {"step": 2, "loss/contrastive": 1.5},
                      {"step": 2, "dev/ndcg@10": 0.4}],
            "multitask": [{"step": 1, "loss/contrastive": 2.1}, {"step": 2, "dev/ndcg@10": 0.38}]}
    assert png_size(plot_training_curves(logs, tmp_path / "curves.png", dpi=50)) == (500, 200)


def test_attention_heatmap_and_projection(tmp_path, attention):
    weights, labels = attention
    assert png_size(plot_attention_heatmap(weights, labels, tmp_path / "heat.png")) == (800, 500)
    assert png_size(plot_attention_projection(weights, labels, tmp_path / "proj.png", dpi=80)) == (640, 400)


def test_mean_attention_by_task(attention):
    weights, labels = attention
    tasks, means = mean_attention_by_task(weights, labels)
    assert tasks == ["nq", "qasc", "drop"]
    np.testing.assert_allclose(means[1], weights[30:60].mean(axis=0))
    assert np.argmax(means[2]) // 4 == 2  # drop queries lean on prompts 8-11
    with pytest.raises(ValueError, match="one label per query"):
        mean_attention_by_task(weights, labels[:-1])


def test_pca_2d_matches_covariance_eigenvectors(attention):
    weights, _ = attention
    projected = pca_2d(weights)
    centred = weights - weights.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    top = eigenvectors[:, np.argsort(eigenvalues)[::-1][:2]]
    np.testing.assert_allclose(np.abs(projected), np.abs(centred @ top), atol=1e-8)
    assert pca_2d(np.ones((4, 1))).shape == (4, 2)


def test_bars_carry_an_average_group():
    scores = {"bm25": {"ropes": 0.74, "multirc": 0.94}, "hyper": {"ropes": 0.8, "qasc": 0.9}}
    groups, values = bar_values(scores)
    assert groups == ["ropes", "multirc", "qasc", "average"]
    assert values["bm25"][:2] == [0.74, 0.94] and np.isnan(values["bm25"][2])
    assert values["bm25"][3] == pytest.approx(0.84) and values["hyper"][3] == pytest.approx(0.85)


def test_a_collapsed_pool_is_drawn_as_one_point_not_as_rounding_noise(tmp_path, attention):
    weights, labels = attention
    collapsed = np.tile([0.2, 0.8], (len(labels), 1)) + np.random.default_rng(0).normal(0, 1e-13, (len(labels), 2))
    assert is_collapsed(collapsed) and not is_collapsed(weights)
    assert png_size(plot_attention_projection(collapsed, labels, tmp_path / "collapsed.png", dpi=80)) == (640, 400)
