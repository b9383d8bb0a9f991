"""`ladder status`: where each experiment stands, read from the files alone (no engine needed).

For every selected experiment (params.yaml's `run:`, or all), one of:
- done: training's outputs are all there, the checkpoints match their manifest, and config.json
  was trained with the settings params.yaml resolves to now (what results/configs/ holds once an
  engine has read params.yaml) and on the data prepared now;
- outdated: the outputs are there, but the settings (or the prepared data) differ: the engines
  would retrain it;
- running: a process holds the experiment's lock (results/resume/<exp>.lock); the epochs done
  come from the resume folder's history.csv, the ETA from its epoch times;
- interrupted: not running, no current outputs, a session that never ended (killed): training
  resumes after the last epoch in the resume folder, or starts over when there is none;
- failed: not running, no current outputs, and the last session of logs/train/<exp>.log (each
  `ladder` command starts one with a "==== ladder" line) ended with an ERROR line: read that log;
- waiting: none of the above; nothing has run yet.
Evaluation, where training is done: evaluated (eval/ lists every checkpoint, made from the
checkpoints there now with the evaluation settings params.yaml resolves to now), outdated (the
settings changed since), stale (other checkpoints), partial (fewer checkpoints), or none.

Whether a lock is held is read without taking it where possible: a probe that took the lock even
for a moment could refuse a training run that starts at that moment. The holder's JSON stamp
names its process; on this host its open files tell whether it still holds the lock (a killed
run leaves its stamp behind, but not its process); a stamp from another host (a cluster job) is
checked by a non-blocking flock probe, which shared file systems pass on to that host's lock.
"""

from __future__ import annotations

import csv
import json
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ladder import config, io, manifest, stages, workspace
from ladder.columns import aligned
from ladder.progress import duration

SESSION = "==== ladder"  # the line each `ladder` stage command starts its log session with
_ERROR = re.compile(r"^\S+ \S+ ERROR \S+: (.*)$")  # cli.setup_logging's format
_DONE = re.compile(r"^\S+ \S+ INFO \S+: done in ")


@dataclass
class ExperimentStatus:
    experiment: str
    state: str  # done | outdated | running | interrupted | failed | waiting
    epoch: int | None  # epochs trained (the finished run's, or the resume folder's)
    epochs: int  # epochs the current settings ask for
    evaluation: str = ""  # evaluated | stale | partial | none; empty unless trained
    detail: str = ""  # one line for a person
    eta_seconds: float | None = None  # running: time left
    log: str | None = None  # the training log, when it says something
    resume: str | None = None  # the resume folder
    holder: dict | None = None  # running: the lock's stamp (pid, host, since)
    changes: list[str] = field(default_factory=list)  # outdated: what differs

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Locks


def _has_open(pid: int, path: Path) -> bool | None:
    """Whether process `pid` has `path` open (Linux); None when that cannot be read."""
    fds = Path(f"/proc/{pid}/fd")
    target = str(path.resolve())
    try:
        links = list(fds.iterdir())
    except FileNotFoundError:
        return False  # no such process
    except OSError:
        return None  # not ours to read, or not Linux
    for link in links:
        try:
            if str(link.readlink()) == target:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def holder(lock: Path) -> dict | None:
    """The stamp of the process that holds `lock` (ladder.workspace.experiment_lock), or None
    when no process does."""
    try:
        text = lock.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None  # released: experiment_lock empties the file before it lets go
    try:
        stamp = json.loads(text)
    except ValueError:
        stamp = {}
    if not isinstance(stamp, dict):
        stamp = {}
    if stamp.get("host") == socket.gethostname() and isinstance(stamp.get("pid"), int):
        held = _has_open(stamp["pid"], lock)
        if held is not None:
            return stamp if held else None
    if not workspace.is_locked(lock):
        return None
    return stamp or {"pid": None, "host": None, "since": None}


# ----------------------------------------------------------------------------------------------
# Files


def train_outputs(root: Path, name: str) -> tuple[bool, str]:
    """(True, "") when every declared output of training is there and the folders match their
    manifests; (False, "") when none is there; (False, what is wrong) otherwise."""
    problems, present = [], 0
    for out in stages.STAGES["train"].outs.values():
        path = root / out.path.replace("{exp}", name)
        exists = path.is_dir() if out.folder else path.is_file()
        present += exists
        if not exists:
            problems.append(f"{path} missing")
        elif out.folder and out.manifest:
            try:
                manifest.read(path)
            except manifest.ManifestError as e:
                problems.append(str(e))
    if not present:
        return False, ""
    return (not problems), "; ".join(problems)


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        flat = {}
        for key, sub in value.items():
            flat |= _flat(sub, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}


def changes(trained: dict, wanted: dict) -> list[str]:
    """Settings that differ, one 'key: trained -> wanted' each."""
    a, b = _flat(trained), _flat(wanted)
    missing = "(none)"
    return [
        f"{key}: {json.dumps(a.get(key, missing))} -> {json.dumps(b.get(key, missing))}"
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing)
    ]


def data_changes(root: Path, run_config: dict) -> list[str]:
    """Inputs whose digest differs from the one training recorded (prepared files through their
    manifest, stats.json by its digest), or that are gone: the engines would make them again,
    and the run with them."""
    prepared = manifest.sibling(root / stages.PREPARED)
    files = io.read_json(prepared)["files"] if prepared.exists() else None
    stats = root / stages.STATS
    found = []
    for name, digest in run_config.get("inputs", {}).items():
        if name == stats.name:
            now = manifest.file_digest(stats) if stats.exists() else None
        else:
            now = None if files is None else files.get(name, {}).get("digest")
        if now is None:
            found.append(f"{name} missing")
        elif now != digest:
            found.append(f"{name} changed")
    return found


def code_changes(run_config: dict, exp: config.Experiment) -> list[str]:
    """The model's and augmentation ops' files that differ from what training recorded
    (code.json at the time)."""
    recorded = run_config.get("code")
    if not recorded:
        return []  # trained outside the engines: no record to compare with
    now, files = config.code_now(recorded), config.recorded_files(recorded)
    return [f"{file} changed" for file in sorted(files) if now[file] != files[file]]


def evaluation(root: Path, exp: config.Experiment, run_config: dict) -> str:
    """evaluated, outdated (its settings changed since), stale (made from other checkpoints),
    partial (not every checkpoint) or none; from what the eval folder records of its making
    (ladder.manifest.made_with), by the paths the engines use, relative to `root`."""
    run = stages.RUN.replace("{exp}", exp.name)
    evals = root / run / "eval"
    if not manifest.sibling(evals).exists():
        return "none"
    made = manifest.made_with(evals)
    settings = f"{stages.EXP_CONFIGS.replace('{exp}', exp.name)}/evaluate.json"
    checkpoints = stages.manifest(f"{run}/checkpoints")
    if settings in made and made[settings] != config.settings_digest(exp.evaluate):
        return "outdated"
    try:
        current = manifest.file_digest(root / checkpoints)
    except FileNotFoundError:
        return "stale"
    if made.get(checkpoints, current) != current:
        return "stale"
    listed = io.read_json(manifest.sibling(evals)).get("files", {})
    wanted = {f"epoch_{e:03d}.json" for e in run_config.get("checkpoint_epochs", [])}
    return "evaluated" if wanted <= set(listed) else "partial"


@dataclass(frozen=True)
class Resume:
    folder: Path
    seconds: list[float]  # per epoch done
    updated: float  # when the last epoch ended (history.csv's mtime)


def resume_state(root: Path, name: str) -> Resume | None:
    """The newest resume folder of `name` and the epochs its history.csv records."""
    folders = [
        p
        for p in (root / stages.RESUME / name).glob("*")
        if p.is_dir() and not (p / stages.FINISHED).exists()  # a finished run's, kept for a rerun
    ]
    if not folders:
        return None
    folder = max(folders, key=lambda p: p.stat().st_mtime)
    history = folder / "history.csv"
    seconds: list[float] = []
    updated = folder.stat().st_mtime
    if history.exists():
        with history.open() as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
        updated = history.stat().st_mtime
    return Resume(folder, seconds, updated)


@dataclass(frozen=True)
class Session:
    ended: str  # done | error | open
    error: str = ""  # the last ERROR line's message


def last_session(log: Path) -> Session | None:
    """How the last session of a `ladder` log ended, or None without a log or a session."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    starts = [i for i, line in enumerate(lines) if SESSION in line]
    if not starts:
        return None
    session = lines[starts[-1] + 1 :]
    errors = [m.group(1) for line in session if (m := _ERROR.match(line))]
    if errors:
        return Session("error", errors[-1])
    if any(_DONE.match(line) for line in session):
        return Session("done")
    return Session("open")


# ----------------------------------------------------------------------------------------------
# One experiment


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


class _Paths:
    """An experiment's files under the project root, shown relative to it."""

    def __init__(self, root: Path, name: str):
        self.root = root
        self.run = root / stages.RUN.replace("{exp}", name)
        self.log = root / stages.STAGES["train"].log.replace("{exp}", name)
        self.lock = root / stages.RESUME / f"{name}.lock"

    def show(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


def experiment_status(
    root: Path, exp: config.Experiment, now: float | None = None
) -> ExperimentStatus:
    """Where `exp` stands under `root` (see the module doc), at time `now`."""
    paths = _Paths(root, exp.name)
    resume = resume_state(root, exp.name)
    stamp = holder(paths.lock)
    if stamp is not None:
        return _running(paths, exp, resume, stamp, time.time() if now is None else now)
    complete, problem = train_outputs(root, exp.name)
    session = last_session(paths.log)
    if complete:
        try:
            run_config = io.read_record(paths.run / "config.json")
            return _trained(paths, exp, run_config, session)
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = f"{paths.show(paths.run / 'config.json')}: {e}"
    return _not_trained(paths, exp, resume, session, problem)


def _running(paths: _Paths, exp, resume: Resume | None, stamp: dict, now: float):
    epochs, done = exp.train["epochs"], len(resume.seconds) if resume else 0
    status = ExperimentStatus(exp.name, "running", done, epochs, holder=stamp)
    status.resume = paths.show(resume.folder) if resume else None
    by = f"pid {stamp.get('pid')} on {stamp.get('host')} since {stamp.get('since')}"
    if not done:
        status.detail = f"first epoch of this session not done yet; {by}"
        return status
    recent = resume.seconds[-3:]
    per_epoch = sum(recent) / len(recent)
    status.eta_seconds = max(0.0, (epochs - done) * per_epoch - (now - resume.updated))
    status.detail = (
        f"epoch {done + 1} of {epochs}, {per_epoch:.1f} s/epoch, "
        f"ETA {duration(status.eta_seconds)}; {by}"
    )
    return status


def _trained(paths: _Paths, exp, run_config: dict, session: Session | None):
    found = changes(run_config["settings"], exp.train)
    found += data_changes(paths.root, run_config)
    found += code_changes(run_config, exp)
    trained = int(run_config["settings"]["epochs"])
    stopped = run_config.get("stopped_early")
    if stopped:  # early stopping: the epochs it ran
        trained = stopped["epoch"]
    state = "outdated" if found else "done"
    status = ExperimentStatus(exp.name, state, trained, exp.train["epochs"], changes=found)
    status.evaluation = evaluation(paths.root, exp, run_config)
    if stopped:  # where, and what it saved
        status.detail = (
            f"stopped early after epoch {stopped['epoch']} (best val {stopped['best_val_acc']:.2f}%"
            f" at epoch {stopped['best_epoch']}); checkpoints of epochs "
            + ", ".join(map(str, run_config["checkpoint_epochs"]))
        )
    if found:
        more = " ..." if len(found) > 3 else ""
        status.detail = _join(
            status.detail,
            f"{len(found)} change(s) since trained: " + "; ".join(found[:3]) + more,
        )
    if run_config.get("code_version") != stages.version("train"):
        status.detail = _join(status.detail, "trained with other train code")
    if session and session.ended == "error":
        status.detail = _join(status.detail, f"a later run failed: {session.error}")
        status.log = paths.show(paths.log)
    return status


def _not_trained(paths: _Paths, exp, resume: Resume | None, session: Session | None, problem):
    epochs, done = exp.train["epochs"], len(resume.seconds) if resume else 0
    status = ExperimentStatus(exp.name, "waiting", done, epochs)
    status.resume = paths.show(resume.folder) if resume else None
    if session and session.ended == "error":
        status.state, status.log = "failed", paths.show(paths.log)
        status.detail = f"{session.error} (read {status.log})"
    elif resume and done:
        status.state = "interrupted"
        status.detail = f"resumes after epoch {done} of {epochs} ({status.resume})"
    elif resume or (session and session.ended == "open"):
        status.state = "interrupted"
        status.detail = "stopped before its first epoch ended; starts over"
    if problem:
        status.detail = _join(status.detail, f"outputs: {problem}")
    return status


def status(
    params_file: str | Path, root: str | Path = ".", everything: bool = False
) -> list[ExperimentStatus]:
    """The status of `params_file`'s selected experiments (all with `everything`) under `root`."""
    params = config.load(params_file)
    names = list(params.experiments) if everything else list(params.selected)
    now = time.time()
    return [experiment_status(Path(root), params.experiments[n], now) for n in names]


def format_status(rows: list[ExperimentStatus]) -> str:
    table = [
        [
            r.experiment,
            r.state,
            f"{'?' if r.epoch is None else r.epoch}/{r.epochs}",
            r.evaluation or "-",
            r.detail,
        ]
        for r in rows
    ]
    counts = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    return aligned(["experiment", "state", "epoch", "eval", "detail"], table, {2}) + (
        f"\n\n{len(rows)} experiment(s): {summary}"
    )
