"""THE phase frame: every phase, offline or online, runs its units of work through `run_loop`.

A unit is what `train.steps` counts: one optimizer step offline, one iteration (rollout, then several
optimizer steps) online. The frame owns what must not drift between phases: metrics kept on the
device until a log, save or preemption point; a stop on any non-finite loss, gradient norm or
updated params *before* anything is saved; `train.log_every` / `train.save_every` /
`train.keep_every` counted in units; SIGTERM -> checkpoint and stop; the final checkpoint; the
params-only export (kept as it is when a finished phase is run again).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import jax
import numpy as np

from ml_collections import ConfigDict

from pjax import checkpoint, config_io, distributed, runinfo, sharding
from pjax.core import validate as validation
from pjax.core.setup import Setup, State, make_setup, mesh_and_rules, validate_for_mesh
from pjax.core.step import TrainStep
from pjax.metrics import MetricWriter

log = logging.getLogger("pjax")


@dataclasses.dataclass
class Unit:
    """What one unit of work returns: the new state, the metrics of each optimizer step it took (still on
    the device) and figures it already has on the host (an online iteration's rollout statistics)."""

    state: State
    steps: list[dict[str, jax.Array]]
    host: dict[str, float] = dataclasses.field(default_factory=dict)


class Body(Protocol):
    """A phase as the frame sees it."""

    name: str  # what a unit is called in messages: "step" or "iteration"
    steps_per_unit: int  # optimizer steps a unit takes

    def unit(self, state: State, index: int) -> Unit:
        """Run unit `index` (0-based) from `state`."""

    def row(self, steps: list[dict[str, float]], host: dict[str, float]) -> dict[str, float]:
        """The logged metrics of a unit from its fetched step metrics and its host figures."""

    def position(self, done: int) -> dict[str, Any]:
        """The data position a checkpoint after `done` units records."""

    def export_metadata(self, params: Any) -> dict[str, Any]:
        """What the export records besides the frame's own fields."""


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """One entry of the phase table (`pjax.phases.PHASES`): what the frame needs to run a phase."""

    name: str
    validate: Callable[[ConfigDict], None]  # the phase's own start-up checks (the shared ones run too)
    optimizer_steps: Callable[[ConfigDict], int]  # of the whole phase: the learning-rate schedule's length
    step_rows: Callable[[ConfigDict], tuple[int, str]]  # rows of one optimizer step, and what names them
    make_step: Callable[[Setup], TrainStep]  # the phase's jitted train step
    run: Callable[[Setup, Path, distributed.PreemptionWatch], dict[str, Any]]  # inside the mesh and rules


def validate(config: ConfigDict, spec: PhaseSpec) -> None:
    """Start-up checks of `config` for `spec`'s phase, naming the key."""
    spec.validate(config)
    validation.validate_common(config)


def run_phase(config: ConfigDict, spec: PhaseSpec) -> dict[str, Any]:
    """Train one phase: validate, start the processes, record the run (config.json, run_info.json), build the
    mesh, rules and setup, then `spec.run` them. Returns the phase summary (`run_loop`)."""
    validate(config, spec)
    distributed.initialize(config)
    workdir = Path(config.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    has_checkpoint = any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))
    config_io.check_resume_config(workdir, config, has_checkpoint)  # before config.json is replaced
    distributed.barrier("pjax-resume-config-checked")
    if distributed.is_leader():
        config_io.save_run_config(workdir, config)  # rerun: --config=pjax/config_io.py:<workdir>
        runinfo.write_run_info(workdir, config)  # one entry per start: versions, commit, command, host
    mesh, rules = mesh_and_rules(config)
    log.info("phase=%s mesh=%s preset=%s workdir=%s", config.phase, dict(mesh.shape), config.sharding.preset, workdir)
    preemption = distributed.PreemptionWatch()  # from here on, SIGTERM means: save at the next step, stop
    # names a peer that stops; left running when the phase raises (a dead peer's collective error), so
    # that it names the peer while JAX winds down and aborts
    peers = distributed.PeerWatch(workdir, stale_after=max(3.0, 0.25 * config.distributed.heartbeat_timeout_s))
    try:
        with jax.set_mesh(mesh), sharding.use_rules(rules):
            setup = make_setup(config, mesh, spec.optimizer_steps(config))
            validate_for_mesh(config, mesh, *spec.step_rows(config))
            summary = spec.run(setup, workdir, preemption)
        peers.close()
        return summary
    finally:
        preemption.close()


def phase_checkpoints(config, workdir: Path) -> checkpoint.PhaseCheckpoints:
    tc = config.train
    return checkpoint.PhaseCheckpoints(workdir, keep=tc.keep_checkpoints, keep_every=tc.keep_every,
                                       async_save=tc.async_checkpoint)


def start_unit(state: State, steps_per_unit: int, ckpts: checkpoint.PhaseCheckpoints, total: int) -> int:
    """The unit a state resumes at (its optimizer step over `steps_per_unit`), checked against `total`."""
    step = int(jax.device_get(state["step"]))
    if step % steps_per_unit:
        raise ValueError(f"the checkpoint in {ckpts.directory} is at optimizer step {step}, not a whole number of "
                         f"units of {steps_per_unit} steps: it is inconsistent; use an older step or a new workdir")
    start = step // steps_per_unit
    if start > total:
        raise ValueError(f"train.steps={total} is below the {start} done in the checkpoint in {ckpts.directory}; "
                         "raise train.steps or use a new workdir")
    return start


def first_nonfinite(fetched: list[tuple[int, int, dict[str, float]]], max_update_ratio: float = 0.0,
                    grad_spike: float = 0.0, recent_grad_norms: list[float] | None = None
                    ) -> tuple[int, int, list[str]] | None:
    """(unit, step, names) of the first optimizer step that is not good: its loss, gradient norm or
    updated params are not finite (every other non-finite metric of that step named too), or it
    exploded: its update moved the weights by more than `max_update_ratio` times their norm, or its
    gradient norm is over `grad_spike` times the median of the (up to 100) steps before it
    (`recent_grad_norms`, extended in place; a spike is judged after 10 of them). 0 turns a guard off."""
    recent = [] if recent_grad_norms is None else recent_grad_norms
    for unit, step, metrics in fetched:
        if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]) and metrics["params_finite"]):
            names = sorted(k for k, v in metrics.items() if not np.isfinite(v))
            return unit, step, names + ([] if metrics["params_finite"] else ["params (after the update)"])
        ratio = metrics.get("update_ratio", 0.0)
        if max_update_ratio and ratio > max_update_ratio:
            return unit, step, [f"update_ratio={ratio:.3g} (> train.max_update_ratio={max_update_ratio})"]
        if grad_spike and len(recent) >= 10 and metrics["grad_norm"] > grad_spike * float(np.median(recent)):
            return unit, step, [f"grad_norm={metrics['grad_norm']:.3g} (> train.grad_spike={grad_spike} x the "
                                f"median {float(np.median(recent)):.3g} of the steps before)"]
        recent.append(metrics["grad_norm"])
        del recent[:-100]
    return None


def run_loop(setup: Setup, state: State, body: Body, *, ckpts: checkpoint.PhaseCheckpoints, workdir: Path,
             source: str, preemption: distributed.PreemptionWatch, on_log: Callable[[int, dict], None] | None = None
             ) -> dict[str, Any]:
    """Units from the state's own to `train.steps`. Returns the phase summary: the logged `history`,
    the `export` directory, `preempted`, the `source` the state came from and the final `params`."""
    config = setup.config
    tc, total, per_unit = config.train, config.train.steps, body.steps_per_unit
    start = start_unit(state, per_unit, ckpts, total)
    writer = MetricWriter(workdir, config, resume_step=start)
    history: list[dict[str, float]] = []
    progress = None
    if tc.progress and distributed.is_leader():
        from tqdm import tqdm

        progress = tqdm(total=total, initial=start, desc=config.phase, dynamic_ncols=True,
                        disable=None)  # None: shown on a terminal, silent in logs
    pending: list[tuple[int, Unit]] = []
    recent_grad_norms: list[float] = []
    tokens, t0, preempted = 0, time.perf_counter(), False
    try:
        for index in range(start, total):
            unit = body.unit(state, index)
            state, done = unit.state, index + 1
            pending.append((done, unit))
            if index == start:  # keep compilation out of the throughput figures
                jax.block_until_ready(unit.steps)
                t0 = time.perf_counter()
            if progress is not None:
                progress.update(1)
            preempted = preemption.reached(done) and done < total
            log_now, save_now = done % tc.log_every == 0 or done == total, done % tc.save_every == 0
            if not (log_now or save_now or preempted):
                continue
            fetched = [(n, jax.device_get(u.steps), u.host) for n, u in pending]
            fetched = [(n, [{k: float(v) for k, v in m.items()} for m in steps], host) for n, steps, host in fetched]
            pending = []
            flat = [(n, (n - 1) * per_unit + i + 1, m) for n, steps, _ in fetched for i, m in enumerate(steps)]
            bad = first_nonfinite(flat, tc.max_update_ratio, tc.grad_spike, recent_grad_norms)
            if bad is not None:
                _stop_nonfinite(ckpts, body.name, bad, dict(((n, s), m) for n, s, m in flat)[bad[:2]], per_unit)
            tokens += sum(int(m["batch_tokens"]) for n, steps, _ in fetched if n > start + 1 for m in steps)
            if log_now:
                elapsed = time.perf_counter() - t0
                row = body.row(*fetched[-1][1:])
                row["tokens_per_sec"] = tokens / elapsed if tokens else float("nan")
                tokens, t0 = 0, time.perf_counter()
                writer.write(done, row)
                history.append({"step": done, **row})
                if on_log is not None:
                    on_log(done, row)
                if progress is not None:
                    progress.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_sec']:.0f}")
            if (save_now or preempted) and done != total:
                ckpts.save(done, state, body.position(done), force=preempted)
            if preempted:
                break
    except BaseException:
        ckpts.close()  # a unit raised: a save still in flight completes (no half-written checkpoint is left)
        raise
    finally:
        if progress is not None:
            progress.close()
        writer.close()
    summary = {"history": history, "export": str(workdir / "export"), "workdir": str(workdir), "source": source,
               "preempted": preempted, "params": state["params"]}
    if preempted:
        ckpts.close()
        log.warning("preempted (SIGTERM) at %s %d: checkpoint saved in %s; run the same command again to resume",
                    body.name, int(jax.device_get(state["step"])) // per_unit, ckpts.directory)
        return summary
    if ckpts.latest_step() != total:
        ckpts.save(total, state, body.position(total), force=True)
    ckpts.close()
    export(setup, workdir, state["params"], start, source, body.export_metadata)
    return summary


def _stop_nonfinite(ckpts: checkpoint.PhaseCheckpoints, unit_name: str, bad: tuple[int, int, list[str]],
                    metrics: dict[str, float], per_unit: int) -> None:
    ckpts.wait()
    last = ckpts.latest_step()
    last = f"{unit_name} {last} in {ckpts.directory}" if last is not None else "none yet"
    unit, step, names = bad
    where = f"{unit_name} {unit}" + (f" (optimizer step {step})" if per_unit > 1 else "")
    what = "exploding" if names and "(>" in names[0] else "non-finite"
    raise FloatingPointError(
        f"{what} {', '.join(names)} at {where}: stopped without saving. Last good checkpoint: {last} (a rerun "
        f"resumes there; lower optim.lr or check the data). Metrics of that step: {metrics}")


def export(setup: Setup, workdir: Path, params: Any, start: int, source: str,
           metadata: Callable[[Any], dict[str, Any]]) -> None:
    """The params-only export of a finished phase (the phase, its step, the model, its lineage, plus the
    phase's own `metadata(params)`); a phase that was already finished keeps the export it made."""
    config = setup.config
    export_dir = workdir / "export"
    existing = checkpoint.export_metadata(export_dir)
    if start == config.train.steps and existing is not None and existing.get("step") == config.train.steps:
        log.info("phase already complete at step %d; keeping its export %s", config.train.steps, export_dir)
        return
    checkpoint.export_params(export_dir, params, {
        "phase": config.phase, "step": config.train.steps, "model": dataclasses.asdict(setup.model_def.cfg),
        "init_from": config.init_from, "resumed_from": source, "data": dict(config.data), **metadata(params)})
    log.info("exported params to %s", export_dir)
