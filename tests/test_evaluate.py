"""Evaluation: the seed's TTA vote, checkpoint safety, determinism."""

from __future__ import annotations

import io as stdio
import json
import pickle

import numpy as np
import pytest
import torch
from ladder import config, evaluate, train


def test_majority_vote_with_ties_broken_by_summed_probabilities():
    # 3 images, 4 passes, 3 classes
    predictions = torch.tensor(
        [
            [0, 1, 2],
            [0, 2, 2],
            [1, 1, 0],
            [1, 2, 0],
        ]
    )
    prob_sum = torch.tensor(
        [
            [1.5, 1.4, 1.1],  # votes 0:2, 1:2 -> tie; prob_sum favours 0
            [0.1, 1.9, 2.0],  # votes 1:2, 2:2 -> tie; prob_sum favours 2
            [0.2, 3.0, 0.8],  # votes 2:2, 0:2 -> tie; prob_sum favours 1, but 1 got no vote
        ]
    )
    assert evaluate.vote(predictions, prob_sum).tolist() == [0, 2, 2]
    clear = torch.tensor([[1, 0], [1, 0], [2, 0]])  # a plain majority ignores the probabilities
    assert evaluate.vote(clear, torch.tensor([[5.0, 0, 0], [0, 0, 9.0]])).tolist() == [1, 0]


@pytest.fixture
def checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "epoch_001.pt"
    train.save_checkpoint(model, path)
    return path


def test_a_plain_checkpoint_loads(checkpoint):
    weights = evaluate.load_checkpoint(checkpoint)
    assert set(weights) == {"weight", "bias"}


def test_a_truncated_checkpoint_names_the_file(checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(evaluate.CheckpointError, match=rf"{checkpoint}: unreadable or truncated"):
        evaluate.load_checkpoint(checkpoint)


class Payload:
    def __reduce__(self):  # would run a command if unpickled
        return (exec, ("raise SystemExit('executed')",))


def test_a_checkpoint_with_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    buf = stdio.BytesIO()
    torch.save({"weight": torch.zeros(1), "x": Payload()}, buf, pickle_module=pickle)
    path.write_bytes(buf.getvalue())
    with pytest.raises(
        evaluate.CheckpointError, match=r"evil.pt: refused - not a plain tensor dict"
    ):
        evaluate.load_checkpoint(path)


def test_a_missing_checkpoint(tmp_path):
    with pytest.raises(evaluate.CheckpointError, match=r"nope.pt: checkpoint not found"):
        evaluate.load_checkpoint(tmp_path / "nope.pt")


def _run_dir(tmp_path):
    """A tiny trained-looking run: config.json and one checkpoint of an untrained mynet."""
    from ladder import models

    settings = config.Params.from_dict(
        {
            "experiments": {
                "x": {
                    "model": {"name": "mynet", "blocks": 1, "width": 4},
                    "augment": {"hflip": 0.5, "rotate": {"p": 0.5}},
                }
            }
        }
    ).experiments["x"]
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = models.build(settings.train["model"], 3, 8)
    train.save_checkpoint(model, run / "checkpoints" / "epoch_001.pt")
    (run / "config.json").write_text(
        json.dumps(
            {
                "experiment": "x",
                "settings": settings.train,
                "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
                "num_classes": 3,
                "image_size": 8,
                "checkpoint_epochs": [1],
            }
        )
    )
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("val", 12), ("test", 30)):
        np.save(data / f"{split}_x.npy", rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
        np.save(data / f"{split}_y.npy", np.arange(n) % 3)
    classes = [{"index": i, "id": f"c{i}", "name": f"class {i}"} for i in range(3)]
    (data / "classes.json").write_text(json.dumps(classes))
    return run, data


def test_evaluation_is_deterministic_and_complete(tmp_path):
    run, data = _run_dir(tmp_path)
    tta = {"passes": 5, "augment": "train", "seed": 0}
    (out,) = evaluate.evaluate_run(run, tta, data, device="cpu")
    first = out.read_bytes()
    evaluate.evaluate_run(run, tta, data, device="cpu")
    assert out.read_bytes() == first
    result = json.loads(first)
    assert result["tta"]["passes"] == 5
    assert 0 <= result["tta"]["vote_acc"] <= 1
    assert [c["count"] for c in result["per_class"]] == [10, 10, 10]
    assert result["per_class"][1]["name"] == "class 1"
    other_seed = evaluate.evaluate_run(run, {**tta, "seed": 1}, data, device="cpu")[0]
    assert (
        json.loads(other_seed.read_bytes())["val"] == result["val"]
    )  # plain passes: no randomness


def test_flip_tta_uses_the_image_and_its_mirror(tmp_path):
    run, data = _run_dir(tmp_path)
    (out,) = evaluate.evaluate_run(
        run, {"passes": 0, "augment": "flip", "seed": 0}, data, device="cpu"
    )
    assert json.loads(out.read_text())["tta"]["passes"] == 2


def test_no_tta(tmp_path):
    run, data = _run_dir(tmp_path)
    (out,) = evaluate.evaluate_run(
        run, {"passes": 0, "augment": "train", "seed": 0}, data, device="cpu"
    )
    result = json.loads(out.read_text())
    assert result["tta"] is None
    assert all(c["tta_acc"] is None for c in result["per_class"])


def test_a_checkpoint_that_does_not_fit_the_model(tmp_path):
    run, data = _run_dir(tmp_path)
    train.save_checkpoint(torch.nn.Linear(2, 2), run / "checkpoints" / "epoch_001.pt")
    with pytest.raises(evaluate.CheckpointError, match=r"epoch_001.pt: does not fit the model"):
        evaluate.evaluate_run(run, {"passes": 0, "augment": "train", "seed": 0}, data, device="cpu")
    assert not (run / "eval").exists()
