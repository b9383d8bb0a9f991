"""params.yaml: load, validate against the schema, resolve `base:` chains, derive stage settings.

This is the one place settings are interpreted. Snakemake (workflow/rules/common.smk), the DVC
`configure` stage and the tests all go through `Params`, so both engines see the same resolution.
Stages never read params.yaml themselves: they read the small JSON files `write_settings` keeps.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import yaml

from ladder import digest, io, manifest
from ladder.augment_registry import MIXER, MIXER_CODE, OPS, mixes
from ladder.data.registry import SOURCES
from ladder.model_registry import MODELS

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "params.schema.yaml"

# Keys of an experiment that are its own and never inherited through `base:`.
OWN_KEYS = ("base", "description", "replicate_of", "reference")
# The one training setting in which a seed replicate (`replicate_of`) differs from its experiment.
REPLICATE_KEY = "seed"
# Keys that configure evaluation, not training: editing them must not retrain.
EVAL_KEYS = ("tta",)

# Settings that only mean something for one choice of `name`: they are dropped from the resolved
# settings otherwise, so inheriting (or editing) an irrelevant key never causes a rerun. A model's
# come from its registry entry.
_WARMUP = ("warmup_epochs", "warmup_start")
RELEVANT: dict[str, dict[str, tuple[str, ...]]] = {
    "model": {name: model.settings for name, model in MODELS.items()},
    "optimizer": {
        "sgd": ("lr", "momentum", "nesterov", "weight_decay", "decay_norms_and_biases"),
        "adamw": ("lr", "weight_decay", "betas", "decay_norms_and_biases"),
    },
    "schedule": {
        "constant": _WARMUP,
        "cosine": ("t_max", "eta_min", *_WARMUP),
        "multistep": ("milestones", "gamma", *_WARMUP),
        "plateau": ("factor", "patience"),
        "linear": _WARMUP,
        "onecycle": ("pct_start",),
    },
}


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the file and the key path at fault."""


# --------------------------------------------------------------------------------------------
# Loading and schema validation


@cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA_FILE.read_text())


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"line {line}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> Any:
    """Parse a params file; every error names the file (and the line, for syntax errors)."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: {where}not valid YAML ({problem})") from None


@contextlib.contextmanager
def expected_errors_exit() -> Iterator[None]:
    """For code Snakemake runs as it loads the workflow: an expected error (bad params, another
    engine at work) prints its message alone and exits 1, instead of Snakemake's traceback."""
    try:
        yield
    except (ValueError, RuntimeError, OSError) as e:  # ConfigError is a ValueError
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


def check_syntax(path: str | Path) -> None:
    """Raise ConfigError (file, line, column) if `path` is not valid YAML; a missing file is
    left for the caller to report."""
    path = Path(path)
    if path.exists():
        _read_yaml(path)


def load(path: str | Path) -> Params:
    """Read and resolve a params file; every error names the file."""
    path = Path(path)
    raw = _read_yaml(path)
    return Params.from_dict(raw or {}, source=str(path))


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _format_error(error: jsonschema.ValidationError) -> list[str]:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        lines = []
        for key in error.instance:
            if key in known:
                continue
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = (
                f" (did you mean {hint[0]!r}?)" if hint else f" (valid keys: {', '.join(known)})"
            )
            lines.append(f"{_key_path([*error.absolute_path, key])}: unknown key{suggestion}")
        return lines
    if error.validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return [f"{where}: {best.message}"]
    message = error.message
    if isinstance(error.instance, str) and re.fullmatch(
        r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", error.instance
    ):
        message += " (YAML reads 1e-4 as text: write 1.0e-4)"
    return [f"{where}: {message}"]


def _validator(sub_schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {**sub_schema, "$defs": schema()["$defs"]}, format_checker=None
    )


def _validate(
    instance: Any,
    sub_schema: dict,
    source: str,
    prefix: tuple = (),
    validator: jsonschema.Draft202012Validator | None = None,
) -> None:
    """`validator`: one made for `sub_schema` before (making it is most of the cost)."""
    validator = validator or _validator(sub_schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for e in errors:
            e.path.extendleft(reversed(prefix))
            lines += _format_error(e)
        raise ConfigError(f"{source}: " + "\n  ".join(dict.fromkeys(lines)))


# --------------------------------------------------------------------------------------------
# Defaults and merging


def _deref(node: dict) -> dict:
    ref = node.get("$ref")
    if ref:
        node = {
            **schema()["$defs"][ref.rsplit("/", 1)[1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    return node


def defaults(node: dict) -> Any:
    """The default value a schema node describes, with nested object defaults filled in."""
    node = _deref(node)
    value = copy.deepcopy(node.get("default"))
    props = node.get("properties")
    if props and isinstance(value, dict):
        for key, sub in props.items():
            if key not in value:
                sub_default = defaults(sub)
                if sub_default is not None or "default" in _deref(sub):
                    value[key] = sub_default
    return value


def deep_merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Resolved objects


@dataclass(frozen=True)
class Experiment:
    name: str
    chain: tuple[str, ...]  # this experiment, its base, the base's base, ...
    train: dict  # resolved training settings: what the weights depend on
    evaluate: dict  # resolved TTA settings
    meta: dict  # base, description, replicate_of, reference: only the report reads them

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.train)

    @property
    def checkpoint_epochs(self) -> list[int]:
        return checkpoint_epochs(self.train["epochs"], self.train["checkpoint_every"])


def checkpoint_epochs(epochs: int, every: int) -> list[int]:
    return sorted({*range(every, epochs + 1, every), epochs})


@dataclass(frozen=True)
class Params:
    dataset: dict
    tta: dict
    experiments: dict[str, Experiment]
    selected: tuple[str, ...]
    source: str = "params.yaml"
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "params.yaml") -> Params:
        raw = json.loads(json.dumps(raw))  # plain dicts/lists (Snakemake hands in OrderedDicts)
        top = schema()
        if isinstance(raw.get("experiments"), dict):
            _check_names(raw["experiments"], source)
        _validate(raw, {k: v for k, v in top.items() if k != "$defs"}, source)
        dataset = deep_merge(defaults(top["properties"]["dataset"]), raw.get("dataset", {}))
        tta = deep_merge(defaults(top["properties"]["tta"]), raw.get("tta", {}))
        diffs = raw.get("experiments", {})
        experiments = _resolve_all(diffs, tta, source)
        _check_replicates(experiments, source)
        selected = tuple(raw.get("run") or experiments)
        for name in selected:
            if name not in experiments:
                raise ConfigError(
                    f"{source}: run: unknown experiment {name!r}{_suggest(name, experiments)}"
                )
        return cls(dataset, tta, experiments, selected, source, raw)

    # -- what each stage reads ------------------------------------------------------------
    def download_settings(self) -> dict:
        """download.json: the keys the source's download reads, and its code (source_code)."""
        d = self.dataset
        reads = {k: d[k] for k in SOURCES[d["source"]].reads}
        return {"source": d["source"], **reads, "code": source_code(d["source"], "download")}

    def prepare_settings(self) -> dict:
        """prepare.json: the split's keys, and the code of the source's layout reader."""
        d = self.dataset
        keys = ["source", "val_fraction", "split_seed", "image_size"]
        if not SOURCES[d["source"]].own_test_set(d):
            keys.append("test_fraction")
        return {**{k: d[k] for k in keys}, "code": source_code(d["source"], "layout")}

    def settings_files(self) -> dict[str, dict]:
        """Relative path under results/configs/ -> content. Every experiment has its files (DVC
        has a stage per experiment); selection.json names the ones `run` selects."""
        files = {
            "download.json": self.download_settings(),
            "prepare.json": self.prepare_settings(),
            "selection.json": {"experiments": list(self.selected)},
        }
        digests: dict[str, str] = {}  # each file read once, however many experiments use it
        for name in self.experiments:
            exp = self.experiments[name]
            files[f"experiments/{name}/train.json"] = exp.train
            files[f"experiments/{name}/evaluate.json"] = exp.evaluate
            files[f"experiments/{name}/report.json"] = {"name": name, **exp.meta}
            files[f"code/{name}.json"] = code_record(exp.train, digests)
        return files

    def settings(self, relpath: str) -> dict:
        files = self.settings_files()
        if relpath not in files:
            raise ConfigError(
                f"{self.source}: no settings file {relpath!r}{_suggest(relpath, files)}"
            )
        return files[relpath]

    def descendants(self, name: str) -> list[str]:
        """Experiments whose settings inherit from `name` (itself included)."""
        return [n for n, e in self.experiments.items() if name in e.chain]


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
LOCK_SUFFIX = ".lock"  # results/resume/<exp>.lock is experiment <exp>'s training lock


def _check_names(experiments: Mapping, source: str) -> None:
    """Experiment names become file and folder names (results/experiments/<exp>, logs/train/
    <exp>.log, results/resume/<exp>.lock): refuse those that cannot be one, or would be
    another's, before anything runs. The schema says the same; this says it clearly, and sees
    a trailing line break (JSON Schema's `$` lets one through)."""
    seen: dict[str, str] = {}
    for name in experiments:
        where = f"{source}: experiments: {json.dumps(name)}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: not a valid experiment name (a letter or digit, then letters, "
                "digits, '_', '.' or '-', at most 200 characters): names become file names"
            )
        if name.endswith(LOCK_SUFFIX):
            raise ConfigError(
                f"{where}: a name may not end in {LOCK_SUFFIX!r} (results/resume/"
                f"{name} is the training lock of experiment {name[: -len(LOCK_SUFFIX)]!r})"
            )
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise ConfigError(
                f"{where}: differs from {other!r} only in case; on file systems that ignore "
                "case (macOS, Windows) both would share one folder: rename one"
            )


PACKAGE = Path(__file__).resolve().parent


def _files(code: tuple[str, ...], digests: dict[str, str]) -> dict[str, str]:
    return {
        f"workflow/ladder/{rel}": digests.setdefault(rel, digest.file_digest(PACKAGE / rel))
        for rel in code
    }


def model_code(name: str, digests: dict[str, str] | None = None) -> dict:
    """What builds model `name`: its registry entry's builder and the digest of every file it
    runs (the entry's `code`), from this workspace's package."""
    entry = MODELS[name]
    return {"build": entry.build, "files": _files(entry.code, {} if digests is None else digests)}


def code_record(train: Mapping, digests: dict[str, str] | None = None) -> dict:
    """An experiment's code record (results/configs/code/<exp>.json): the code of its model, of
    the augmentation ops it turns on and of batch mixing if it mixes, each file by digest.
    Training and evaluation read it and check it against the code they run (`check_code`):
    editing one model's or one op's files reruns only the experiments that use it. Evaluation's
    TTA runs the same ops, or none."""
    digests = {} if digests is None else digests
    ops = {
        op.name: {"apply": op.apply, "files": _files(op.code, digests)}
        for op in OPS
        if op.probability(train["augment"]) > 0
    }
    record = {"model": model_code(train["model"]["name"], digests), "augment": ops}
    if mixes(train["mix"]):
        record["mix"] = {"mixer": MIXER, "files": _files(MIXER_CODE, digests)}
    return record


def source_code(name: str, role: str) -> dict:
    """What a dataset source's `role` (download or layout) runs: its function and the digest of
    every file it runs, from this workspace's package. download.json and prepare.json carry it,
    so editing one source's files reruns only the data stages of the dataset that uses it."""
    entry = SOURCES[name]
    return {
        role: getattr(entry, role),
        "files": _files(getattr(entry, f"{role}_code"), {}),
    }


def code_now(recorded: Mapping) -> dict[str, str]:
    """The digests, in this workspace's package now, of the files a code record lists."""
    now = {}
    for file in recorded_files(recorded):
        path = PACKAGE / file.removeprefix("workflow/ladder/")
        now[file] = digest.file_digest(path) if path.is_file() else "(none)"
    return now


def recorded_files(recorded: Mapping) -> dict[str, str]:
    """file -> digest of every file a code record lists (an experiment's: its model's and its
    ops'; a source's: its own)."""
    parts = [
        recorded,
        recorded.get("model", {}),
        *recorded.get("augment", {}).values(),
        recorded.get("mix", {}),
    ]
    return {file: d for part in parts for file, d in part.get("files", {}).items()}


class CodeChangedError(RuntimeError):
    """The code a job runs is not the code its settings recorded."""


def check_code(recorded: Mapping, path: str | Path) -> None:
    """Refuse to run a model, an op or a source whose files changed since `path` (code.json,
    download.json, prepare.json) recorded them: the result would carry a record of other code
    than made it."""
    now = code_now(recorded)
    for file, expected in recorded_files(recorded).items():
        if now[file] != expected:
            raise CodeChangedError(
                f"{file} changed since {path} was written: run the same command again "
                "(Snakemake writes the settings anew as it starts; DVC: `dvc repro`)"
            )


def _suggest(word: str, choices) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _merged(
    name: str, diffs: Mapping, root: tuple, inherited: list[str], source: str, memo: dict
) -> tuple[tuple[str, ...], dict, dict]:
    """(chain, train settings, TTA settings) of `name` before pruning: its diff merged over its
    base's merged settings. Each experiment is merged once (`memo`), so a ladder of n rungs
    costs O(n), however deep its `base:` chains."""
    pending: list[str] = []  # from `name` up to the first ancestor merged before
    node: str | None = name
    while node is not None and node not in memo:
        if node in pending:
            cycle = " -> ".join([*pending[pending.index(node) :], node])
            raise ConfigError(f"{source}: experiments.{name}.base: inheritance cycle {cycle}")
        pending.append(node)
        base = diffs[node].get("base")
        if base and base not in diffs:
            where = f"{source}: experiments.{node}.base"
            raise ConfigError(f"{where}: unknown experiment {base!r}{_suggest(base, diffs)}")
        node = base or None
    chain, train, tta = root if node is None else memo[node]
    for ancestor in reversed(pending):
        diff = diffs[ancestor]
        train = deep_merge(train, {k: v for k, v in diff.items() if k in inherited})
        tta = deep_merge(tta, diff.get("tta", {}))
        chain = (ancestor, *chain)
        memo[ancestor] = (chain, train, tta)
    return memo[name]


def _resolve_all(diffs: Mapping, tta_defaults: dict, source: str) -> dict[str, Experiment]:
    exp_schema = schema()["$defs"]["experiment"]
    inherited = [k for k in exp_schema["properties"] if k not in OWN_KEYS + EVAL_KEYS]
    root = ((), {k: defaults(exp_schema["properties"][k]) for k in inherited}, dict(tta_defaults))
    reference = defaults(exp_schema["properties"]["reference"])
    validator = _validator({"$ref": "#/$defs/experiment"})
    memo: dict = {}
    experiments = {}
    for name, own in diffs.items():
        chain, train, tta = _merged(name, diffs, root, inherited, source, memo)
        # Merged settings are shared with the experiments built on this one: never modified.
        train = _coerce_numbers(train, exp_schema)
        train = _prune(train, own, f"{source}: experiments.{name}")
        _check(train, f"{source}: experiments.{name}")
        meta = {
            "base": own.get("base", ""),
            "description": own.get("description", ""),
            "replicate_of": own.get("replicate_of", ""),
            "reference": deep_merge(reference, own.get("reference", {})),
        }
        _validate(train, {"$ref": "#/$defs/experiment"}, source, ("experiments", name), validator)
        experiments[name] = Experiment(name, chain, train, copy.deepcopy(tta), meta)
    return experiments


def _check_replicates(experiments: Mapping[str, Experiment], source: str) -> None:
    """`replicate_of: X`: X exists and is no replicate itself; the replicate trains exactly as X
    except for `seed`, which differs from X's and from every other replicate's of X; and it is
    evaluated exactly as X is. The first differing setting is named."""
    seeds: dict[str, dict[int, str]] = {}
    for name, exp in experiments.items():
        primary = exp.meta["replicate_of"]
        if not primary:
            continue
        where = f"{source}: experiments.{name}.replicate_of"
        if primary not in experiments:
            raise ConfigError(
                f"{where}: unknown experiment {primary!r}{_suggest(primary, experiments)}"
            )
        if primary == name:
            raise ConfigError(f"{where}: an experiment cannot be a replicate of itself")
        grand = experiments[primary].meta["replicate_of"]
        if grand:
            raise ConfigError(
                f"{where}: {primary!r} is itself a replicate of {grand!r}; "
                f"write replicate_of: {grand}"
            )
        other = experiments[primary]
        for rule, mine, theirs in (
            (
                f"train as {primary} does except for `{REPLICATE_KEY}`",
                _without_seed(exp.train),
                _without_seed(other.train),
            ),
            (f"be evaluated as {primary} is", {"tta": exp.evaluate}, {"tta": other.evaluate}),
        ):
            key = _first_difference(mine, theirs)
            if key is not None:
                raise ConfigError(
                    f"{where}: a seed replicate must {rule}, but {key} differs "
                    f"({_show(mine, key)} here, {_show(theirs, key)} in {primary})"
                )
        seed = exp.train[REPLICATE_KEY]
        taken = seeds.setdefault(primary, {other.train[REPLICATE_KEY]: primary})
        if seed in taken:
            raise ConfigError(
                f"{where}: {name} has {REPLICATE_KEY} {seed}, as {taken[seed]} has: a replicate "
                f"needs a {REPLICATE_KEY} of its own (e.g. {REPLICATE_KEY}: {max(taken) + 1})"
            )
        taken[seed] = name


_ABSENT = object()


def _without_seed(train: dict) -> dict:
    return {k: v for k, v in train.items() if k != REPLICATE_KEY}


def _first_difference(a: dict, b: dict) -> str | None:
    """The first dotted key (in sorted order) whose value differs between `a` and `b`."""
    flat_a, flat_b = dict(iter_keys(a)), dict(iter_keys(b))
    for key in sorted(flat_a.keys() | flat_b.keys()):
        if flat_a.get(key, _ABSENT) != flat_b.get(key, _ABSENT):
            return key
    return None


def _show(settings: dict, key: str) -> str:
    value = dict(iter_keys(settings)).get(key, _ABSENT)
    return "not set" if value is _ABSENT else json.dumps(value)


def _coerce_numbers(value: Any, node: dict) -> Any:
    """Write whole numbers as floats where the schema says `number`, so that `0` and `0.0` give
    the same settings file (and fingerprint) and the edit between them reruns nothing."""
    node = _deref(node)
    for option in node.get("allOf", []) + node.get("oneOf", []):
        value = _coerce_numbers(value, option)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: _coerce_numbers(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_coerce_numbers(v, node["items"]) for v in value]
    if node.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _prune(train: dict, own: Mapping, where: str) -> dict:
    """Drop settings the chosen model/optimizer/schedule does not use; refuse them if set here."""
    train = copy.deepcopy(train)
    for section, table in RELEVANT.items():
        kind = train[section]["name"]
        keep = {"name", *table[kind]}
        for key in list(train[section]):
            if key not in keep:
                if key in own.get(section, {}):
                    raise ConfigError(
                        f"{where}.{section}.{key}: does not apply to {section} {kind!r}"
                    )
                del train[section][key]
    schedule = train["schedule"]
    if schedule.get("t_max", 0) is None:
        schedule["t_max"] = train["epochs"]
    if schedule.get("warmup_epochs", 1) == 0:
        schedule.pop("warmup_start", None)
    for op in OPS:  # an op that is off is left out: a new op in the registry changes nothing
        if op.probability(train["augment"]) == 0:
            train["augment"].pop(op.name, None)
    if train["early_stopping"]["patience"] == 0:  # off: min_delta changes nothing
        train["early_stopping"] = {"patience": 0}
    mix = train["mix"]
    if not mixes(mix):  # off, however it is written: its other settings change nothing
        train["mix"] = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}
    elif mix["mixup_alpha"] == 0 or mix["cutmix_alpha"] == 0:
        del mix["switch_p"]  # one kind: nothing to switch between
    shakedrop = train["model"].get("shakedrop")
    if shakedrop is not None and shakedrop["p_drop"] == 0:
        train["model"]["shakedrop"] = {"p_drop": 0.0}
    return train


def _check(train: dict, where: str) -> None:
    """Rules across keys that JSON Schema cannot say clearly."""
    model, schedule, epochs = train["model"], train["schedule"], train["epochs"]
    _check_model(model, where)
    milestones = schedule.get("milestones", [])
    if schedule["name"] == "multistep":
        if not milestones:
            raise ConfigError(
                f"{where}.schedule.milestones: multistep needs at least one milestone"
            )
        if milestones != sorted(set(milestones)) or milestones[-1] > epochs:
            raise ConfigError(
                f"{where}.schedule.milestones: {milestones} must increase and lie within "
                f"epochs ({epochs})"
            )
    if schedule.get("warmup_epochs", 0) >= epochs:
        raise ConfigError(f"{where}.schedule.warmup_epochs: must be fewer than epochs ({epochs})")
    opt = train["optimizer"]
    if opt["name"] == "sgd" and opt["nesterov"] and opt["momentum"] == 0:
        raise ConfigError(
            f"{where}.optimizer.nesterov: Nesterov needs momentum > 0 (set nesterov: false)"
        )
    augment = train["augment"]
    if augment.get("blur", {}).get("kernel", 1) % 2 == 0:
        raise ConfigError(f"{where}.augment.blur.kernel: must be odd")
    sigma = augment.get("blur", {}).get("sigma")
    if isinstance(sigma, list) and sigma[0] > sigma[1]:
        raise ConfigError(f"{where}.augment.blur.sigma: [min, max] with min <= max, got {sigma}")
    rand = augment.get("randaugment", {})
    if rand.get("magnitude", 0) >= rand.get("bins", 1):
        raise ConfigError(
            f"{where}.augment.randaugment.magnitude: {rand['magnitude']} is not a bin of "
            f"bins ({rand['bins']}): use 0 to {rand['bins'] - 1}, or raise bins"
        )
    for key in ("scale", "ratio"):
        bounds = augment.get("erase", {}).get(key)
        if bounds is not None and bounds[0] > bounds[1]:
            raise ConfigError(
                f"{where}.augment.erase.{key}: [min, max] with min <= max, got {bounds}"
            )


def _check_model(model: dict, where: str) -> None:
    """The values the model's registry entry allows (`model.*` keys it reads)."""
    name = model["name"]
    entry = MODELS[name]
    unstride = model.get("unstride")
    if unstride is not None and unstride not in entry.unstride:
        raise ConfigError(
            f"{where}.model.unstride: {unstride} {entry.unstride_refused(unstride)}; {name} allows "
            f"{_values(entry.unstride)}"
        )
    shakedrop = model.get("shakedrop", {})
    if shakedrop.get("p_drop", 0) > 0 and model.get("stochastic_depth", 0) > 0:
        raise ConfigError(
            f"{where}.model.stochastic_depth: not with model.shakedrop (both act on the residual "
            "branches): set one of them to 0"
        )
    if shakedrop.get("p_drop", 0) > 0:
        valid = entry.shakedrop_stages
        bad = [s for s in shakedrop["stages"] if s not in valid]
        if bad or not shakedrop["stages"]:
            raise ConfigError(
                f"{where}.model.shakedrop.stages: {shakedrop['stages']} - {name} has stages "
                f"{_values(valid)}"
            )


def _values(values) -> str:
    """`1..6` for a run of whole numbers, else `0, 1, 3`."""
    values = list(values)
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def settings_digest(content: dict) -> str:
    """The digest of a settings file with this content, as `write_settings` writes it."""
    return digest.bytes_digest(io.record_text(content).encode())


def prepared_is_current(params: Params, root: str | Path = ".") -> bool:
    """Whether the prepared data under `root` were made from what `params` resolves to now.
    Read from what the raw and prepared folders record of their making (ladder.manifest.
    made_with, by the paths the engines use), never from the settings files: a run writes those
    before `prepare` has run on them."""
    from ladder import stages

    root = Path(root)
    raw_manifest = stages.manifest(stages.RAW)
    try:
        raw_now = digest.file_digest(root / raw_manifest)
    except FileNotFoundError:
        return False
    made = {**manifest.made_with(root / stages.RAW), **manifest.made_with(root / stages.PREPARED)}
    wanted = {
        f"{stages.CONFIGS}/download.json": settings_digest(params.download_settings()),
        f"{stages.CONFIGS}/prepare.json": settings_digest(params.prepare_settings()),
        raw_manifest: raw_now,
    }
    return all(made.get(key) == value for key, value in wanted.items())


def check_runnable(params: Params, root: str | Path = ".") -> None:
    """What only a run needs, checked before anything runs: at least one experiment, and batch
    sizes the train split can fill. The split's size is known once `prepare` has run; it is
    used only while the prepared data are what params.yaml asks for, so the check never reads
    another dataset's split."""
    from ladder import stages

    if not params.experiments:
        raise ConfigError(
            f"{params.source}: experiments: none defined; add at least one "
            "(params.yaml shows the shape: a name, and the settings it changes)"
        )
    labels = Path(root) / stages.PREPARED / "train_y.npy"
    if not labels.exists() or not prepared_is_current(params, root):
        return
    images = len(np.load(labels, mmap_mode="r"))
    for name, exp in params.experiments.items():
        if exp.train["batch_size"] > images:
            raise ConfigError(
                f"{params.source}: experiments.{name}.batch_size: {exp.train['batch_size']} is "
                f"more than the train split's {images} images ({labels}); lower it"
            )


def write_settings(params: Params, out_dir: str | Path) -> list[Path]:
    """Make `out_dir` hold exactly the settings files of `params`; return the files written.

    A file is rewritten only when its content changes, and files of experiments no longer in
    params are removed: a settings file's timestamp moves only with its content, so an engine
    that compares timestamps (Snakemake, after another engine ran) sees exactly what changed."""
    out_dir = Path(out_dir)
    files = params.settings_files()
    written = []
    for rel, content in files.items():
        path = out_dir / rel
        if io.write_if_changed(path, io.record_text(content)):
            written.append(path)
    if out_dir.is_dir():
        for path in sorted(out_dir.rglob("*"), reverse=True):  # files before their folders
            rel = path.relative_to(out_dir).as_posix()
            if path.is_file() and rel not in files:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return written


def iter_keys(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Flatten nested settings to (dotted key, leaf value) pairs, for diffs in the report."""
    if isinstance(obj, Mapping) and obj:
        for key in sorted(obj):
            yield from iter_keys(obj[key], f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, obj
