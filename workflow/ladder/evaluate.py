"""`ladder evaluate`: an experiment's checkpoints on val and test, with and without test-time
augmentation, one process for all of them.

TTA (the seed's method): N passes of the experiment's own training augmentations over the test
set; each pass votes for its top class, the class with most votes wins, and a tie is broken by
the summed probabilities. The mean-probability variant (argmax of the average) is reported too.

Every evaluation also keeps its per-image predictions (plain val, plain test, TTA vote) in
epoch_NNN.npz beside epoch_NNN.json (format: ladder.predictions): the report counts intervals
and paired comparisons from them.

Each checkpoint's result is kept in results/cache/evaluate/<exp>/<key>.json and <key>.npz, the
key a fingerprint of everything it depends on (the checkpoint's digest, the TTA settings, the
model and augmentation settings, the val/test data, the evaluation code). A result counts as
cached only when both files are there and readable: one cut short is evaluated again. A rerun
evaluates only the checkpoints whose key is new: one new checkpoint does not redo the other 59,
and a killed job picks up where it stopped; asked to stop (ladder.stopping), a job stops between
two checkpoints. The declared output, <run>/eval/ with epoch_NNN.json
and epoch_NNN.npz per checkpoint and its manifest, is rebuilt from those files every time.
"""

from __future__ import annotations

import io as stdio
import logging
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ladder import (
    augment,
    config,
    devices,
    io,
    manifest,
    models,
    predictions,
    provenance,
    stages,
    stopping,
)
from ladder.inference import predict
from ladder.loader import DeviceSplit

log = logging.getLogger(__name__)

# The prepared files an evaluation reads.
EVAL_INPUTS = ("val_x.npy", "val_y.npy", "test_x.npy", "test_y.npy", "classes.json")
PREDICTIONS = "predictions_digest"  # a cached result's record of its .npz file


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, truncated, or not a plain dict of tensors."""


def load_checkpoint(path: str | Path, manifest_of: dict | None = None) -> dict[str, torch.Tensor]:
    """Load weights with weights_only=True: a checkpoint holding anything but tensors is refused,
    never unpickled into live objects. With `manifest_of` (the checkpoints folder's manifest) the
    bytes must also match the digest training recorded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    if manifest_of is not None:
        manifest.check_bytes(path.parent, path.name, data, manifest_of)
    if not zipfile.is_zipfile(stdio.BytesIO(data)):
        raise CheckpointError(
            f"{path}: corrupt or truncated - not a PyTorch checkpoint archive "
            f"({len(data)} bytes); rerun the training that writes it"
        )
    try:
        state = torch.load(stdio.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's message suggests weights_only=False: wrong advice for a file that carries
        # code, so it is not repeated.
        raise CheckpointError(
            f"{path}: refused - it holds Python objects besides tensors, which could run code "
            "when loaded; checkpoints written by `ladder train` never do (do not load this file)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def vote(predictions: torch.Tensor, prob_sum: torch.Tensor) -> torch.Tensor:
    """Majority vote over passes. predictions: (passes, N) class indices; prob_sum: (N, classes)
    summed probabilities. Among the classes with the most votes, the highest prob_sum wins."""
    votes = torch.zeros_like(prob_sum).scatter_add_(
        1, predictions.T, torch.ones_like(predictions.T, dtype=prob_sum.dtype)
    )
    tied = votes == votes.max(dim=1, keepdim=True).values
    return torch.where(tied, prob_sum, torch.finfo(prob_sum.dtype).min).argmax(dim=1)


def tta_views(settings: dict, tta: dict) -> list:
    """The TTA passes as callables (uint8 images, generator) -> float [0, 1]; none when off."""
    if tta["augment"] == "flip":
        return [_as_is, _mirrored]
    return [augment.Augment(settings["augment"])] * tta["passes"]


def _as_is(images: torch.Tensor, _g) -> torch.Tensor:
    return images.float().div_(255)


def _mirrored(images: torch.Tensor, _g) -> torch.Tensor:
    return images.float().div_(255).flip(-1)


def tta_predict(
    model: nn.Module, split: DeviceSplit, views: list, norm: nn.Module, seed: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of the split through the model: (majority vote, summed probabilities).
    One generator for all passes, seeded: the same checkpoint always gives the same numbers."""
    g = torch.Generator(split.device).manual_seed(seed)
    preds, prob_sum = [], torch.zeros(len(split), classes, device=split.device)
    for view in views:
        probs = predict(model, split, lambda im, view=view: norm(view(im, g))).softmax(1)
        preds.append(probs.argmax(1))
        prob_sum += probs
    return vote(torch.stack(preds), prob_sum), prob_sum


def evaluate_model(
    model: nn.Module, run_config: dict, tta: dict, val: DeviceSplit, test: DeviceSplit
) -> tuple[dict, dict[str, np.ndarray]]:
    """(the result as epoch_NNN.json holds it, the per-image predictions as epoch_NNN.npz does:
    kind -> int16 class indices, see ladder.predictions)."""
    norm = augment.Normalize(**run_config["normalization"]).to(test.device)
    classes = run_config["num_classes"]
    result, predicted = {}, {}
    for name, split in (("val", val), ("test", test)):
        logits = predict(model, split, lambda im: norm(im.float().div_(255)))
        y = split.y.to(logits.device)
        pred = logits.argmax(1)
        result[name] = {
            "loss": nn.functional.cross_entropy(logits, y).item(),
            "acc": (pred == y).float().mean().item(),
        }
        predicted[f"{name}_plain"] = pred
        del logits  # one split's logits at a time (20,000 x 200 floats for val)
    test_y = test.y.to(pred.device)
    per_class = _per_class(predicted["test_plain"], test_y, classes)

    per_class_tta = None
    result["tta"] = None
    views = tta_views(run_config["settings"], tta)
    if views:
        voted, prob_sum = tta_predict(model, test, views, norm, tta["seed"], classes)
        result["tta"] = {
            "augment": tta["augment"],
            "passes": len(views),
            "seed": tta["seed"],
            "vote_acc": (voted == test_y).float().mean().item(),
            "mean_acc": (prob_sum.argmax(1) == test_y).float().mean().item(),
        }
        per_class_tta = _per_class(voted, test_y, classes)
        predicted["test_tta"] = voted

    result["per_class"] = [
        {
            "index": c,
            "count": n,
            "test_acc": acc,
            "tta_acc": None if per_class_tta is None else per_class_tta[c][1],
        }
        for c, (n, acc) in enumerate(per_class)
    ]
    result["images"] = {"val": len(val), "test": len(test)}
    # int16 on the device, then one small copy each (2 bytes per image).
    arrays = {k: v.to(torch.int16).cpu().numpy() for k, v in predicted.items()}
    return result, arrays


def _per_class(pred: torch.Tensor, y: torch.Tensor, k: int) -> list[tuple[int, float | None]]:
    count = torch.bincount(y, minlength=k)
    hits = torch.bincount(y[pred == y], minlength=k)
    return [
        (int(n), (h / n) if n else None) for n, h in zip(count.tolist(), hits.tolist(), strict=True)
    ]


def evaluate_run(
    run: str | Path,
    tta: dict,
    data: str | Path,
    cache_root: str | Path,
    device: str = "auto",
    threads: int | None = None,
    code: dict | None = None,
) -> list[Path]:
    """Evaluate every checkpoint of a training run into <run>/eval/epoch_NNN.{json,npz}; return
    the JSON files."""
    run, data = Path(run), Path(data)
    run_config = provenance.read_record(run / "config.json")
    checkpoints = manifest.read(run / "checkpoints")
    prepared = manifest.read(data)["files"]
    cache = Path(cache_root) / run_config["experiment"]
    base = {
        "tta": tta,
        "run": {k: run_config[k] for k in ("settings", "normalization", "num_classes",
                                           "image_size")},
        "data": {f: prepared[f]["digest"] for f in EVAL_INPUTS},
        "code_version": stages.version("evaluate"),
        "code": code,
    }  # fmt: skip
    keys = {}
    for epoch in run_config["checkpoint_epochs"]:
        file = f"epoch_{epoch:03d}.pt"
        if file not in checkpoints["files"]:
            raise CheckpointError(f"{run / 'checkpoints' / file}: not in {run}/checkpoints")
        keys[epoch] = config.fingerprint({**base, "checkpoint": checkpoints["files"][file]})

    results = {e: _cached(cache, k) for e, k in keys.items()}
    todo = [e for e, result in results.items() if result is None]
    log.info(
        "%s: %d checkpoint(s), %d evaluated before", run_config["experiment"], len(keys),
        len(keys) - len(todo),
    )  # fmt: skip
    if todo:
        manifest.verify(data, EVAL_INPUTS)  # every byte evaluation is about to read
        evaluated = _evaluate_checkpoints(
            run, run_config, checkpoints, tta, data, todo, device, threads
        )
        for epoch, result, arrays in evaluated:
            # The predictions first: a result counts as cached once its JSON (a record that
            # vouches for them by digest) is there too.
            data_bytes = predictions.to_bytes(arrays)
            io.write_bytes(_npz(cache, keys[epoch]), data_bytes)
            io.write_record(
                cache / f"{keys[epoch]}.json",
                {**result, PREDICTIONS: manifest.bytes_digest(data_bytes)},
            )
            results[epoch] = result
    current = set(keys.values())
    for stale in [*cache.glob("*.json"), *cache.glob(f"*{predictions.SUFFIX}")]:
        if stale.stem not in current:  # keep the cache to what the run has now
            stale.unlink()

    written = []
    with manifest.folder(run / "eval", made_with=provenance.made_with()) as tmp:
        for epoch, result in results.items():
            io.write_json(tmp / f"epoch_{epoch:03d}.json", result)
            shutil.copyfile(_npz(cache, keys[epoch]), _npz(tmp, f"epoch_{epoch:03d}"))
            written.append(run / "eval" / f"epoch_{epoch:03d}.json")
    return written


def _npz(folder: Path, stem: str) -> Path:
    return folder / f"{stem}{predictions.SUFFIX}"


def _cached(cache: Path, key: str) -> dict | None:
    """The cached result of `key`, or None to evaluate again: absent, or either file damaged
    (the JSON checked against its own digest, the predictions against the digest it records,
    then read whole)."""
    path = cache / f"{key}.json"
    try:
        result = io.read_record(path)
        expected = result.pop(PREDICTIONS)
        if manifest.file_digest(_npz(cache, key)) != expected:
            raise predictions.PredictionsError(f"{_npz(cache, key)}: differs from {path}")
        lengths = predictions.expected(result["images"], tta=result["tta"] is not None)
        predictions.read(_npz(cache, key), lengths)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:  # damaged: evaluated again, and replaced
        log.warning("%s: cached evaluation unusable (%s); evaluating again", path, e)
        return None
    return result


def _evaluate_checkpoints(run, run_config, checkpoints, tta, data, epochs, device, threads):
    """(epoch, result, predictions) for each of `epochs`, loading the data and the model once."""
    dev = torch.device(devices.resolve(device))
    if threads:
        torch.set_num_threads(threads)
    classes = io.read_json(data / "classes.json")
    val, test = DeviceSplit.load(data, "val", dev), DeviceSplit.load(data, "test", dev)
    model = models.build(
        run_config["settings"]["model"], run_config["num_classes"], run_config["image_size"]
    ).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    for done, epoch in enumerate(epochs):
        if stopping.requested():  # what was evaluated is cached already (evaluate_run)
            signal = stopping.requested()
            raise stopping.Stopped(
                f"{run_config['experiment']}: evaluation stopped by {stopping.name(signal)} "
                f"after {done} of {len(epochs)} checkpoints; those are kept in the cache and a "
                "rerun evaluates the rest",
                signal,
            )
        started = time.perf_counter()
        path = run / "checkpoints" / f"epoch_{epoch:03d}.pt"
        try:
            model.load_state_dict(load_checkpoint(path, checkpoints))
        except RuntimeError as e:  # shapes or keys do not match the model
            raise CheckpointError(f"{path}: does not fit the model in config.json: {e}") from None
        result, arrays = evaluate_model(model, run_config, tta, val, test)
        for row in result["per_class"]:
            row.update(id=classes[row["index"]]["id"], name=classes[row["index"]]["name"])
        # Percent, as wherever a person reads them (the JSON holds fractions).
        tta_text = f", TTA vote {100 * result['tta']['vote_acc']:.2f}%" if result["tta"] else ""
        log.info(
            "%s epoch %d: val %.2f%% test %.2f%%%s (%.1fs)",
            run_config["experiment"],
            epoch,
            100 * result["val"]["acc"],
            100 * result["test"]["acc"],
            tta_text,
            time.perf_counter() - started,
        )
        yield epoch, {"experiment": run_config["experiment"], "epoch": epoch,
                      "checkpoint": str(path), **result}, arrays  # fmt: skip
