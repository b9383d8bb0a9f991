"""Evaluation: the seed's TTA vote, checkpoint safety, determinism."""

from __future__ import annotations

import io as stdio
import json
import os
import pickle
import shutil
import signal

import numpy as np
import pytest
import torch
from ladder import config, evaluate, io, manifest, models, predictions, stopping, train


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
    with pytest.raises(evaluate.CheckpointError, match=rf"{checkpoint}: corrupt or truncated"):
        evaluate.load_checkpoint(checkpoint)


def test_random_bytes_are_reported_as_corrupt(checkpoint):
    checkpoint.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(evaluate.CheckpointError, match=rf"{checkpoint}: corrupt or truncated"):
        evaluate.load_checkpoint(checkpoint)


class Payload:
    def __reduce__(self):  # would run a command if unpickled
        return (exec, ("raise SystemExit('executed')",))


def test_a_checkpoint_with_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    buf = stdio.BytesIO()
    torch.save({"weight": torch.zeros(1), "x": Payload()}, buf, pickle_module=pickle)
    path.write_bytes(buf.getvalue())
    with pytest.raises(evaluate.CheckpointError, match=r"evil.pt: refused - it holds Python") as e:
        evaluate.load_checkpoint(path)
    assert "weights_only=False" not in str(e.value)  # PyTorch's advice, wrong for such a file


def test_a_missing_checkpoint(tmp_path):
    with pytest.raises(evaluate.CheckpointError, match=r"nope.pt: checkpoint not found"):
        evaluate.load_checkpoint(tmp_path / "nope.pt")


def _varied(model: torch.nn.Module) -> torch.nn.Module:
    """Larger weights: an untrained model whose predictions differ from image to image."""
    with torch.no_grad():
        for weights in model.parameters():
            weights.mul_(8)
    return model


def _run_dir(tmp_path):
    """A tiny trained-looking run: config.json and one checkpoint of an untrained mynet, and
    prepared val/test data, each folder with its manifest as the stages write them."""
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
    model = _varied(models.build(settings.train["model"], 3, 8))
    with manifest.folder(run / "checkpoints") as tmp:
        train.save_checkpoint(model, tmp / "epoch_001.pt")
    io.write_record(
        run / "config.json",
        {
            "experiment": "x",
            "settings": settings.train,
            "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "num_classes": 3,
            "image_size": 8,
            "checkpoint_epochs": [1],
        },
    )
    rng = np.random.default_rng(0)
    with manifest.folder(tmp_path / "data") as data:
        for split, n in (("val", 12), ("test", 30)):
            np.save(data / f"{split}_x.npy", rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
            np.save(data / f"{split}_y.npy", np.arange(n) % 3)
        classes = [{"index": i, "id": f"c{i}", "name": f"class {i}"} for i in range(3)]
        (data / "classes.json").write_text(json.dumps(classes))
    return run, tmp_path / "data"


def _evaluate(run, tta, data, tmp_path):
    return evaluate.evaluate_run(run, tta, data, tmp_path / "cache", device="cpu")


def test_evaluation_is_deterministic_and_complete(tmp_path):
    run, data = _run_dir(tmp_path)
    tta = {"passes": 5, "augment": "train", "seed": 0}
    (out,) = _evaluate(run, tta, data, tmp_path)
    first = out.read_bytes()
    shutil.rmtree(tmp_path / "cache")  # computed again, not copied from the cache
    _evaluate(run, tta, data, tmp_path)
    assert out.read_bytes() == first
    result = json.loads(first)
    assert result["tta"]["passes"] == 5
    assert 0 <= result["tta"]["vote_acc"] <= 1
    assert [c["count"] for c in result["per_class"]] == [10, 10, 10]
    assert result["per_class"][1]["name"] == "class 1"
    other_seed = _evaluate(run, {**tta, "seed": 1}, data, tmp_path)[0]
    assert (
        json.loads(other_seed.read_bytes())["val"] == result["val"]
    )  # plain passes: no randomness


def test_flip_tta_uses_the_image_and_its_mirror(tmp_path):
    run, data = _run_dir(tmp_path)
    (out,) = _evaluate(run, {"passes": 0, "augment": "flip", "seed": 0}, data, tmp_path)
    assert json.loads(out.read_text())["tta"]["passes"] == 2


def test_no_tta(tmp_path):
    run, data = _run_dir(tmp_path)
    (out,) = _evaluate(run, {"passes": 0, "augment": "train", "seed": 0}, data, tmp_path)
    result = json.loads(out.read_text())
    assert result["tta"] is None
    assert all(c["tta_acc"] is None for c in result["per_class"])


def test_a_checkpoint_that_does_not_fit_the_model(tmp_path):
    run, data = _run_dir(tmp_path)
    with manifest.folder(run / "checkpoints") as tmp:
        train.save_checkpoint(torch.nn.Linear(2, 2), tmp / "epoch_001.pt")
    with pytest.raises(evaluate.CheckpointError, match=r"epoch_001.pt: does not fit the model"):
        _evaluate(run, {"passes": 0, "augment": "train", "seed": 0}, data, tmp_path)
    assert not (run / "eval").exists()


def test_a_checkpoint_changed_after_training_is_refused(tmp_path):
    run, data = _run_dir(tmp_path)
    path = run / "checkpoints" / "epoch_001.pt"
    weights = torch.load(path, weights_only=True)
    key = next(iter(weights))
    weights[key] = weights[key] + 1  # same size, other content
    buf = stdio.BytesIO()
    torch.save(weights, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"epoch_001.pt: content differs from .*manifest"):
        _evaluate(run, {"passes": 0, "augment": "train", "seed": 0}, data, tmp_path)


def test_only_new_checkpoints_are_evaluated_again(tmp_path, caplog):
    run, data = _run_dir(tmp_path)
    tta = {"passes": 2, "augment": "train", "seed": 0}
    (first,) = _evaluate(run, tta, data, tmp_path)
    before = first.read_bytes()
    config_json = io.read_record(run / "config.json")
    with manifest.folder(run / "checkpoints") as tmp:  # training went on: a second checkpoint
        shutil.copy2(run / "checkpoints" / "epoch_001.pt", tmp / "epoch_001.pt")
        torch.manual_seed(1)
        model = _varied(models.build(config_json["settings"]["model"], 3, 8))
        train.save_checkpoint(model, tmp / "epoch_002.pt")
    io.write_record(run / "config.json", {**config_json, "checkpoint_epochs": [1, 2]})
    with caplog.at_level("INFO", logger="ladder.evaluate"):
        outs = _evaluate(run, tta, data, tmp_path)
    assert [p.name for p in outs] == ["epoch_001.json", "epoch_002.json"]
    assert "2 checkpoint(s), 1 evaluated before" in caplog.text
    assert [r.message.startswith("x epoch 2") for r in caplog.records if "epoch" in r.message]
    assert not any("x epoch 1:" in r.message for r in caplog.records)
    assert outs[0].read_bytes() == before
    assert len(list((tmp_path / "cache" / "x").glob("*.json"))) == 2
    assert len(list((tmp_path / "cache" / "x").glob("*.npz"))) == 2
    for epoch in (1, 2):  # each checkpoint's own predictions, the cached one's included
        result = json.loads((run / "eval" / f"epoch_{epoch:03d}.json").read_text())
        recounted = _accuracies_from_predictions(run, data, epoch)
        assert recounted["test_plain"] == pytest.approx(result["test"]["acc"], abs=1e-6)
        assert recounted["test_tta"] == pytest.approx(result["tta"]["vote_acc"], abs=1e-6)
    first, second = (_accuracies_from_predictions(run, data, e) for e in (1, 2))
    assert first != second  # two different models: a copied file would be caught above


# ----------------------------------------------------------------------------------------------
# Per-image predictions beside every evaluation


def _accuracies_from_predictions(run, data, epoch: int = 1) -> dict:
    """Accuracies recounted from eval/epoch_NNN.npz and the prepared labels."""
    y = {split: np.load(data / f"{split}_y.npy") for split in ("val", "test")}
    with np.load(run / "eval" / f"epoch_{epoch:03d}.npz") as npz:
        assert all(npz[k].dtype == np.int16 for k in npz.files)
        assert len(np.unique(npz["test_plain"])) > 1  # else a shuffled file would pass
        return {k: float((npz[k] == y[predictions.SPLITS[k]]).mean()) for k in npz.files}


@pytest.mark.parametrize("augment", ["train", "flip"])
def test_predictions_agree_with_the_json_accuracies_fresh_and_cached(tmp_path, caplog, augment):
    run, data = _run_dir(tmp_path)
    tta = {"passes": 3, "augment": augment, "seed": 0}
    for evaluated_before in (0, 1):  # computed, then rebuilt from the cache
        caplog.clear()
        with caplog.at_level("INFO", logger="ladder.evaluate"):
            (out,) = _evaluate(run, tta, data, tmp_path)
        assert f"1 checkpoint(s), {evaluated_before} evaluated before" in caplog.text
        result = json.loads(out.read_text())
        recounted = _accuracies_from_predictions(run, data)
        assert set(recounted) == {"val_plain", "test_plain", "test_tta"}
        assert recounted["val_plain"] == pytest.approx(result["val"]["acc"], abs=1e-6)
        assert recounted["test_plain"] == pytest.approx(result["test"]["acc"], abs=1e-6)
        assert recounted["test_tta"] == pytest.approx(result["tta"]["vote_acc"], abs=1e-6)
    # The eval folder's manifest lists the predictions with the results.
    assert set(manifest.read(run / "eval")["files"]) == {"epoch_001.json", "epoch_001.npz"}


def test_predictions_without_tta_have_no_tta_array(tmp_path):
    run, data = _run_dir(tmp_path)
    _evaluate(run, {"passes": 0, "augment": "train", "seed": 0}, data, tmp_path)
    recounted = _accuracies_from_predictions(run, data)
    assert set(recounted) == {"val_plain", "test_plain"}
    result = json.loads((run / "eval" / "epoch_001.json").read_text())
    assert recounted["test_plain"] == pytest.approx(result["test"]["acc"], abs=1e-6)


def test_predictions_are_byte_identical_when_computed_again(tmp_path):
    run, data = _run_dir(tmp_path)
    tta = {"passes": 2, "augment": "train", "seed": 0}
    _evaluate(run, tta, data, tmp_path)
    first = (run / "eval" / "epoch_001.npz").read_bytes()
    shutil.rmtree(tmp_path / "cache")
    _evaluate(run, tta, data, tmp_path)
    assert (run / "eval" / "epoch_001.npz").read_bytes() == first


def _cut_short(path):
    path.write_bytes(path.read_bytes()[:-40])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the first member's deflated bytes: its CRC no longer matches
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_cut_short, _flip_a_byte, lambda p: p.unlink()])
def test_a_damaged_or_missing_cached_prediction_is_evaluated_again(tmp_path, caplog, damage):
    run, data = _run_dir(tmp_path)
    tta = {"passes": 2, "augment": "train", "seed": 0}
    _evaluate(run, tta, data, tmp_path)
    (cached,) = (tmp_path / "cache" / "x").glob("*.npz")
    good = cached.read_bytes()
    damage(cached)
    with caplog.at_level("INFO", logger="ladder.evaluate"):
        _evaluate(run, tta, data, tmp_path)
    assert "1 checkpoint(s), 0 evaluated before" in caplog.text
    assert cached.read_bytes() == good
    assert (run / "eval" / "epoch_001.npz").read_bytes() == good


def test_predictions_file_format_round_trips_and_refuses_surprises(tmp_path):
    arrays = {"val_plain": np.array([0, 3, 199]), "test_plain": np.array([5, 5])}
    path = tmp_path / "p.npz"
    path.write_bytes(predictions.to_bytes(arrays))
    assert predictions.to_bytes(arrays) == path.read_bytes()  # no timestamps inside
    read = predictions.read(path, {"val_plain": 3, "test_plain": 2})
    assert read["val_plain"].tolist() == [0, 3, 199]
    assert read["val_plain"].dtype == np.int16
    only = predictions.read(path, {"val_plain": 3, "test_plain": 2}, kinds=("test_plain",))
    assert list(only) == ["test_plain"]  # the others listed, not read
    with pytest.raises(predictions.PredictionsError, match=r"p.npz: holds test_plain, val_plain"):
        predictions.read(path, {"val_plain": 3, "test_plain": 2, "test_tta": 2})
    with pytest.raises(predictions.PredictionsError, match=r"p.npz: val_plain is int16 \(3,\)"):
        predictions.read(path, {"val_plain": 4, "test_plain": 2})
    _cut_short(path)
    with pytest.raises(
        predictions.PredictionsError, match=r"p.npz: unreadable, damaged or cut short"
    ):
        predictions.read(path, {"val_plain": 3, "test_plain": 2})


# ----------------------------------------------------------------------------------------------
# Asked to stop (ladder.stopping)


def test_a_stopped_evaluation_keeps_the_checkpoints_it_finished(tmp_path, monkeypatch, caplog):
    run, data = _run_dir(tmp_path)
    config_json = io.read_record(run / "config.json")
    with manifest.folder(run / "checkpoints") as tmp:  # three checkpoints to evaluate
        for epoch in (1, 2, 3):
            torch.manual_seed(epoch)
            model = _varied(models.build(config_json["settings"]["model"], 3, 8))
            train.save_checkpoint(model, tmp / f"epoch_{epoch:03d}.pt")
    io.write_record(run / "config.json", {**config_json, "checkpoint_epochs": [1, 2, 3]})
    tta = {"passes": 2, "augment": "train", "seed": 0}

    # A real SIGTERM, sent as the first checkpoint's evaluation ends: the job finishes that one.
    evaluate_model = evaluate.evaluate_model
    sent = []

    def then_sigterm(*args):
        result = evaluate_model(*args)
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return result

    monkeypatch.setattr(evaluate, "evaluate_model", then_sigterm)
    with stopping.graceful(), pytest.raises(stopping.Stopped) as stop:
        _evaluate(run, tta, data, tmp_path)
    assert str(stop.value) == (
        "x: evaluation stopped by SIGTERM after 1 of 3 checkpoints; those are kept in the cache "
        "and a rerun evaluates the rest"
    )
    assert stop.value.exit_status == 143
    assert len(list((tmp_path / "cache" / "x").glob("*.json"))) == 1
    assert not (run / "eval").exists()  # the declared output is all or nothing

    monkeypatch.setattr(evaluate, "evaluate_model", evaluate_model)
    with caplog.at_level("INFO", logger="ladder.evaluate"):
        outs = _evaluate(run, tta, data, tmp_path)
    assert "3 checkpoint(s), 1 evaluated before" in caplog.text
    assert [p.name for p in outs] == ["epoch_001.json", "epoch_002.json", "epoch_003.json"]
