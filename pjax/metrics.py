"""Metric sinks: JSONL always; TensorBoard (tensorboardX) and Weights & Biases as `config.logging`
says. Only process 0 writes.

W&B is an optional dependency (`pip install wandb`, or the `wandb` extra), imported only when
`logging.wandb=True`. Its run id is kept in `<workdir>/wandb_run.json`, so a run resumed from a
checkpoint continues the same W&B run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
from ml_collections import ConfigDict

WANDB_STATE = "wandb_run.json"
WANDB_MODES = ("", "online", "offline", "disabled")  # "": W&B's own default (WANDB_MODE, else online)


def require_wandb() -> Any:
    """The `wandb` module, or an ImportError that says how to get it (for `logging.wandb=True`)."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError("logging.wandb=True but the `wandb` package cannot be imported "
                          f"({e}); install it with `pip install wandb` (or `pip install -e '.[wandb]'`), "
                          "or set --config.logging.wandb=False") from e
    return wandb


def validate_logging(config: ConfigDict) -> None:
    """Start-up checks of `config.logging`, naming the key."""
    lc = config.logging
    if lc.wandb_mode not in WANDB_MODES:
        raise ValueError(f"logging.wandb_mode={lc.wandb_mode!r}: expected one of {WANDB_MODES}")
    if not all(isinstance(t, str) and t for t in lc.wandb_tags):
        raise ValueError(f"logging.wandb_tags={tuple(lc.wandb_tags)!r}: expected non-empty strings")
    if lc.wandb:
        if not lc.wandb_project:
            raise ValueError("logging.wandb=True needs logging.wandb_project")
        require_wandb()


class MetricWriter:
    """Appends one row per logged step to `<workdir>/metrics.jsonl`, and to TensorBoard events
    (`<workdir>/tb`) and a W&B run when `config.logging` enables them (without a config: TensorBoard
    on, W&B off; the `tensorboard` argument overrides either way).

    `resume_step`: the step a run resumes from; rows logged after it by the interrupted run are
    dropped (that run's later steps are trained again), as is a line cut off by a crash; TensorBoard
    is told to purge its events after that step. W&B cannot rewrite a run's history: a resumed run
    (`resume_step` > 0) continues the stored W&B run and logs only the steps it has not seen yet (the
    retrained steps read the same batches from the same state). Without a resume step a new W&B run
    starts.
    """

    def __init__(self, workdir: str | os.PathLike, config: ConfigDict | None = None, *,
                 resume_step: int | None = None, tensorboard: bool | None = None):
        self.active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._wandb: _WandbRun | None = None
        if not self.active:
            return
        lc = config.logging if config is not None and "logging" in config else None
        if tensorboard is None:
            tensorboard = True if lc is None else bool(lc.tensorboard)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            _truncate_after(path, resume_step)
        self._jsonl = open(path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = max(resume_step + 1, 0) if resume_step is not None else None  # hides the dropped steps' events
            # the suffix: a restart within the same second must not overwrite the file (same name otherwise)
            self._tb = SummaryWriter(str(workdir / "tb"), purge_step=purge, filename_suffix=f".{time.time_ns()}")
        if lc is not None and lc.wandb:
            self._wandb = _WandbRun(workdir, config, resume_step)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step))
        if self._wandb is not None:
            self._wandb.log(int(step), values)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb:
            self._tb.close()
            self._tb = None
        if self._wandb:
            self._wandb.finish()
            self._wandb = None


class _WandbRun:
    """One W&B run per workdir: its id and last logged step in `<workdir>/wandb_run.json`."""

    def __init__(self, workdir: Path, config: ConfigDict, resume_step: int | None):
        wandb = require_wandb()
        lc = config.logging
        self.state_path = workdir / WANDB_STATE
        state = _read_json(self.state_path) if resume_step is not None and resume_step > 0 else None
        if not state or not state.get("id"):
            state = {"id": uuid.uuid4().hex[:12], "last_step": -1}
        self.state = state
        _write_json(self.state_path, state)  # before init: a crash during it still resumes this id
        self.run = wandb.init(
            project=lc.wandb_project, entity=lc.wandb_entity or None, name=lc.wandb_name or None,
            group=lc.wandb_group or None, tags=list(lc.wandb_tags) or None, mode=lc.wandb_mode or None,
            dir=str(workdir), id=state["id"], resume="allow",
            config=json.loads(config.to_json_best_effort()))

    def log(self, step: int, values: dict[str, float]) -> None:
        if step <= self.state["last_step"]:
            return  # logged by the interrupted run; W&B keeps a run's steps increasing
        self.run.log(values, step=step)
        self.state["last_step"] = step
        _write_json(self.state_path, self.state)

    def finish(self) -> None:
        self.run.finish()


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


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
