"""TensorBoard's HPARAMS view of the ladder: report/tensorboard/ holds one run per row of the
ladder table, with the settings that differ between the experiments as hyperparameters and the
row's results at its val-picked checkpoint as metrics (test with and without TTA, val, train,
the Δ versus the parent; accuracies in %, as everywhere). `tensorboard --logdir results/` shows
them beside the training curves.

Written with TensorBoard's own protos and record writer rather than torch's SummaryWriter: a
SummaryWriter names its file after the clock and the host and stamps every event with the time,
and the report is byte-for-byte reproducible. Here every name is fixed and every wall time 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.summary.writer.record_writer import RecordWriter

from ladder import config
from ladder.report.tables import Runs

FOLDER = "tensorboard"  # stages.py declares it
EVENTS = "events.out.tfevents.0.ladder-report"  # TensorBoard reads files named *tfevents*
# ladder.csv's columns shown as metrics, with their names in TensorBoard.
METRICS = {
    "test_acc": "test, no TTA (%)",
    "test_acc_tta": "test, TTA vote (%)",
    "val_acc": "val (%)",
    "train_acc": "train (%)",
    "best_epoch": "val-picked epoch",
    "delta_test_vs_parent": "Δ test vs parent (no TTA, pp)",
}
TAG = "ladder/{}"  # a metric's scalar tag


def write(runs: Runs, ladder: pd.DataFrame, out: Path) -> None:
    """out/tensorboard/: the experiment's configuration, then a run per ladder row."""
    folder = out / FOLDER
    settings = {name: _flat(runs.settings[name]) for name in ladder["experiment"]}
    keys = _differing(settings)
    config = hp.hparams_config_pb(
        [hp.HParam(k) for k in keys],
        [hp.Metric(TAG.format(c), display_name=shown) for c, shown in METRICS.items()],
        time_created_secs=0,
    )
    _write_events(folder / EVENTS, [config])
    for _, row in ladder.iterrows():
        name = row["experiment"]
        session = hp.hparams_pb(
            {k: settings[name].get(k, "") for k in keys}, trial_id=name, start_time_secs=0
        )
        values = [
            summary_pb2.Summary.Value(tag=TAG.format(c), simple_value=float(row[c]))
            for c in METRICS
            if not pd.isna(row[c])
        ]
        _write_events(folder / name / EVENTS, [session, summary_pb2.Summary(value=values)])


def _flat(settings: dict) -> dict[str, bool | int | float | str]:
    """Nested settings as dotted keys (config.iter_keys, as the report's "changes" text) with the
    values an hparam can hold: None, lists and an empty section as JSON text."""
    return {
        key: value
        if isinstance(value, bool | int | str)
        or (isinstance(value, float) and math.isfinite(value))
        else json.dumps(value)
        for key, value in config.iter_keys(settings)
    }


def _differing(settings: dict[str, dict]) -> list[str]:
    """The keys whose values are not the same in every experiment (all of them for one): the
    shipped ladder's ~100 settings per experiment would bury the few that matter."""
    keys = sorted({k for flat in settings.values() for k in flat})
    if len(settings) < 2:
        return keys
    return [k for k in keys if len({json.dumps(s.get(k)) for s in settings.values()}) > 1]


def _write_events(path: Path, summaries: list[summary_pb2.Summary]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        writer = RecordWriter(f)
        writer.write(
            event_pb2.Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString()
        )
        for summary in summaries:
            writer.write(
                event_pb2.Event(wall_time=0.0, step=0, summary=summary).SerializeToString()
            )
