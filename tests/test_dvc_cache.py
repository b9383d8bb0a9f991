"""The DVC cache cannot be damaged through the workspace by a user who is not root, and holds
what it records once on disk.

With the shipped `cache.type = hardlink,reflink,copy` on a file system without reflinks (ext4),
a file DVC records (`dvc repro`, `dvc commit`) or checks out (`dvc pull`, `dvc checkout`) is a
hard link to its cache object, and DVC makes the object, and so the link, read-only (0444). A
write in place is refused; a rename over the link (what `ladder.io` does) replaces it and leaves
the object alone. Root ignores file modes: these tests run DVC as a throwaway Unix user, made with
`useradd`, which needs root (CI runs as root); elsewhere they are skipped.

Why hardlink comes first (see the README, "Versioning with DVC"): DVC 3 links what it commits
only when the first cache type is `hardlink`; with `reflink` first it takes a plain copy for a
reflink and keeps it, so on ext4 every committed file was on disk twice.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, Deadline, md5

pytestmark = pytest.mark.slow

CHECKPOINT = "results/experiments/x/checkpoints/epoch_001.pt"

# A stage that writes like ladder's: a folder of checkpoints and its manifest, each replaced
# whole by a rename (ladder.io), with bytes that depend on a parameter.
STAGE = """\
from pathlib import Path

import yaml
from ladder import io

tag = yaml.safe_load(Path("params.yaml").read_text())["tag"]
out = Path("results/experiments/x")
with io.atomic_dir(out / "checkpoints") as tmp:
    for epoch in (1, 2):
        (tmp / f"epoch_{epoch:03d}.pt").write_bytes(f"{tag}: weights of epoch {epoch}".encode())
io.write_json(out / "checkpoints.manifest.json", {"tag": tag})
"""
DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [tag]
    outs:
    - results/experiments/x/checkpoints: {persist: true}
    - results/experiments/x/checkpoints.manifest.json: {persist: true}
"""
# An accidental write in place (a tool that opens a file "r+b" to fix a byte).
DAMAGE = """\
import sys
try:
    with open(sys.argv[1], "r+b") as f:
        f.write(b"X")
    print("written")
except PermissionError:
    print("refused")
"""


def program(name: str) -> str | None:
    # useradd and friends live in sbin, which may be missing from PATH.
    return shutil.which(name, path=os.pathsep.join([os.environ["PATH"], "/usr/sbin", "/sbin"]))


# ----------------------------------------------------------------------------------------------
# A throwaway Unix user


@dataclass
class User:
    name: str
    setpriv: list[str]  # the command prefix that runs a program as this user


def _as_user(name: str, capabilities: list[str]) -> list[str]:
    entry = pwd.getpwnam(name)
    return [
        program("setpriv"), f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
        "--clear-groups", *capabilities, "--",
    ]  # fmt: skip


# The interpreter, effective capabilities and uid of a program a shell started as the user (DVC
# starts its stages through /bin/sh, which setpriv's capabilities do not reach).
PROBE = """\
import os, sys
import dvc, ladder.io
caps = next(line for line in open("/proc/self/status") if line.startswith("CapEff:"))
print(os.getuid(), int(caps.split()[1], 16), sys.version)
"""
CAP_DAC_OVERRIDE, CAP_FOWNER = 1 << 1, 1 << 3  # what would let it write a 0444 file
READ_SEARCH = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


def _probe(prefix: list[str]) -> subprocess.CompletedProcess:
    shell = [*prefix, "/bin/sh", "-c", 'exec "$0" -c "$1"', str(BIN / "python"), PROBE]
    return subprocess.run(
        shell, cwd="/", env=user_env(Path("/nonexistent")), capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.skip("needs root, to make a throwaway Unix user (CI runs as root)")
    missing = [p for p in ("useradd", "userdel", "setpriv") if program(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found (package: util-linux, passwd)")
    name = f"ladder-test-{secrets.token_hex(4)}"
    made = subprocess.run(
        [program("useradd"), "--system", "--no-create-home", name], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"useradd {name} failed: {made.stderr.strip()}")
    try:
        # The user runs this interpreter, with DVC and this checkout's ladder. One that other
        # users cannot reach (pyenv under /root, 0700, as on our CI machine; its launcher then
        # even falls back to the system's libpython) is reached with CAP_DAC_READ_SEARCH: it
        # lets the user read and list any folder, never write, and writing is what is tested.
        for capabilities in ([], READ_SEARCH):
            prefix = _as_user(name, capabilities)
            probe = _probe(prefix)
            if probe.returncode == 0 and probe.stdout.split(maxsplit=2)[2].strip() == sys.version:
                break
        else:
            why = probe.stderr.strip() or f"it runs another Python: {probe.stdout.strip()}"
            pytest.skip(f"user {name} cannot run {BIN / 'python'}: {why}")
        uid, caps, _ = probe.stdout.split(maxsplit=2)
        assert int(uid) == pwd.getpwnam(name).pw_uid != 0
        assert not int(caps) & (CAP_DAC_OVERRIDE | CAP_FOWNER), "the user can write read-only files"
        yield User(name, prefix)
    finally:
        subprocess.run([program("userdel"), name], check=True)


def user_env(scratch: Path) -> dict[str, str]:
    """A clean environment: this venv's programs, a HOME the user owns, and DVC's per-machine
    state (its "site cache", /var/tmp/dvc by default) in the scratch folder, not the machine's."""
    return {
        "PATH": os.pathsep.join([str(BIN), "/usr/bin", "/bin"]),
        "HOME": str(scratch / "home"),
        "DVC_SITE_CACHE_DIR": str(scratch / "site"),
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(REPO / "workflow"),  # the stage imports this checkout's ladder.io
        "LANG": "C.UTF-8",
    }


# ----------------------------------------------------------------------------------------------
# A scratch git + DVC project owned by the user


class UserProject:
    def __init__(self, user: User, scratch: Path):
        self.user, self.scratch = user, scratch
        self.root = scratch / "project"
        for folder in ("home", "site", "remote", "project"):
            (scratch / folder).mkdir()
        (self.root / "train.py").write_text(STAGE)
        (self.root / "dvc.yaml").write_text(DVC_YAML)
        self.set_tag("a")
        subprocess.run(["chown", "-R", f"{user.name}:", str(scratch)], check=True)
        self.run("git", "init", "-q")
        self.run("dvc", "init", "-q")
        self.run("cp", str(REPO / ".dvc" / "config"), ".dvc/config")  # the shipped cache type
        self.run("dvc", "remote", "add", "-d", "shared", str(scratch / "remote"))

    def run(self, *cmd: str, expected: float = 3) -> subprocess.CompletedProcess:
        """Run `cmd` as the user in the project; `expected`: its seconds on an idle machine."""
        bound = Deadline(" ".join(cmd), expected)
        try:
            proc = subprocess.run(
                [*self.user.setpriv, *cmd],
                cwd=self.root,
                env=user_env(self.scratch),
                capture_output=True,
                text=True,
                timeout=bound.seconds,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(bound.message()) from None
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def damage(self, rel: str) -> str:
        """Try to overwrite a byte of `rel` in place, as the user: "written" or "refused"."""
        return self.run("python", "-c", DAMAGE, rel).stdout.strip()

    def set_tag(self, tag: str) -> None:
        (self.root / "params.yaml").write_text(f"tag: {tag}\n")  # root writes it: the user reads

    def path(self, rel: str) -> Path:
        return self.root / rel

    def cache_object(self, digest: str) -> Path:
        return self.root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]

    def recorded(self) -> dict[str, str]:
        """Every tracked file's md5 as dvc.lock records it (a folder's, in its .dir object)."""
        lock = yaml.safe_load(self.path("dvc.lock").read_text())
        files = {}
        for out in lock["stages"]["train"]["outs"]:
            if out["md5"].endswith(".dir"):
                for entry in yaml.safe_load(self.cache_object(out["md5"]).read_text()):
                    files[f"{out['path']}/{entry['relpath']}"] = entry["md5"]
            else:
                files[out["path"]] = out["md5"]
        return files

    def assert_cache_intact(self, recorded: dict[str, str]) -> None:
        for rel, digest in recorded.items():
            assert md5(self.cache_object(digest)) == digest, f"the cache object of {rel} changed"

    def assert_workspace_is(self, recorded: dict[str, str]) -> None:
        for rel, digest in recorded.items():
            assert md5(self.path(rel)) == digest, f"{rel} is not what dvc.lock records"

    def is_link(self, rel: str, digest: str) -> bool:
        return self.path(rel).stat().st_ino == self.cache_object(digest).stat().st_ino


@pytest.fixture
def project(user) -> Iterator[UserProject]:
    # Not pytest's tmp_path: it lies in /tmp/pytest-of-root (0700), out of the user's reach.
    scratch = Path(tempfile.mkdtemp(prefix="ladder-dvc-cache-", dir="/tmp"))
    try:
        yield UserProject(user, scratch)
    finally:
        shutil.rmtree(scratch)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("record", ["dvc repro", "dvc commit"])
def test_outputs_dvc_just_recorded_cannot_reach_the_cache(project, record):
    # `dvc commit` is what `ladder dvc-commit` runs after Snakemake wrote the outputs.
    if record == "dvc repro":
        project.run("dvc", "repro", expected=5)
    else:
        project.run("python", "train.py")
        project.run("dvc", "commit", "--force", expected=5)
    recorded = project.recorded()
    assert len(recorded) == 3
    for rel, digest in recorded.items():
        # Once on disk: a link to the cache object, which the user cannot write.
        assert project.is_link(rel, digest), rel
        assert mode(project.path(rel)) == 0o444, rel
        assert project.damage(rel) == "refused", rel
    project.assert_cache_intact(recorded)
    project.run("dvc", "checkout", "--force", expected=5)
    project.assert_workspace_is(recorded)


@pytest.mark.parametrize("fetch", ["dvc pull", "dvc checkout --relink"])
def test_a_user_cannot_damage_a_checked_out_checkpoint_in_place(project, fetch):
    project.run("dvc", "repro", expected=5)
    recorded = project.recorded()
    if fetch == "dvc pull":  # a fresh clone: only dvc.lock and the remote
        project.run("dvc", "push", expected=5)
        project.run("rm", "-r", ".dvc/cache", "results")
    project.run(*fetch.split(), expected=5)

    checkpoint = project.path(CHECKPOINT)
    assert project.is_link(CHECKPOINT, recorded[CHECKPOINT])  # one copy on disk
    assert mode(checkpoint) == 0o444  # the cache's read-only mode, shared by the link
    for rel in recorded:
        assert project.damage(rel) == "refused", rel
    project.assert_cache_intact(recorded)
    assert "up to date" in project.run("dvc", "status").stdout
    project.run("dvc", "checkout", "--force")
    project.assert_workspace_is(recorded)
    # Root ignores the mode: it could open the link for writing (and so damage the cache; the
    # README says what root should configure). Opened, nothing written.
    with checkpoint.open("r+b"):
        pass


def test_a_rerun_replaces_read_only_links_by_rename_and_keeps_the_old_objects(project):
    project.run("dvc", "repro", expected=5)
    project.run("dvc", "checkout", "--relink")
    before, lock_before = project.recorded(), project.path("dvc.lock").read_text()
    assert project.is_link(CHECKPOINT, before[CHECKPOINT])

    # The stage's command on the linked outputs, as Snakemake runs it (`dvc repro` would first
    # turn persist outputs back into writable copies: `dvc unprotect`). Replacing a file by
    # rename needs only write permission on its folder, which the user has.
    project.set_tag("b")
    project.run("python", "train.py")
    project.run("dvc", "commit", "--force", expected=5)
    after = project.recorded()
    assert set(after.values()).isdisjoint(before.values())
    project.assert_workspace_is(after)
    project.assert_cache_intact(before)
    project.assert_cache_intact(after)
    # And DVC's own rerun, on what `dvc commit` just linked (the manifest).
    project.set_tag("c")
    project.run("dvc", "repro", expected=5)
    for version in (before, after, project.recorded()):
        project.assert_cache_intact(version)

    # The old version comes back whole from the cache.
    project.set_tag("a")
    project.path("dvc.lock").write_text(lock_before)
    project.run("dvc", "checkout", "--force")
    project.assert_workspace_is(before)
    assert "up to date" in project.run("dvc", "status").stdout


def test_with_cache_type_copy_the_workspace_file_is_its_own(project):
    # The contrast, and what root should use (README): twice the disk on ext4, and a write in
    # place, allowed, damages only the workspace's copy.
    project.run("dvc", "config", "cache.type", "copy")
    project.run("dvc", "repro", expected=5)
    project.run("dvc", "checkout", "--relink")
    recorded = project.recorded()
    assert not project.is_link(CHECKPOINT, recorded[CHECKPOINT])
    assert project.damage(CHECKPOINT) == "written"
    project.assert_cache_intact(recorded)
    assert "modified" in project.run("dvc", "status").stdout
    project.run("dvc", "checkout", "--force")
    project.assert_workspace_is(recorded)
