"""Shared fixtures: tiny datasets built by the tests themselves, a local HTTP server, and a
scratch copy of the workflow to run Snakemake and DVC in."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.server
import importlib.util
import io as stdio
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# One torch thread per process, in the test workers and what they start (unless set otherwise):
# the workers already take a core each, and torch's default of a thread per core then runs two
# spinning OpenMP threads per busy core, which burns CPU and crawls on a loaded machine (a
# SIGTERM-resume test took 20 s idle and 382 s beside two other suites). The jobs' own default
# is one thread too (ladder.devices.DEFAULT_THREADS); every test must pass on one core anyway.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (a plugin): too late for the variable
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is no package). Registered while it
    executes, which its dataclasses need, and removed after: a private name nothing else uses."""
    key = f"_benchmark_{name}"
    spec = importlib.util.spec_from_file_location(key, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[key]
    return module


BIN = Path(sys.executable).parent

# The longest files first (roughly, from CI's --durations): the workers take whole files
# (--dist=loadfile) in collection order (--no-loadscope-reorder: xdist would order them by their
# number of tests), so a long file collected last would run on one worker after the other has
# run out of files. A stable sort keeps each file's own order (tests/test_engines.py needs it).
SLOWEST_FIRST = (
    "test_slurm.py", "test_engines.py", "test_workspace.py", "test_faults.py",
    "test_benchmarks.py", "test_s3.py", "test_workflow.py", "test_train.py", "test_data.py",
    "test_fault_pass.py", "test_integrity.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Each file's span in this run, for the next balancing: from the start of its first report (when
# that report reached the controller, less its duration) to its last report; which worker ran
# it; its tests' summed durations (setup, call, teardown). The file that ends last bounds the
# suite's wall time.
_SPANS: dict[str, list] = {}  # file -> [worker, first, last, summed durations]


def pytest_runtest_logreport(report) -> None:
    now = time.monotonic()
    node = getattr(report, "node", None)  # xdist's worker, on the controller
    worker = node.gateway.id if node is not None else "-"
    span = _SPANS.setdefault(
        report.nodeid.split("::")[0], [worker, now - report.duration, now, 0.0]
    )
    span[2] = now
    span[3] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _SPANS:
        return
    write = terminalreporter.write_line
    start = min(first for _, first, _, _ in _SPANS.values())
    terminalreporter.section("test files by worker (seconds from the first test's start)")
    write(f"{'worker':<7}{'start':>7}{'end':>7}{'summed':>8}  file")
    for name, (worker, first, end, summed) in sorted(
        _SPANS.items(), key=lambda kv: (kv[1][0], kv[1][1])
    ):
        write(f"{worker:<7}{first - start:>7.0f}{end - start:>7.0f}{summed:>8.0f}  {name}")


def require_browser():
    """docs/screenshot.py (the browser the README's picture uses), once a headless Chromium and
    Selenium are there: the test is skipped without them, or fails where CI is set."""
    sys.path.insert(0, str(REPO / "docs"))
    import screenshot

    if absent := screenshot.missing():
        message = (
            f"missing {', '.join(absent)}: install them with `apt-get install -y chromium "
            "chromium-driver` (or `make system-deps` as root) and `pip install selenium`"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return screenshot


# No test fails for being slow on a busy machine: a bound only stops a runaway (hung) step, at
# RUNAWAY times what the step takes on an idle 2-core machine, and its message says both.
RUNAWAY = 10


class Deadline:
    """Poll-loop bound: `check()` fails once `expected` x RUNAWAY seconds have passed."""

    def __init__(self, what: str, expected: float):
        self.what, self.expected = what, expected
        self.end = time.monotonic() + RUNAWAY * expected

    @property
    def seconds(self) -> float:
        return RUNAWAY * self.expected

    def message(self) -> str:
        return (
            f"{self.what}: not done after {self.seconds:.0f} s; it takes about "
            f"{self.expected:.0f} s on an idle 2-core machine (a hung or runaway job?)"
        )

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise AssertionError(self.message())


def finish(proc: subprocess.Popen, what: str, expected: float) -> int:
    """proc.wait(), bounded like Deadline; kills a runaway process before failing."""
    bound = Deadline(what, expected)
    try:
        return proc.wait(timeout=bound.seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(bound.message()) from None


def flip_a_byte(path: Path) -> None:
    """Damage `path` in place as neither engine notices: one byte in the middle changed, the
    same inode, size and timestamps."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def dvc_ran(stdout: str) -> set[str]:
    """The stages a `dvc repro` ran, from its output (not the ones it found unchanged)."""
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# A Tiny ImageNet archive in the official layout, small


def _jpeg(rng: np.random.Generator, size: int, grey: bool) -> bytes:
    pixels = rng.integers(0, 256, (size, size) if grey else (size, size, 3), dtype=np.uint8)
    buf = stdio.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_tinyimagenet_zip(
    path: Path, classes: int = 4, train: int = 10, val: int = 3, size: int = 16, seed: int = 0
) -> Path:
    """tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, <wnid>_boxes.txt,
    val/images/*.JPEG, val/val_annotations.txt, test/images/*.JPEG}; every 4th image grayscale.
    `seed` draws the pixels: another seed, another archive of the same layout."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{1000 + i:08d}" for i in range(classes)]
    root = "tiny-imagenet-200"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/wnids.txt", "".join(f"{w}\n" for w in reversed(wnids)))
        zf.writestr(
            f"{root}/words.txt",
            "".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)),
        )
        n = 0
        for w in wnids:
            zf.writestr(f"{root}/train/{w}/{w}_boxes.txt", "")
            for j in range(train):
                zf.writestr(
                    f"{root}/train/{w}/images/{w}_{j}.JPEG", _jpeg(rng, size, grey=n % 4 == 0)
                )
                n += 1
        lines = []
        for i in range(classes * val):
            name = f"val_{i}.JPEG"
            zf.writestr(f"{root}/val/images/{name}", _jpeg(rng, size, grey=i % 4 == 0))
            lines.append(f"{name}\t{wnids[i % classes]}\t0\t0\t{size}\t{size}\n")
        zf.writestr(f"{root}/val/val_annotations.txt", "".join(lines))
        for i in range(3):
            zf.writestr(f"{root}/test/images/test_{i}.JPEG", _jpeg(rng, size, grey=False))
    return path


@pytest.fixture(scope="session")
def tin_zip(tmp_path_factory) -> Path:
    return make_tinyimagenet_zip(tmp_path_factory.mktemp("tin") / "tiny-imagenet-200.zip")


# ----------------------------------------------------------------------------------------------
# A local HTTP server with scriptable failures


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self.drop_first = 0  # the next N responses stop half way through the body

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_first > 0:
                    server.drop_first -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@contextlib.contextmanager
def serving(root: Path) -> Iterator[Server]:
    s = Server(root)
    s.root.mkdir(parents=True, exist_ok=True)
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    with serving(tmp_path / "www") as s:
        yield s


# ----------------------------------------------------------------------------------------------
# Running the workflow in a scratch project


def _ignore(_dir, names):
    return [n for n in names if n in {"__pycache__", ".pytest_cache"}]


class Project:
    """A scratch copy of the workflow (Snakefile, dvc.yaml, workflow/, profiles/) with its own
    params.yaml, where Snakemake and DVC run as a user would run them from the repo root."""

    def __init__(self, root: Path, params: dict):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore"):
            if (REPO / name).exists():
                shutil.copy2(REPO / name, root / name)
        for name in ("workflow", "profiles"):
            shutil.copytree(REPO / name, root / name, ignore=_ignore, dirs_exist_ok=True)
        self.write_params(params)

    @classmethod
    def copy(cls, source: Project, root: Path) -> Project:
        """A copy of `source` with its results and Snakemake's records, timestamps and hard links
        kept (finished runs and the data store are links): what is up to date there is up to
        date here."""
        subprocess.run(["cp", "-a", str(source.root), str(root)], check=True)
        project = cls.__new__(cls)
        project.root = root
        return project

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def env(self) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
        env.setdefault("LADDER_DEVICE", "cpu")
        return env

    def run(
        self, *cmd: str, check: bool = True, expected: float = 60
    ) -> subprocess.CompletedProcess:
        """Run `cmd` in the project; `expected`: its seconds on an idle 2-core machine."""
        bound = Deadline(" ".join(cmd), expected)
        try:
            proc = subprocess.run(
                list(cmd),
                cwd=self.root,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=bound.seconds,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(bound.message()) from None
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
            )
        return proc

    def snakemake(
        self, *args: str, check: bool = True, expected: float = 60
    ) -> subprocess.CompletedProcess:
        return self.run("snakemake", "--cores", "2", *args, check=check, expected=expected)

    def path(self, rel: str) -> Path:
        return self.root / rel


# Small enough to train in seconds on a CPU, two rungs so inheritance is exercised.
TINY_EXPERIMENTS = {
    "small": {
        "description": "root",
        "model": {"name": "mynet", "blocks": 1, "width": 8},
        "augment": {"hflip": 0.0},
        "optimizer": {"lr": 0.05},
        "batch_size": 32,
        "epochs": 2,
        "log_every": 5,
    },
    "small_shift": {
        "base": "small",
        "augment": {"translate": {"p": 0.5, "max": 0.125}},
        "tta": {"passes": 2},
    },
}


def tiny_params(**dataset) -> dict:
    """A fresh copy each time: tests edit what they get."""
    return {
        "dataset": {"source": "digits", "image_size": 16, **dataset},
        "tta": {"passes": 0},
        "experiments": copy.deepcopy(TINY_EXPERIMENTS),
    }


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "project", tiny_params())
