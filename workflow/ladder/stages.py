"""The DAG, written once: every stage's command, inputs, outputs, code and fan-out.

Snakemake's rules (workflow/rules/*.smk) are thin readers of this table; `dvc.yaml` is generated
from it (`ladder dvc-yaml > dvc.yaml`) and committed; tests/test_stages.py fails when either
engine's definition differs from it. Adding a stage: an entry here, a `ladder` command (cli.py),
a rule like the others (workflow/rules/), and `ladder dvc-yaml`.

Conventions the table relies on:
- `{exp}` in a path or command is the experiment a job works on (Snakemake's wildcard, DVC's
  `foreach` key).
- A folder output has a manifest beside it (`<folder>.manifest.json`, see ladder.manifest) that
  is an output too; a stage that reads the folder depends on the manifest, and gets the folder's
  path on its command line.
- `results/configs/` is params.yaml resolved into one small file per stage and experiment: every
  stage depends on its file, so an edit reruns exactly what it changes. DVC writes them in its
  `configure` stage; Snakemake when it loads the workflow (workflow/rules/common.smk). Both write
  a file only when its content changes, so a file's timestamp moves only with its content.
- Code: each stage depends on the modules that compute its results. Plumbing that cannot change a
  result (argument parsing, atomic writes, manifests, locks, GPU leases, logging, this table) is
  left out, so editing it reruns nothing; tests/test_stages.py checks that every other module a
  stage imports is listed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ladder.augment_registry import MIXER_CODE, OPS
from ladder.data import source_links, sources_on_disk
from ladder.data.registry import SOURCES
from ladder.model_registry import MODELS

PACKAGE = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE.parents[1]

# ----------------------------------------------------------------------------------------------
# Paths (relative to the project root, where both engines run)

PARAMS = "params.yaml"
SCHEMA = "workflow/schemas/params.schema.yaml"
CONFIGS = "results/configs"
RAW = "results/data/raw"
SOURCE = "results/data/source"  # links to a folder dataset's folders (ladder.data.source_links)
PREPARED = "results/data/prepared"
STATS = "results/data/stats.json"
RUNS = "results/experiments"
RUN = f"{RUNS}/{{exp}}"
REPORT = "results/report"
RESUME = "results/resume"  # training state, outside every declared output
FINISHED = "finished.json"  # in a resume folder: its run ended (what repeats its outputs)
FAILED = "results/failed"  # a diverged run's last good checkpoints, for its user
CACHE = "results/cache"  # evaluations by content (checkpoint, settings, data), outside outputs
LAST_REPORT = f"{CACHE}/report"  # the last complete report, put back while a new one is built
LOGS = "logs"
ENV = "workflow/envs/ladder.yaml"  # every rule's conda environment, generated (conda_env)
EXP_CONFIGS = f"{CONFIGS}/experiments/{{exp}}"
# Apart from the experiments' other settings, which the report reads (DVC: as one folder).
CODE_RECORD = f"{CONFIGS}/code/{{exp}}.json"


def manifest(folder: str) -> str:
    """The manifest that stands for `folder` (see ladder.manifest)."""
    return f"{folder}.manifest.json"


def _code(*modules: str) -> tuple[str, ...]:
    return tuple(f"workflow/ladder/{m}" for m in modules)


# What each model, dataset source and augmentation op reads and allows (light modules that
# config reads, and the builders use).
_REGISTRIES = _code("model_registry.py", "data/registry.py", "augment_registry.py")
_AUGMENT = _code("augment.py", "augment_registry.py")  # the pipeline, not the ops
# A model's own files, the ops' and batch mixing's are not here: each experiment's training and
# evaluation depend on those of its model, of the ops it turns on and of mixing if it mixes only,
# through its code record (CODE_RECORD, ladder.config.code_record), which `configure` writes.
# stopping.py: where a stopped run saves its place decides the state it resumes from.
_RUN = (*_AUGMENT, *_code("loader.py", "inference.py", "models/__init__.py", "stopping.py"))
_MODEL_FILES = tuple(dict.fromkeys(f for m in MODELS.values() for f in _code(*m.code)))
_OP_FILES = tuple(dict.fromkeys(f for op in OPS for f in _code(*op.code)))
_MIXER_FILES = _code(*MIXER_CODE)
_SOURCE_FILES = tuple(
    dict.fromkeys(f for s in SOURCES.values() for f in _code(*s.download_code, *s.layout_code))
)

# ----------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Out:
    path: str
    folder: bool = False  # a folder rather than a file
    manifest: bool = True  # a folder's manifest beside it (for folders other stages read)
    dvc: str = "outs"  # outs | metrics: how DVC shows it (plots: PLOTS, below the table)
    record: bool = False  # a JSON record that carries its own digest (ladder.io.write_record)
    cache: bool = True  # DVC caches it (links to a user's folders it must not)
    # DVC tracks the folder's files. False: only its manifest, which holds every file's digest
    # already; DVC neither hashes nor caches the files (at ImageNet size, a million of them:
    # minutes and gigabytes per commit, a minute per `dvc status`), so `dvc pull` and
    # `dvc checkout` leave the folder out, and the stage makes it again when a reader needs it.
    dvc_files: bool = True
    # It records what its job read, by digest ({"made_with": ...}; a folder's inner manifest
    # does the same), so that a plan can tell which results other settings made.
    provenance: bool = False

    def __post_init__(self):
        if not (self.dvc_files or (self.folder and self.manifest and self.cache)):
            raise ValueError(
                f"{self.path}: only a folder with a manifest DVC caches can be "
                "kept out of DVC's cache file by file"
            )

    @property
    def paths(self) -> list[str]:
        """The output, and its manifest where it has one."""
        return [self.path, manifest(self.path)] if self.folder and self.manifest else [self.path]

    @property
    def dvc_paths(self) -> list[str]:
        """What DVC tracks of it (dvc.yaml's outs): a folder it does not keep, by its manifest."""
        return self.paths if self.dvc_files else [manifest(self.path)]


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str  # the command line; `{exp}` where the stage fans out
    deps: dict[str, str]  # name -> file the stage reads (a folder: its manifest)
    outs: dict[str, Out]  # name -> what the stage writes
    code: tuple[str, ...]  # files whose content determines the results
    foreach: bool = False  # one job per experiment
    # Files read for every experiment the report shows (Snakemake: the selected ones; DVC: the
    # folder above `{exp}`, since a stage outside `foreach` cannot list experiments).
    each_experiment: tuple[str, ...] = ()
    threads: int = 1  # most cores a job can use (Snakemake caps it at --cores)
    threads_arg: str = ""  # the option that passes Snakemake's thread count on
    # A job holds a GPU when the host has one; its torch threads are LADDER_THREADS in both
    # engines (ladder.devices.threads), never a share of Snakemake's --cores.
    gpu: bool = False
    params: bool = False  # DVC: depends on the whole params.yaml (only `configure`)
    # Read by DVC only: Snakemake sees their change another way (ladder.snakefile).
    dvc_deps: tuple[str, ...] = ()

    def __post_init__(self):
        # Snakemake's inputs add these names (workflow/rules/common.smk): a dep under one of
        # them would be dropped from the job's inputs without a word.
        if clash := set(self.deps) & {"code", "runs"}:
            raise ValueError(f"stage {self.name}: a dependency may not be named {clash}")

    @property
    def log(self) -> str:
        return f"{LOGS}/{self.name}/{{exp}}.log" if self.foreach else f"{LOGS}/{self.name}.log"

    @property
    def out_paths(self) -> list[str]:
        """Every declared output, a folder's manifest right after the folder."""
        return [path for out in self.outs.values() for path in out.paths]

    def command(self, exp: str | None = None) -> str:
        return self.cmd if exp is None else self.cmd.replace("{exp}", exp)


def _ladder(stage: str, args: str, foreach: bool = False) -> str:
    log = f"{LOGS}/{stage}/{{exp}}.log" if foreach else f"{LOGS}/{stage}.log"
    return f"ladder --log {log} {stage} {args}"


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            name="configure",
            cmd=_ladder("configure", f"--params {PARAMS} --out-dir {CONFIGS} --sources {SOURCE}"),
            deps={},
            outs={
                "configs": Out(CONFIGS, folder=True, manifest=False),
                # Links to the dataset's folders, which DVC hashes, and their record, which
                # `download` depends on (ladder.data.source_links).
                **{
                    f"source_{key}": Out(
                        f"{SOURCE}/{key}", folder=True, manifest=False, cache=False
                    )
                    for key in sources_on_disk.KEYS
                },
                "sources": Out(f"{SOURCE}/{source_links.LINKS}", cache=False),
            },
            code=(
                *_code("config.py", "data/source_links.py", "data/sources_on_disk.py"),
                *_REGISTRIES,
                SCHEMA,
                # ... whose digests it writes into each experiment's code record
                *_MODEL_FILES,
                *_OP_FILES,
                *_MIXER_FILES,
                *_SOURCE_FILES,  # ... and into download.json and prepare.json
            ),
            params=True,
        ),
        Stage(
            name="download",
            cmd=_ladder("download", f"--settings {CONFIGS}/download.json --out {RAW}"),
            deps={"settings": f"{CONFIGS}/download.json"},
            dvc_deps=(f"{SOURCE}/{source_links.LINKS}",),
            outs={"raw": Out(RAW, folder=True, dvc_files=False)},
            # The source's own files are not here: download.json records their digests
            # (ladder.config.source_code), so editing another source reruns nothing.
            code=_code("data/download.py", "data/sources.py", "data/sources_on_disk.py"),
        ),
        Stage(
            name="prepare",
            cmd=_ladder(
                "prepare", f"--settings {CONFIGS}/prepare.json --raw {RAW} --out {PREPARED}"
            ),
            deps={"settings": f"{CONFIGS}/prepare.json", "raw": manifest(RAW)},
            outs={"prepared": Out(PREPARED, folder=True)},
            code=_code("data/prepare.py", "data/sources.py"),  # and prepare.json's source code
            threads=8,
            threads_arg="--workers",
        ),
        Stage(
            name="stats",
            cmd=_ladder("stats", f"--data {PREPARED} --out {STATS}"),
            deps={"prepared": manifest(PREPARED)},
            outs={"stats": Out(STATS, record=True)},
            code=_code("data/stats.py"),
        ),
        Stage(
            name="train",
            cmd=_ladder(
                "train",
                f"--experiment {{exp}} --settings {EXP_CONFIGS}/train.json"
                f" --code {CODE_RECORD} --data {PREPARED} --stats {STATS} --out {RUN}",
                foreach=True,
            ),
            deps={
                "settings": f"{EXP_CONFIGS}/train.json",
                "code_record": CODE_RECORD,
                "prepared": manifest(PREPARED),
                "stats": STATS,
            },
            outs={
                "config": Out(f"{RUN}/config.json", record=True),
                "history": Out(f"{RUN}/history.csv"),
                "steps": Out(f"{RUN}/steps.csv"),
                "checkpoints": Out(f"{RUN}/checkpoints", folder=True),
                "tensorboard": Out(f"{RUN}/tensorboard", folder=True, manifest=False),
            },
            code=(*_code("train.py", "optim.py"), *_RUN),
            foreach=True,
            gpu=True,
        ),
        Stage(
            name="evaluate",
            cmd=_ladder(
                "evaluate",
                f"--run {RUN} --settings {EXP_CONFIGS}/evaluate.json"
                f" --code {CODE_RECORD} --data {PREPARED}",
                foreach=True,
            ),
            deps={
                "settings": f"{EXP_CONFIGS}/evaluate.json",
                "code_record": CODE_RECORD,
                "prepared": manifest(PREPARED),
                "config": f"{RUN}/config.json",
                "checkpoints": manifest(f"{RUN}/checkpoints"),
            },
            outs={"eval": Out(f"{RUN}/eval", folder=True)},
            code=(*_code("evaluate.py", "predictions.py"), *_RUN),
            foreach=True,
            gpu=True,
        ),
        Stage(
            name="report",
            cmd=_ladder(
                "report",
                f"--selection {CONFIGS}/selection.json --configs {CONFIGS}/experiments"
                f" --runs {RUNS} --data {PREPARED} --out {REPORT} --last {LAST_REPORT}",
            ),
            deps={"selection": f"{CONFIGS}/selection.json", "prepared": manifest(PREPARED)},
            each_experiment=(
                f"{EXP_CONFIGS}/train.json",
                f"{EXP_CONFIGS}/evaluate.json",
                f"{EXP_CONFIGS}/report.json",
                f"{RUN}/config.json",
                f"{RUN}/history.csv",
                f"{RUN}/steps.csv",
                manifest(f"{RUN}/checkpoints"),  # its inner manifest vouches for the CSV files
                manifest(f"{RUN}/eval"),
            ),
            outs={
                "html": Out(f"{REPORT}/index.html"),
                "markdown": Out(f"{REPORT}/report.md"),
                "figures": Out(f"{REPORT}/figures", folder=True, manifest=False),
                # a page per experiment: its checkpoints table (report/html.py)
                "pages": Out(f"{REPORT}/checkpoints", folder=True, manifest=False),
                # TensorBoard's HPARAMS view: a run per ladder row (report/hparams.py)
                "hparams": Out(f"{REPORT}/tensorboard", folder=True, manifest=False),
                "metrics": Out(f"{REPORT}/metrics.json", dvc="metrics"),
                "ladder": Out(f"{REPORT}/ladder.csv"),
                "checkpoints": Out(f"{REPORT}/checkpoints.csv"),
                "curves": Out(f"{REPORT}/curves.csv"),  # learning curves, for `dvc plots`
                "provenance": Out(f"{REPORT}/provenance.json", provenance=True),
            },
            code=(
                *_code(
                    "report/__init__.py",
                    "report/tables.py",
                    "report/significance.py",  # intervals and comparisons ...
                    "predictions.py",  # ... counted from the evaluations' predictions
                    "report/npz.py",  # ... which it reads without zipfile
                    "report/figures.py",
                    "report/html.py",
                    "report/dvc_plots.py",  # the tables `dvc plots` draws
                    "report/hparams.py",  # ... and TensorBoard's HPARAMS view
                    "report/templates/index.html.j2",  # the page's markup ...
                    "report/templates/checkpoints.html.j2",  # ... each experiment's page's
                    "report/templates/table.html.j2",  # ... the tables of both
                    "report/templates/report.css",  # ... and its styles
                    "augment.py",  # the augmentations figure runs every experiment's ops
                    "config.py",  # the "changes versus parent" text flattens settings with it
                ),
                *_REGISTRIES,  # ... which config imports
                SCHEMA,  # ... and orders them as the schema does
                *_OP_FILES,  # ... (the figure's ops: all of them, however few a ladder uses)
            ),
        ),
    ]
}


# ----------------------------------------------------------------------------------------------
# Views for `dvc plots show/diff`: files the stages write, drawn by the project's Vega-Lite
# templates in PLOT_TEMPLATES (DVC's own templates colour lines by file and revision, never by a
# column). Files and columns are the report's (ladder.report.tables, ladder.report.dvc_plots).

PLOT_TEMPLATES = ".dvc/plots"  # where DVC looks for a template named in dvc.yaml
# The page `dvc plots show` writes its views into (.dvc/config: plots.html_template, relative to
# .dvc/). DVC's own page loads Vega from a CDN, so it is blank offline.
PLOTS_PAGE = f"{PLOT_TEMPLATES}/page.html"


@dataclass(frozen=True)
class Plot:
    id: str
    file: str
    x: str
    y: str
    template: str  # a file in PLOT_TEMPLATES, without .json
    title: str
    x_label: str
    y_label: str


def _curve(y: str, title: str, y_label: str) -> Plot:
    """A learning curve: one line per experiment, epoch by epoch (report/dvc_plots.py)."""
    return Plot(
        id=y,
        file=f"{REPORT}/curves.csv",
        x="epoch",
        y=y,
        template="lines_by_experiment",
        title=title,
        x_label="epoch",
        y_label=y_label,
    )


PLOTS = [
    Plot(
        id="ladder",
        file=f"{REPORT}/ladder.csv",
        x="test_acc",
        y="experiment",
        template="ladder_bars",
        title="Test accuracy at each experiment's val-picked checkpoint (no TTA)",
        x_label="test accuracy (%)",
        y_label="experiment",
    ),
    Plot(
        id="checkpoints",
        file=f"{REPORT}/checkpoints.csv",
        x="epoch",
        y="test_acc",
        template="lines_by_experiment",
        title="Test accuracy of every checkpoint (no TTA)",
        x_label="epoch",
        y_label="test accuracy (%)",
    ),
    _curve("val_acc", "Validation accuracy after each epoch", "val accuracy (%)"),
    _curve("train_acc", "Train accuracy in each epoch (augmented batches)", "train accuracy (%)"),
    _curve("val_loss", "Validation loss after each epoch", "val loss"),
    _curve("lr", "Learning rate in each epoch", "learning rate"),
]


def declared_plots() -> list[Plot]:
    """The views whose file a stage declares as an output (a view of a file no stage writes
    yet stays out of dvc.yaml until one does)."""
    outputs = {path for stage in STAGES.values() for path in stage.out_paths}
    return [plot for plot in PLOTS if plot.file in outputs]


def _output(path: str | Path) -> tuple[Stage, Out, str | None] | None:
    """(the stage, the output and its experiment) of a path inside a declared output, in the
    workspace or in a folder laid out as it (Snakemake's local copies of a bucket's objects)."""
    path = Path(path).as_posix()
    for stage in STAGES.values():
        for out in stage.outs.values():
            pattern = re.escape(out.path).replace(re.escape("{exp}"), "(?P<exp>[^/]+)")
            m = re.fullmatch(f"(?:.*/)?{pattern}(/.+|{re.escape(manifest(''))})?", path)
            if m:
                return stage, out, m.groupdict().get("exp")
    return None


def writer(path: str | Path) -> tuple[Stage, str | None, str] | None:
    """(the stage that writes `path`, its experiment, the file that stands for the output) for a
    path inside a declared output (a folder's file, or a settings file), else None."""
    found = _output(path)
    if found is None:
        return None
    stage, out, exp = found
    at = out.path.replace("{exp}", exp) if exp else out.path
    return stage, exp, manifest(at) if out.folder and out.manifest else at


def dvc_keeps_files(path: str | Path) -> bool:
    """Whether DVC caches the files of the output holding `path` (Out.dvc_files), so that
    `dvc pull` brings them."""
    found = _output(path)
    return found is None or found[1].dvc_files


def regenerate(path: str | Path) -> str:
    """The commands that rebuild only the output holding `path`, in both engines (the text an
    error about a damaged file ends with); the jobs after it see the same content and do not
    rerun."""
    found = writer(path)
    if found is None:
        return "rerun the stage that writes it"
    stage, exp, target = found
    dvc_stage = f"{stage.name}@{exp}" if exp else stage.name
    if stage.name == "configure":  # Snakemake rewrites the settings whenever it runs
        snakemake = "snakemake report --cores 1"
    else:
        snakemake = f"snakemake {target} --forcerun {stage.name} --cores 1"
    return f"regenerate it with `{snakemake}` (DVC: `dvc repro --force --single-item {dvc_stage}`)"


# ----------------------------------------------------------------------------------------------
# Every file through a bucket: Snakemake with a default storage provider (its Kubernetes route,
# where jobs share no file system). Snakemake keeps its local copies of the bucket's objects in
# one folder laid out as the workspace (.snakemake/storage/s3/<bucket>/<prefix>/results/...) and
# passes that folder to the job (STORAGE_ROOT); the job's command names its files there. The
# settings files (configure's outputs) and the code are each job's own: Snakemake's source
# archive carries the code, and every Snakemake process writes the settings (ladder.snakefile).

STORAGE_ROOT = "{params.root}"  # Snakemake's placeholder for the folder of local copies


def stored(path: str) -> bool:
    """Whether Snakemake keeps `path` in the bucket: an output or log of a stage other than
    configure, or a folder above one (a run's folder, results/experiments)."""
    above = path.rstrip("/") + "/"
    return any(
        p == path or p.startswith(above)
        for stage in STAGES.values()
        if stage.name != "configure"
        for p in (*stage.out_paths, stage.log)
    )


def storage_command(stage: Stage) -> str:
    """The stage's command with each stored path in STORAGE_ROOT, which is also passed on as
    `--stored-at`: the job records what it read by its workspace path (ladder.provenance), so
    its outputs hold the same bytes as a run in the workspace."""
    words = stage.cmd.split(" ")
    if words[0] != "ladder":
        raise ValueError(f"stage {stage.name}: its command does not start with `ladder`")
    words = [f"{STORAGE_ROOT}/{w}" if stored(w) else w for w in words]
    return " ".join(["ladder", "--stored-at", STORAGE_ROOT, *words[1:]])


def storage_folder(path: str) -> str | None:
    """The folder that the manifest `path` stands for, else None: where every file goes through
    a bucket, a job that reads a folder needs the folder itself as an input."""
    suffix = manifest("")
    return path.removesuffix(suffix) if path.endswith(suffix) else None


def version(stage: str) -> str:
    """Package version plus a hash of the stage's code: results record the code that made them."""
    from ladder import __version__

    h = hashlib.blake2b(digest_size=8)
    for rel in STAGES[stage].code:
        h.update(rel.encode())
        h.update((REPO_ROOT / rel).read_bytes())
    return f"{__version__}+{h.hexdigest()}"


# ----------------------------------------------------------------------------------------------
# dvc.yaml, generated

_DVC_HEADER = """\
# Generated from workflow/ladder/stages.py by `ladder dvc-yaml > dvc.yaml`: do not edit by hand.
# tests/test_stages.py fails when this file differs from what the table generates.
#
# The same DAG as the Snakefile, for `dvc repro`: the same commands on the same paths. The
# `configure` stage resolves params.yaml into one settings file per stage and experiment; every
# other stage depends on its own file, so an edit reruns exactly what it changes. Outputs are
# `persist`: DVC leaves them in place until the stage's command replaces them (atomically), so a
# stage that is refused (another engine at work, see README) or fails loses nothing. The raw
# data's folder is tracked through its manifest alone (every file's digest is in it): DVC neither
# hashes nor caches each raw image, and `dvc pull` leaves the folder out (README, "Versioning
# with DVC").
"""


def _dvc_path(path: str) -> str:
    return path.replace("{exp}", "${key}")


def _common_root(path: str) -> str:
    """The folder above the `{exp}` part of a per-experiment path: what DVC can depend on."""
    return path.split("/{exp}", 1)[0]


def dvc_stage(stage: Stage) -> dict:
    body: dict = {"cmd": _dvc_path(stage.cmd)}
    deps = [_dvc_path(p) for p in (*stage.deps.values(), *stage.dvc_deps)]
    deps += list(dict.fromkeys(_common_root(p) for p in stage.each_experiment))
    deps += list(stage.code)
    body["deps"] = deps
    if stage.params:
        body["params"] = [{PARAMS: None}]
    for kind in ("outs", "metrics"):
        entries = []
        for out in stage.outs.values():
            if out.dvc != kind:
                continue
            for path in out.dvc_paths:
                flags = {"persist": True} if out.cache else {"cache": False, "persist": True}
                entries.append({_dvc_path(path): flags})
        if entries:
            body[kind] = entries
    if stage.foreach:
        return {"foreach": "${experiments}", "do": body}
    return body


def dvc_yaml() -> str:
    """The text of dvc.yaml."""
    stages = {name: dvc_stage(stage) for name, stage in STAGES.items()}
    text = yaml.safe_dump({"stages": stages}, sort_keys=False, width=100)
    text = re.sub(r"\n(  \w)", r"\n\n\1", text)  # a blank line between stages
    plots = [dvc_plot(plot) for plot in declared_plots()]
    if plots:
        text += "\n" + _PLOTS_HEADER + yaml.safe_dump({"plots": plots}, sort_keys=False, width=100)
    return _DVC_HEADER + "\n" + text


_PLOTS_HEADER = f"""\
# `dvc plots show` (or `dvc plots diff main`): each view draws one of the report's tables with a
# template of {PLOT_TEMPLATES}/, one bar or line per experiment (DVC's own templates colour by
# file and revision only).
"""


def dvc_plot(plot: Plot) -> dict:
    """A top-level `plots:` entry of dvc.yaml."""
    return {
        plot.id: {
            "template": plot.template,
            "x": plot.x,
            "y": {plot.file: plot.y},
            "title": plot.title,
            "x_label": plot.x_label,
            "y_label": plot.y_label,
        }
    }


_PAGE = """\
<!DOCTYPE html>
<!-- Generated by `ladder dvc-plots-page > {path}`: do not edit by hand; tests/test_stages.py fails
     when it differs from what the pinned Snakemake generates. The page of `dvc plots show`
     (.dvc/config: plots.html_template), with Vega, Vega-Lite and Vega-Embed inlined from the
     copies Snakemake ships for its own reports ({versions}; BSD-3-Clause licensed, their
     licenses are in snakemake/assets/data/), so that it renders offline. -->
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC Plot</title>
{scripts}
<style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""

_VEGA = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")


def dvc_plots_page() -> str:
    """The text of PLOTS_PAGE: DVC's page with its three scripts inlined (DVC installs none)."""
    from snakemake.assets import Assets

    versions = ", ".join(f"{a.split('/')[0]} {Assets.get_version(a)}" for a in _VEGA)
    scripts = []
    for asset in _VEGA:
        code = Assets.get_content(asset)
        # DVC fills the page with str.replace: a placeholder inside a script would be filled too.
        if "</script" in code.lower() or "{plot_divs}" in code or "{refresh_tag}" in code:
            raise ValueError(f"Snakemake's {asset} cannot be inlined in a page as is")
        scripts.append(f"<script>\n{code}\n</script>")
    return _PAGE.format(path=PLOTS_PAGE, versions=versions, scripts="\n".join(scripts))


# ----------------------------------------------------------------------------------------------
# The rules' conda environment, generated from the project's pins

_ENV_HEADER = """\
# Generated from pyproject.toml by `ladder conda-env > workflow/envs/ladder.yaml`: do not edit by
# hand; tests/test_stages.py fails when it differs from what the pins generate.
#
# The software every rule runs, for `snakemake --use-conda` (each rule names it: `conda:`). The
# project's own .venv (make install) needs no conda; this file documents the same pins for a
# machine without it. Not built in this project's tests: they have no conda.
"""


def conda_env() -> str:
    """The text of workflow/envs/ladder.yaml: Python and pyproject.toml's exact pins, and the
    ladder package itself (this checkout, by its path from the file)."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    python = project["requires-python"].split(",")[0].removeprefix(">=")
    env = {
        "channels": ["conda-forge"],
        "dependencies": [
            f"python={python}",
            "pip",
            {"pip": [*project["dependencies"], "-e ../.."]},  # the path from this file
        ],
    }
    return _ENV_HEADER + yaml.safe_dump(env, sort_keys=False, width=100)
