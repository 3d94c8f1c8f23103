"""`<workdir>/run_info.json`: what produced a run (pjax version and commit, library versions, the
command, the host), one entry per start of the run, so a resumed run keeps its history."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from pjax import config_io

RUN_INFO_FILE = "run_info.json"
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "numpy")
_ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages) holding `pjax`


def pjax_version() -> str:
    """The installed distribution's version, else pyproject.toml's beside the package, else 'unknown'."""
    try:
        return importlib.metadata.version("pjax")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "unknown"


def git_state(root: str | os.PathLike = _ROOT) -> dict[str, Any] | None:
    """{'commit', 'dirty'} of the git checkout whose top level is `root`; None outside one (or without git).
    `dirty`: tracked files differ from the commit (untracked files are ignored)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(root).resolve():
            return None  # `pjax` is installed inside some other repository, not a checkout of its own
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect(config: ConfigDict | None = None) -> dict[str, Any]:
    """One start's record. Call after `jax.distributed` is initialised (it reads the process count)."""
    info: dict[str, Any] = {
        "start_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "pjax_version": pjax_version(),
        "git": git_state(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
    }
    if config is not None:  # a start whose config differs from the previous one's shows a different hash
        info["config_sha256"] = hashlib.sha256(config_io.config_json(config).encode()).hexdigest()
    return info


def write_run_info(workdir: str | os.PathLike, config: ConfigDict | None = None) -> dict[str, Any]:
    """Appends this start to `<workdir>/run_info.json` ({"starts": [...]}, oldest first) atomically and
    returns the file's content. Call on process 0 only. A file that cannot be read is kept aside as
    run_info.json.corrupt-<time> rather than overwritten."""
    path = Path(workdir) / RUN_INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    starts: list[dict[str, Any]] = []
    if path.exists():
        try:
            starts = list(json.loads(path.read_text())["starts"])
        except (ValueError, KeyError, TypeError):
            os.replace(path, path.with_name(f"{path.name}.corrupt-{int(datetime.datetime.now().timestamp())}"))
    content = {"starts": [*starts, collect(config)]}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)
    return content


def read_run_info(workdir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(workdir) / RUN_INFO_FILE).read_text())
