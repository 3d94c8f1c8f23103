"""Online policy optimisation (`phase='online'`, `online.algorithm`): sample, score, update, repeat.

Each iteration (one unit of the frame, `pjax.core.loop`; `train.steps` counts them):
1. `online.prompts_per_iteration` prompts (a seeded order over the task's prompts; the iteration is the
   data position of a checkpoint), each sampled `online.samples_per_prompt` times with the *current*
   params (`pjax.rl.rollout`); the sampler's log-probs are the "old" log-probs (they equal the training
   path's, at logits / T). Algorithms with opponents add one opponent sample per policy sample.
2. Rewards (`pjax.rl.scoring`).
3. The algorithm's training batch and loss (`pjax.rl.algorithms`: ppo, grpo, rloo, online_dpo, xpo,
   raft, nash_md).
4. `online.epochs` passes over `online.num_minibatches` minibatches, each one optimizer step of the
   generic `pjax.core.step.TrainStep` with the algorithm's loss.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pjax import checkpoint, distributed
from pjax.core import init, loop
from pjax.core.loop import PhaseSpec, Unit
from pjax.core.setup import Setup, State
from pjax.core.step import TrainStep
from pjax.data import load, loader
from pjax.rl import algorithms, config as rl_config
from pjax.rl.algorithms import Rollout, sampler_logps
from pjax.rl.rollout import Samplers, load_prompts
from pjax.rl.scoring import Scorer

log = logging.getLogger("pjax")


def make_step(setup: Setup) -> TrainStep:
    algorithm = algorithms.get(setup.config.online.algorithm)
    return TrainStep(setup, algorithm.loss_fn(setup.config, setup.model_def))


class OnlineBody:
    """Units of the frame: one iteration each (rollout, rewards, the algorithm's batch, its updates)."""

    name = "iteration"

    def __init__(self, setup: Setup, start: init.Start):
        config, o = setup.config, setup.config.online
        self.setup, self.config = setup, config
        self.algorithm = algorithms.get(o.algorithm)
        self.steps_per_unit = rl_config.updates_per_iteration(config)
        self.tokenizer, self.prompts = load_prompts(config)
        if o.prompts_per_iteration > len(self.prompts.texts):
            raise ValueError(f"online.prompts_per_iteration={o.prompts_per_iteration} exceeds the "
                             f"{len(self.prompts.texts)} prompts of the task")
        self.position_ = {"seed": int(config.seed), "prompts": len(self.prompts.texts),
                          "fingerprint": loader.fingerprint(self.prompts.tokens, self.prompts.mask),
                          **{f"online.{k}": o[k] for k in ("algorithm", "prompts_per_iteration",
                                                           "samples_per_prompt", "epochs", "num_minibatches",
                                                           "temperature")}}
        if config.init_from:  # the reference (its KL is logged for every algorithm), as the parent exported it
            self.ref_def, self.ref_params, _ = checkpoint.load_export(config.init_from, setup.mesh, setup.rules)
        else:  # the imported checkpoint, or the fresh initial params
            self.ref_def, self.ref_params = setup.model_def, init.reference_params(setup, start)
        self.carry = self.algorithm.initial_carry(config, start.saved_position)
        self.scorer = Scorer(config, setup, self.prompts, self.tokenizer)
        self.samplers = Samplers(setup, self.ref_def, self.tokenizer, self.algorithm.opponent)
        self.step = make_step(setup)

    def rollout(self, state: State, it: int) -> tuple[Rollout, np.ndarray, np.ndarray]:
        """(the rollout, the rows' prompt indices, whether each sample ended with a stop token)."""
        o, setup, algorithm = self.config.online, self.setup, self.algorithm
        rows = np.repeat(loader.batch_indices(len(self.prompts.texts), it, o.prompts_per_iteration, self.config.seed),
                         o.samples_per_prompt)
        placed = setup.device_batch({"tokens": self.prompts.tokens[rows], "mask": self.prompts.mask[rows]})
        args = (state["params"], self.ref_params, placed["tokens"], placed["mask"], state["rng"], it)
        samples = jax.device_get(self.samplers.policy(*args))
        n_policy = len(samples["tokens"])
        if algorithm.opponent:  # one opponent per policy sample
            opponents = jax.device_get(self.samplers.opponents(*args))
            samples = {k: np.concatenate([samples[k], opponents[k]]) for k in samples}
        n_scored = len(samples["tokens"]) if algorithm.ref_logps_of_opponents else n_policy
        scored = setup.device_batch({k: samples[k][:n_scored] for k in ("tokens", "mask")})
        ref_logps = np.asarray(jax.device_get(self.samplers.ref_logps(self.ref_params, scored["tokens"],
                                                                      scored["mask"])))
        values = None
        if algorithm.trains_value_head:
            values = np.asarray(jax.device_get(self.samplers.values(state["params"], scored["tokens"],
                                                                    scored["mask"])))
        texts = [self.prompts.texts[i] for i in rows] * (len(samples["tokens"]) // n_policy)
        completions = [self.tokenizer.decode(c[:n]) for c, n in zip(samples["completion"], samples["lengths"])]
        rewards, ended = self.scorer(texts, completions, samples)
        bad = np.flatnonzero(~np.isfinite(rewards))
        if len(bad):  # not left to the frame: online_dpo, xpo and raft would drop such a sample's group unseen
            i = int(bad[0])
            raise FloatingPointError(
                f"online.reward={o.reward!r} gave {len(bad)} of the {len(rewards)} samples of iteration {it + 1} a "
                f"non-finite reward (sample {i}: {rewards[i]} for completion {completions[i]!r} of prompt "
                f"{texts[i]!r}): stopped without saving; fix the reward")
        return Rollout(samples, rewards, ref_logps, n_policy, values), rows, ended

    def unit(self, state: State, it: int) -> Unit:
        o = self.config.online
        t0 = time.perf_counter()
        rollout, rows, ended = self.rollout(state, it)
        t_gen = time.perf_counter() - t0
        batch = self.algorithm.build_batch(self.config, rollout, self.carry)
        t1 = time.perf_counter()
        steps = []
        order_rng = np.random.default_rng([self.config.seed, it])
        n = len(batch["tokens"])  # samples, or pairs
        mb = n // o.num_minibatches
        for _ in range(o.epochs):
            perm = order_rng.permutation(n)
            for m in range(o.num_minibatches):
                sel = np.sort(perm[m * mb:(m + 1) * mb])
                state, metrics = self.step(state, None, self.setup.device_batch({k: v[sel] for k, v in batch.items()}))
                steps.append(metrics)
        jax.block_until_ready(steps)
        host = self.rollout_figures(rollout, ended)
        host.update({"time/generation_s": t_gen, "time/training_s": time.perf_counter() - t1})
        self.carry, extra = self.algorithm.after_iteration(self.config, self.carry, host)
        return Unit(state, steps, {**host, **extra})

    def rollout_figures(self, rollout: Rollout, ended: np.ndarray) -> dict[str, float]:
        """Figures of the policy's own samples (and the opponents' mean reward)."""
        n = rollout.n_policy
        samples = {k: v[:n] for k, v in rollout.samples.items()}
        rewards, cmask = rollout.rewards[:n], samples["completion_mask"][:, 1:]
        old_logps = sampler_logps(samples)
        seq_kl = ((old_logps - rollout.ref_logps[:n]) * cmask).sum(-1)
        out = {
            "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
            "kl": float(seq_kl.mean()), "entropy": float(-(old_logps * cmask).sum() / max(cmask.sum(), 1)),
            "completions/mean_length": float(samples["lengths"].mean()),
            "completions/min_length": float(samples["lengths"].min()),
            "completions/max_length": float(samples["lengths"].max()),
            "completions/clipped_ratio": float(1.0 - ended[:n].mean()),
        }
        if self.algorithm.opponent:
            out["reward/opponent_mean"] = float(rollout.rewards[n:].mean())
        return out

    def row(self, steps: list[dict[str, float]], host: dict[str, float]) -> dict[str, float]:
        """The means of the iteration's step metrics (the loss's KL term as `kl/loss_term`), how far the
        params moved from the sampler's at the first and the last update, and the rollout's figures."""
        row = {("kl/loss_term" if k == "kl" else k): float(np.mean([s[k] for s in steps]))
               for k in steps[0] if k != "logp_diff_max"}
        if "logp_diff_max" in steps[0]:
            row.update({"sampling/logp_diff_first_update": steps[0]["logp_diff_max"],
                        "sampling/logp_diff_last_update": steps[-1]["logp_diff_max"]})
        return {**row, **host}

    def position(self, done: int) -> dict[str, Any]:
        return {**self.position_, "iteration": done, **self.carry}

    def export_metadata(self, params: Any) -> dict[str, Any]:
        return {"online": dict(self.config.online)}


def run(setup: Setup, workdir: Path, preemption: distributed.PreemptionWatch) -> dict[str, Any]:
    """The online phase inside the mesh and rules (see the module docstring)."""
    config = setup.config
    ckpts = loop.phase_checkpoints(config, workdir)
    start = init.start_state(setup, ckpts, workdir, parent_is_reference=False, value_from=config.online.value_from)
    body = OnlineBody(setup, start)
    saved = start.saved_position
    if saved is not None:
        load.check_data_position(saved, body.position_, str(ckpts.directory))
        done = loop.start_unit(start.state, body.steps_per_unit, ckpts, config.train.steps)
        if saved.get("iteration") != done:
            raise ValueError(f"the checkpoint in {ckpts.directory} is at iteration {done} of the train state but "
                             f"records iteration {saved.get('iteration')}: it is inconsistent")

    def say(done: int, row: dict[str, float]) -> None:
        log.info("online %s iteration %d: reward %.3f, kl %.3f, loss %.4f", config.online.algorithm, done,
                 row["reward/mean"], row["kl"], row["loss"])

    summary = loop.run_loop(setup, start.state, body, ckpts=ckpts, workdir=workdir, source=start.source,
                            preemption=preemption, on_log=say)
    if distributed.is_leader() and not summary["preempted"] and summary["history"]:  # a rerun keeps the old one
        (workdir / "online_summary.json").write_text(json.dumps(summary["history"][-1], indent=2))
    return summary


SPEC = PhaseSpec(name="online", validate=rl_config.validate,
                 optimizer_steps=lambda c: int(c.train.steps) * rl_config.updates_per_iteration(c),
                 step_rows=rl_config.step_rows, make_step=make_step, run=run)
