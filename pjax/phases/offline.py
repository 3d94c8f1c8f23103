"""The offline phases: `sft` (sequences), `rm` (a reward model on pairs, lists or scored rows) and `dpo`
(any policy objective of the catalogue on a fixed dataset: pairwise, step-level, unpaired or listwise).

One generic jitted train step serves all three: the phase decides what data the step sees (`SEQ`
`[B, T]` for SFT, `PAIR` `[B, 2, T]` for DPO, ...) and the objective (`pjax.core.objective`) turns the
per-token log-probs, or a reward model's rewards, into a loss. Each unit of the frame
(`pjax.core.loop`) is one optimizer step on one batch of the seeded order (`pjax.data.loader`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from pjax import distributed, losses, models
from pjax.core import init, loop, objective
from pjax.core.loop import PhaseSpec, Unit
from pjax.core.setup import Setup, State
from pjax.core.step import TrainStep
from pjax.data import layout, load, loader
from pjax.phases import heldout as held, reference

log = logging.getLogger("pjax")

DATA_SHAPES = {"sft": ("SEQ",), "rm": ("PAIR", "LIST", "SCORE"), "dpo": ("PAIR", "STEP", "UNP", "LIST")}
TRAINS = {"sft": "policy", "rm": "reward", "dpo": "policy"}  # what the phase's objectives read


def validate(config: ConfigDict) -> None:
    """The offline phase's objective fits its phase, its head and its data shape."""
    kind = losses.data_kind(config.loss)  # also checks the names and weights
    chosen = f"loss.names={tuple(config.loss.names)}" if config.loss.names else f"loss.name={config.loss.name!r}"
    if losses.trains(config.loss) != TRAINS[config.phase]:
        raise ValueError(f"{chosen} trains a {losses.trains(config.loss)} model; phase={config.phase!r} "
                         f"needs {TRAINS[config.phase]} objectives")
    head = "scalar" if config.phase == "rm" else "lm"
    if config.model.head != head:
        raise ValueError(f"model.head={config.model.head!r}: phase={config.phase!r} needs model.head={head!r}")
    if kind not in DATA_SHAPES[config.phase]:
        raise ValueError(f"{chosen} (data shape {kind}) does not fit "
                         f"phase={config.phase!r} (data shapes {DATA_SHAPES[config.phase]})")
    if config.data.packing and kind != "SEQ":
        raise ValueError(f"data.packing=True packs SFT sequences; {chosen} trains on data shape {kind}")
    d = config.data
    layout.validate(d.layout, d.pack_len, d.max_len)
    if d.layout != "padded":
        if config.phase == "rm":
            raise ValueError(f"data.layout={d.layout!r}: reward models train on padded rows (data.layout='padded')")
        if d.packing:
            raise ValueError(f"data.layout={d.layout!r} and data.packing=True both pack: choose one")


def make_step(setup: Setup) -> TrainStep:
    """The offline train step: the configured objective, token-weighted micro-batches for SFT."""
    config = setup.config
    return TrainStep(setup, objective.make_loss_fn(config, setup.model_def),
                     token_mean=losses.data_kind(config.loss) == "SEQ")


def put_batch(setup: Setup, local: dict[str, np.ndarray]) -> dict[str, Any]:
    """This host's rows of a global batch on the devices, in the configured `data.layout`: a packed
    layout packs each host's own rows (each micro-batch's on its own) into as many rows as the fullest
    host needs (a multiple of its batch shards), so every host sends the same shape."""
    config = setup.config
    d, size, k = config.data, config.train.batch_size, config.train.grad_accum
    if d.layout == "padded":
        return setup.put_batch(local, size)
    L = layout.row_length(d.layout, d.pack_len, local["tokens"].shape[-1])
    per_host = setup.batch_shards_per_process()
    rows = -(-layout.rows_needed(local, d.layout, L, k) // per_host) * per_host
    rows = distributed.max_over_processes(rows) * k
    packed_size = rows * jax.process_count()
    packed = layout.pack(local, d.layout, L, rows, row_offset=int(setup.local_rows(packed_size)[0]), k=k)
    rows_of_pairs = {key: v for key, v in packed.items() if key not in layout.KEYS}
    packed_rows = {key: packed[key] for key in layout.KEYS}
    return {**setup.put_batch(rows_of_pairs, size), **setup.put_batch(packed_rows, packed_size)}


def reward_statistics(setup: Setup, params: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each reward head's mean and std over the completions of up to `reward.stats_rows` training rows
    (a seeded sample; every completion of a pair or list), recorded in the RM export so that rewards
    can be standardised downstream (`pjax.rewards`)."""
    config = setup.config
    n = len(arrays["tokens"])
    rows = np.sort(np.random.default_rng(config.seed).permutation(n)[:config.reward.stats_rows])
    sample = {k: arrays[k][rows] for k in ("tokens", "mask")}
    rewards = setup.map_rows("reward_statistics", lambda p, t, m: models.sequence_rewards(setup.model_def, p, t, m),
                             sample, ("tokens", "mask"), params)
    per_head = rewards.reshape(-1, setup.model_def.cfg.reward_heads).astype(np.float64)
    return {"mean": per_head.mean(0).tolist(), "std": per_head.std(0).tolist(), "rows": int(len(rows)),
            "count": int(len(per_head))}


class OfflineBody:
    """Units of the frame: one optimizer step on the next batch of each host's own rows."""

    name = "step"
    steps_per_unit = 1

    def __init__(self, setup: Setup, ref_params: Any, arrays: dict[str, np.ndarray], data: load.Data,
                 position: dict[str, Any], iterator_state: dict[str, Any]):
        self.setup, self.ref_params, self.data, self.position_ = setup, ref_params, data, position
        tc = setup.config.train
        self.step = make_step(setup)
        self.batches = loader.HostBatches(arrays, batch_size=tc.batch_size, seed=setup.config.seed,
                                          rows=setup.local_rows(tc.batch_size), state=iterator_state)

    def unit(self, state: State, index: int) -> Unit:
        batch = put_batch(self.setup, next(self.batches))
        state, metrics = self.step(state, self.ref_params, batch)
        return Unit(state, [metrics])

    def row(self, steps: list[dict[str, float]], host: dict[str, float]) -> dict[str, float]:
        return dict(steps[-1])

    def position(self, done: int) -> dict[str, Any]:
        return {**self.position_, "step": done, "iterator": self.batches.state()}

    def export_metadata(self, params: Any) -> dict[str, Any]:
        config = self.setup.config
        out = {"loss": dict(config.loss)}
        if config.phase == "rm":
            out["reward_stats"] = reward_statistics(self.setup, params, self.data.arrays)
        return out


def run(setup: Setup, workdir: Path, preemption: distributed.PreemptionWatch) -> dict[str, Any]:
    """An offline phase inside the mesh and rules: data, checkpoints and resume, the reference, held-out
    figures before and after, the frame's loop."""
    config = setup.config
    data = load.load_data(config)
    arrays = data.arrays
    ckpts = loop.phase_checkpoints(config, workdir)
    needs_reference = losses.needs_reference(config.loss)
    start = init.start_state(setup, ckpts, workdir, parent_is_reference=needs_reference)
    position = load.data_position(config, data)  # of the encoded rows, before any reference columns
    saved = start.saved_position
    if saved is not None:
        load.check_data_position(saved, position, str(ckpts.directory))
    done = loop.start_unit(start.state, 1, ckpts, config.train.steps)
    iterator_state = (saved or {}).get("iterator") or loader.start_state(done)
    if iterator_state != loader.start_state(done):
        raise ValueError(f"the checkpoint in {ckpts.directory} is at step {done} but its input iterator at "
                         f"{iterator_state}: the checkpoint is inconsistent; use an older step or a new workdir")
    ref_params = ref_scores = None
    if needs_reference:
        ref_params = init.reference_params(setup, start)
        if data.heldout is not None:  # before a precomputed reference frees the reference params
            ref_scores = held.heldout_scores(setup, ref_params, data.heldout)
        if config.data.precompute_ref:
            arrays = {**arrays, **reference.precomputed_reference(setup, ref_params, arrays)}
            ref_params = None  # the step reads `ref_logps` from the batch: no reference forward
    figures = {}
    if data.heldout is not None and done == 0:
        # at step 0 the policy is its reference (same source) whenever there is one: one pass, not two
        before = ref_scores if ref_scores is not None else held.heldout_scores(setup, start.state["params"],
                                                                               data.heldout)
        figures["before"] = held.heldout_metrics(config, before, ref_scores, data.heldout.get("scores"))
    body = OfflineBody(setup, ref_params, arrays, data, position, iterator_state)
    summary = loop.run_loop(setup, start.state, body, ckpts=ckpts, workdir=workdir, source=start.source,
                            preemption=preemption)
    if data.heldout is not None and not summary["preempted"]:
        scores = held.heldout_scores(setup, summary["params"], data.heldout)
        figures["after"] = held.heldout_metrics(config, scores, ref_scores, data.heldout.get("scores"))
        summary["heldout"] = figures
        log.info("held-out (%d rows): %s", len(data.heldout["tokens"]), json.dumps(figures))
        if distributed.is_leader():
            (workdir / "heldout.json").write_text(json.dumps(figures, indent=2))
    if data.bad_rows:
        summary["bad_rows"] = data.bad_rows
    return summary


def spec(name: str) -> PhaseSpec:
    """The phase-table entry of the offline phase `name` (sft | rm | dpo)."""
    return PhaseSpec(name=name, validate=validate, optimizer_steps=lambda c: int(c.train.steps),
                     step_rows=lambda c: (int(c.train.batch_size), "train.batch_size"), make_step=make_step, run=run)
