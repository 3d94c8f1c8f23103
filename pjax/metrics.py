"""Metric sinks: JSONL always, TensorBoard (tensorboardX) when available. Only process 0 writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import jax


class MetricWriter:
    """Appends one row per logged step to `<workdir>/metrics.jsonl` (and TensorBoard events).

    `resume_step`: the step a run resumes from; rows logged after it by the interrupted run are
    dropped (that run's later steps are trained again), as is a line cut off by a crash.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, resume_step: int | None = None):
        self.active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.active:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            _truncate_after(path, resume_step)
        self._jsonl = open(path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def _truncate_after(path: Path, step: int) -> None:
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
