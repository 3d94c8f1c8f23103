"""Training runs in subprocesses (`python -m pjax.train`): multi-process meshes, kills and signals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_flags(workdir: Path, cache: Path, steps: int, **overrides) -> list[str]:
    """The `tests.conftest.tiny` settings as command-line flags, plus `key=value` overrides
    (`train__save_every=1` -> `--config.train.save_every=1`)."""
    values = {"workdir": workdir, "data.cache_dir": cache, "data.num_sft": 256, "data.num_pairs": 256,
              "data.num_heldout_prompts": 16, "data.num_heldout_pairs": 16, "train.steps": steps,
              "train.batch_size": 8, "train.log_every": 1, "train.save_every": 2, "train.progress": False,
              "optim.warmup_steps": 0}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return [f"--config.{k}={v}" for k, v in values.items()]


def task_cache(path: Path) -> Path:
    """A synthetic-task cache directory with its tokenizer trained, for runs that start together (each
    would otherwise train its own)."""
    from pjax.data.tasks import synthetic

    synthetic.load_or_train_tokenizer(synthetic.SyntheticConfig(cache_dir=str(path)))
    return path


def train_command(config: str, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "pjax.train", f"--config={ROOT / 'configs' / config}", *flags]


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in the repo root (JAX/XLA settings inherited, plus `env`), output to `log`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out = open(log, "w")  # noqa: SIM115 - closed with the process by the caller's wait
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def run(cmd: list[str], log: Path, timeout: float = 300) -> None:
    finish(spawn(cmd, log), log, timeout)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Wait for a `spawn`ed run; fail with the end of its log unless it exited 0."""
    code = proc.wait(timeout)
    if code != 0:
        raise AssertionError(f"{' '.join(map(str, proc.args))} exited {code}:\n{log.read_text()[-4000:]}")


def multi_process(config: str, flags: list[str], logs: list[Path], devices_per_process: int,
                  **extra: str) -> list[subprocess.Popen]:
    """One run as len(logs) processes of `devices_per_process` CPU devices each, on a free local port."""
    port = free_port()
    n = len(logs)
    return [spawn(train_command(config, flags + [
        f"--config.distributed.coordinator=127.0.0.1:{port}", f"--config.distributed.num_processes={n}",
        f"--config.distributed.process_id={i}", f"--config.distributed.cpu_devices={devices_per_process}",
        *(f"--config.distributed.{k}={v}" for k, v in extra.items())]), log) for i, log in enumerate(logs)]


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for proc, log in zip(procs, logs):
        code = proc.wait(max(1.0, deadline - time.monotonic()))
        if code != 0:
            for p in procs:
                p.kill()
            raise AssertionError(f"process exited {code}:\n{log.read_text()[-4000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_rows(workdir: Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return rows


def losses(workdir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in metric_rows(workdir)}


def wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 120) -> None:
    """Poll until the run has logged `step` (or fail if it ended or took too long)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = metric_rows(workdir)
        if rows and rows[-1]["step"] >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before step {step}")
        time.sleep(0.01)  # the runs share the CPU with this loop; a kill lands a step or so after `step`
    raise AssertionError(f"no step {step} within {timeout} s")
