"""`ladder <command>`: what Snakemake rules and DVC stages run. Argument parsing only.

Each command reads the files it is given and writes the outputs it is given; settings arrive as
the JSON files `ladder configure` writes (results/configs/), never from params.yaml directly.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import sys
import time
from pathlib import Path

from ladder import __version__, devices, provenance, stages, stopping, workspace

log = logging.getLogger("ladder")

# Errors whose message says what is wrong (a file, key or value): shown without a traceback,
# unless LADDER_DEBUG=1.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    RuntimeError,
    FloatingPointError,  # a diverged training run
)


def _configure(args: argparse.Namespace) -> None:
    from ladder import config
    from ladder.data import source_links

    params = config.load(args.params)
    config.check_runnable(params)
    written = config.write_settings(params, args.out_dir)
    source_links.write_links(params.download_settings(), args.sources)
    log.info("%d settings file(s) changed in %s", len(written), args.out_dir)


def _dvc_yaml(args: argparse.Namespace) -> None:
    sys.stdout.write(stages.dvc_yaml())


def _dvc_plots_page(args: argparse.Namespace) -> None:
    sys.stdout.write(stages.dvc_plots_page())


def _conda_env(args: argparse.Namespace) -> None:
    sys.stdout.write(stages.conda_env())


def _check(args: argparse.Namespace) -> None:
    from ladder import config

    path = args.file or args.params  # `ladder check FILE` or, as status and plan, --params FILE
    params = config.load(path)
    config.check_runnable(params, args.root)
    log.info("%s: %d experiment(s), valid", path, len(params.experiments))


def _dvc_commit(args: argparse.Namespace) -> None:
    from ladder import engines

    engines.dvc_commit()


def _data_settings(path: str | Path) -> dict:
    """download.json or prepare.json, the source's code it records checked against the code
    this job runs (a file written by hand, without a record, is taken as it is)."""
    from ladder import config

    settings = provenance.read_record(path)
    if "code" in settings:
        config.check_code(settings["code"], path)
    return settings


def _download(args: argparse.Namespace) -> None:
    from ladder.data.download import download

    download(_data_settings(args.settings), args.out, retries=args.retries)


def _prepare(args: argparse.Namespace) -> None:
    from ladder.data.prepare import prepare

    prepare(args.raw, args.out, _data_settings(args.settings), workers=args.workers)


def _stats(args: argparse.Namespace) -> None:
    from ladder.data import stats

    log.info("stats %s", stats.write(args.data, args.out))


def _code(args: argparse.Namespace) -> dict | None:
    """The experiment's code record (its model's and its augmentation ops' files by digest), as
    code.json recorded it, checked against the code this job runs."""
    if args.code is None:
        return None
    from ladder import config

    recorded = provenance.read_record(args.code)
    config.check_code(recorded, args.code)
    return recorded


def _train(args: argparse.Namespace) -> None:
    settings = provenance.read_record(args.settings)
    code = _code(args)
    with devices.job_device(args.device, args.jobs_per_gpu, args.lease_dir) as device:
        from ladder.train import Runtime, train  # after the lease: CUDA must see only that GPU

        runtime = Runtime(
            device=device,
            compile_mode=args.compile,
            threads=args.threads or devices.threads(),
            progress_bar=not args.no_progress,
            progress_seconds=args.progress_seconds,
            resume_root=args.resume_dir,
            failed_root=args.failed_dir,
        )
        with stopping.graceful():
            train(args.experiment, settings, args.data, args.stats, args.out, runtime, code)


def _evaluate(args: argparse.Namespace) -> None:
    tta = provenance.read_record(args.settings)
    code = _code(args)
    with devices.job_device(args.device, args.jobs_per_gpu, args.lease_dir) as device:
        from ladder.evaluate import evaluate_run

        threads = args.threads or devices.threads()
        with stopping.graceful():
            evaluate_run(args.run, tta, args.data, args.cache_dir, device=device,
                         threads=threads, code=code)  # fmt: skip


def _report(args: argparse.Namespace) -> None:
    from ladder.report import build_report

    build_report(
        selection=args.selection,
        configs=args.configs,
        runs=args.runs,
        data=args.data,
        out=args.out,
        last=args.last,
    )


def _plan(args: argparse.Namespace) -> None:
    import json

    from ladder import plan

    result = plan.plan(
        args.params,
        ".",
        args.throughput or plan.THROUGHPUT,
        args.tflops or plan.ASSUMED_TFLOPS,
        everything=args.all,
    )
    text = json.dumps(result.as_dict(), indent=2) if args.json else plan.format_plan(result)
    sys.stdout.write(text + "\n")


def _status(args: argparse.Namespace) -> None:
    import json

    from ladder import status

    rows = status.status(args.params, ".", everything=args.all)
    if args.json:
        text = json.dumps([r.as_dict() for r in rows], indent=2)
    else:
        text = status.format_status(rows)
    sys.stdout.write(text + "\n")


class _Version(argparse.Action):
    """--version, printed as is (argparse's own action wraps long lines)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"ladder {__version__} ({Path(__file__).resolve().parent})")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ladder", description=__doc__.splitlines()[0])
    p.add_argument("--log", type=Path, help="also write the log to this file")
    p.add_argument(
        "--stored-at",
        type=Path,
        help="the folder of Snakemake's local copies of a storage bucket (its default storage "
        "provider): files read there are recorded by their workspace path (ladder.provenance)",
    )
    p.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="the version, and where its code is (the workspace's own: ladder.launch)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("configure", help="write the resolved settings files each stage reads")
    c.add_argument("--params", type=Path, required=True, help="params.yaml to resolve")
    c.add_argument("--out-dir", type=Path, required=True, help="results/configs")
    c.add_argument("--sources", type=Path, required=True, help="results/data/source: links for DVC")
    c.set_defaults(func=_configure)

    ch = sub.add_parser(
        "check", help="validate a params file (syntax, keys, inheritance, batch vs data) and stop"
    )
    ch.add_argument("file", type=Path, nargs="?", help="the params file (or --params)")
    ch.add_argument("--params", type=Path, default=Path(stages.PARAMS), help="params.yaml")
    ch.add_argument(
        "--root", type=Path, default=Path(), help="the project whose prepared data to check"
    )
    ch.set_defaults(func=_check)

    y = sub.add_parser("dvc-yaml", help="print dvc.yaml, generated from the stage table")
    y.set_defaults(func=_dvc_yaml)

    pp = sub.add_parser(
        "dvc-plots-page", help="print the page `dvc plots show` fills, with Vega inlined"
    )
    pp.set_defaults(func=_dvc_plots_page)

    ce = sub.add_parser(
        "conda-env", help="print the rules' conda environment, generated from pyproject.toml"
    )
    ce.set_defaults(func=_conda_env)

    dc = sub.add_parser(
        "dvc-commit",
        help="after a Snakemake run: check that its results are current, then record them in "
        "dvc.lock",
    )
    dc.set_defaults(func=_dvc_commit)

    d = sub.add_parser("download", help="fetch or import the raw dataset")
    d.add_argument("--settings", type=Path, required=True, help="results/configs/download.json")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--retries", type=int, default=3, help="retries of a failed download")
    d.set_defaults(func=_download)

    r = sub.add_parser("prepare", help="decode, resize and split into .npy arrays")
    r.add_argument("--settings", type=Path, required=True, help="results/configs/prepare.json")
    r.add_argument("--raw", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: all cores)"
    )
    r.set_defaults(func=_prepare)

    s = sub.add_parser("stats", help="per-channel mean/std of the train split")
    s.add_argument("--data", type=Path, required=True, help="results/data/prepared")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_stats)

    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument(
        "--device",
        default=os.environ.get("LADDER_DEVICE", "auto"),
        help="auto (CUDA when present), cpu, cuda or cuda:N [env LADDER_DEVICE]",
    )
    runtime.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"CPU threads for torch [env {devices.THREADS_ENV}, default "
        f"{devices.DEFAULT_THREADS}]",
    )
    runtime.add_argument(
        "--jobs-per-gpu",
        type=int,
        default=int(os.environ.get("LADDER_JOBS_PER_GPU", "1")),
        help="jobs that share one GPU; each job leases a slot [env LADDER_JOBS_PER_GPU]",
    )
    runtime.add_argument(
        "--code",
        type=Path,
        help="results/configs/code/<exp>.json: the model's code, checked and recorded",
    )
    runtime.add_argument(
        "--lease-dir",
        type=Path,
        default=devices.DEFAULT_LEASE_DIR,
        help="folder of the GPU slot locks, shared by the machine's jobs [env LADDER_LEASE_DIR]",
    )

    t = sub.add_parser("train", parents=[runtime], help="train one experiment")
    t.add_argument("--experiment", required=True)
    t.add_argument(
        "--settings", type=Path, required=True, help="results/configs/experiments/<exp>/train.json"
    )
    t.add_argument("--data", type=Path, required=True, help="results/data/prepared")
    t.add_argument("--stats", type=Path, required=True, help="results/data/stats.json")
    t.add_argument("--out", type=Path, required=True, help="results/experiments/<exp>")
    t.add_argument("--resume-dir", type=Path, default=Path(stages.RESUME))
    t.add_argument(
        "--compile",
        default=os.environ.get("LADDER_COMPILE", "none"),
        choices=["none", "default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode on CUDA [env LADDER_COMPILE]",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--progress-seconds",
        type=float,
        default=float(os.environ.get("LADDER_PROGRESS_SECONDS", "30")),
        help="a progress log line at most this often during an epoch [env LADDER_PROGRESS_SECONDS]",
    )
    t.add_argument(
        "--failed-dir",
        type=Path,
        default=Path(stages.FAILED),
        help="where a diverged run leaves its last good checkpoints",
    )
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", parents=[runtime], help="evaluate checkpoints, with TTA")
    e.add_argument("--run", type=Path, required=True, help="results/experiments/<exp>")
    e.add_argument(
        "--settings",
        type=Path,
        required=True,
        help="results/configs/experiments/<exp>/evaluate.json",
    )
    e.add_argument("--data", type=Path, required=True, help="results/data/prepared")
    e.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(stages.CACHE) / "evaluate",
        help="results of checkpoints evaluated before, by content",
    )
    e.set_defaults(func=_evaluate)

    rep = sub.add_parser("report", help="aggregate every run into tables and figures")
    rep.add_argument("--selection", type=Path, required=True, help="results/configs/selection.json")
    rep.add_argument("--configs", type=Path, required=True, help="results/configs/experiments")
    rep.add_argument("--runs", type=Path, required=True, help="results/experiments")
    rep.add_argument("--data", type=Path, required=True, help="results/data/prepared")
    rep.add_argument("--out", type=Path, required=True, help="results/report")
    rep.add_argument(
        "--last",
        type=Path,
        help="a copy of the last complete report of --out, put back while a new one is built "
        "(the engines pass results/cache/report; by hand, none: another folder's report is "
        "neither put back into --out nor replaced by it)",
    )
    rep.set_defaults(func=_report)

    # Read-only views for people, run from the project root: no engine, nothing written.
    view = argparse.ArgumentParser(add_help=False)
    view.add_argument("--params", type=Path, default=Path(stages.PARAMS), help="params.yaml")
    view.add_argument("--all", action="store_true", help="every experiment, not only `run:`")
    view.add_argument("--json", action="store_true", help="JSON instead of a table")

    pl = sub.add_parser(
        "plan", parents=[view], help="epochs, images, FLOPs, GPU time and disk, before running"
    )
    pl.add_argument(
        "--throughput",
        type=Path,
        help="images/s measured by benchmarks/train_throughput.py --json "
        "(default: benchmarks/throughput.json)",
    )
    pl.add_argument(
        "--tflops",
        type=float,
        help="sustained TFLOP/s assumed where nothing was measured (default: 4.7, the rate "
        "the seed's reported epoch time implies)",
    )
    pl.set_defaults(func=_plan)

    st = sub.add_parser(
        "status", parents=[view], help="each experiment: done, outdated, running, failed, ..."
    )
    st.set_defaults(func=_status)
    return p


def setup_logging(logfile: Path | None) -> None:
    """Log to stderr and, appending, to `logfile`: a resumed run keeps the killed session's
    lines above its own."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="a"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _usage() -> str:
    """This process's (and its children's) CPU time and peak memory, for the log: what a
    scheduler's benchmark file would hold, under either engine."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    peak_mb = max(own.ru_maxrss, kids.ru_maxrss) / 1024  # kB on Linux
    return f"{cpu:.1f} CPU-s, peak RSS {peak_mb:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log)
    stage = args.command in stages.STAGES  # run by an engine
    started = time.perf_counter()
    if stage:
        argv_text = " ".join(sys.argv[1:] if argv is None else argv)
        log.info("==== ladder %s (pid %d on %s)", argv_text, os.getpid(), socket.gethostname())
    try:
        if stage:
            workspace.check_engine()
            with provenance.job(args.stored_at):
                args.func(args)
        else:
            args.func(args)
    except stopping.Stopped as e:  # asked to stop; what it did is saved
        log.warning("%s", e)
        return e.exit_status
    except EXPECTED_ERRORS as e:
        if os.environ.get("LADDER_DEBUG"):
            log.exception("ladder %s failed", args.command)
        else:
            log.error("%s: %s", type(e).__name__, e)
        return 1
    except Exception:
        log.exception("ladder %s failed", args.command)
        return 1
    if stage:
        log.info("done in %.1f s, %s", time.perf_counter() - started, _usage())
    return 0


if __name__ == "__main__":
    sys.exit(main())
