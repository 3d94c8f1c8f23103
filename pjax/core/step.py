"""The generic train step: gradients of an objective (micro-batched if configured), the optimizer
update, the step's metrics. One jitted function per batch layout; the state is donated."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pjax import sharding
from pjax.core.setup import Setup, State


def combine_micro_metrics(metrics: dict[str, jax.Array], weights: jax.Array) -> dict[str, jax.Array]:
    """One step's metrics from its micro-batches' (leading axis k): `num_*` counts are summed,
    `*/min` and `*/max` reduced as named, everything else averaged with the micro-batch weights."""
    out = {}
    for name, values in metrics.items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf.startswith("num_"):
            out[name] = values.sum(0)
        elif leaf == "min":
            out[name] = values.min(0)
        elif leaf == "max":
            out[name] = values.max(0)
        else:
            out[name] = (weights.reshape((-1,) + (1,) * (values.ndim - 1)) * values).sum(0)
    return out


class TrainStep:
    """The generic train step: grads of the objective, AdamW update, metrics.

    `loss_fn(params, ref_params, batch, loss_state) -> (loss, (metrics, new loss_state))` is the
    objective (`pjax.core.objective.make_loss_fn`, or an online algorithm's). Call the step as
    `step(state, ref_params, batch) -> (state, metrics)`; `jitted(ref_params, batch)` gives
    the underlying `jax.jit` function for that batch layout (e.g. to `lower(...)` it in benchmarks).

    With `train.grad_accum = k > 1` the batch is split into k micro-batches (rows j, j+k, j+2k, ...,
    so every device keeps its share of each) whose gradients are summed in a `lax.scan`, each weighted
    by its share of the batch's normaliser: its scored tokens when `token_mean` (SFT), 1/k otherwise
    (objectives averaging over pairs or rows), and summed in float32. That is the gradient of the
    whole batch, up to rounding; only a token mean nested inside a preference objective (RPO's NLL,
    say), batch statistics (KTO's z0 from the batch's mismatched pairs) and running objective state
    (BCO) see micro-batches. Metrics: see `combine_micro_metrics`.
    """

    def __init__(self, setup: Setup, loss_fn: Callable, token_mean: bool = False):
        self.setup, self.loss_fn, self.token_mean = setup, loss_fn, token_mean
        self._jitted: dict[Any, Callable] = {}

    def gradients(self, params: Any, ref_params: Any, batch: dict, loss_state: Any):
        """((loss, (metrics, new loss_state)), grads) of the whole batch, micro-batched if configured."""
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)
        k = self.setup.config.train.grad_accum
        if k == 1:
            return grad_fn(params, ref_params, batch, loss_state)
        micro = {key: sharding.constrain(v.reshape(v.shape[0] // k, k, *v.shape[1:]).swapaxes(0, 1),
                                         (None, "batch")) for key, v in batch.items()}
        if self.token_mean:  # a token mean (SFT): weight by scored tokens
            tokens = micro["completion_mask"][..., 1:].reshape(k, -1).sum(1).astype(jnp.float32)
            weights = tokens / jnp.maximum(tokens.sum(), 1.0)
        else:
            weights = jnp.full((k,), 1.0 / k, jnp.float32)

        def accumulate(carry, xs):
            grads, state = carry
            mb, w = xs
            (loss, (metrics, state)), g = grad_fn(params, ref_params, mb, state)
            grads = jax.tree.map(lambda a, b: a + w * b.astype(jnp.float32), grads, g)
            return (grads, state), (loss, metrics)

        shardings = self.setup.param_shardings
        zeros = jax.tree.map(lambda p, sh: jax.lax.with_sharding_constraint(jnp.zeros(p.shape, jnp.float32), sh),
                             params, shardings)  # float32 sums, laid out like the params
        (grads, loss_state), (losses_k, metrics_k) = jax.lax.scan(accumulate, (zeros, loss_state), (micro, weights))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return ((weights * losses_k).sum(), (combine_micro_metrics(metrics_k, weights), loss_state)), grads

    def step(self, state: State, ref_params: Any, batch: dict) -> tuple[State, dict]:
        tx, lr = self.setup.tx, self.setup.lr_schedule
        (loss, (metrics, loss_state)), grads = self.gradients(state["params"], ref_params, batch,
                                                              state["loss_state"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]).all()
        # how far this step moved the weights, relative to their size (the explosion guard reads it)
        update_ratio = optax.tree.norm(updates) / jnp.maximum(optax.tree.norm(state["params"]), 1e-12)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr(state["step"]),
                   "update_ratio": update_ratio,
                   "batch_tokens": batch["mask"].sum(), "params_finite": finite.astype(jnp.float32)}
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0])
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": rng,
                "loss_state": loss_state}, metrics

    def jitted(self, ref_params: Any, batch: dict) -> Callable:
        key = (ref_params is None, tuple(sorted((k, np.ndim(v)) for k, v in batch.items())))
        if key not in self._jitted:
            setup = self.setup
            ref_sh = None if ref_params is None else setup.param_shardings
            self._jitted[key] = jax.jit(
                self._step_in_context, in_shardings=(setup.state_shardings, ref_sh, setup.batch_sharding(batch)),
                out_shardings=(setup.state_shardings, None), donate_argnums=(0,))
        return self._jitted[key]

    def _step_in_context(self, state: State, ref_params: Any, batch: dict) -> tuple[State, dict]:
        with sharding.use_rules(self.setup.rules):  # activation constraints follow this setup's table
            return self.step(state, ref_params, batch)

    def __call__(self, state: State, ref_params: Any, batch: dict) -> tuple[State, dict]:
        return self.jitted(ref_params, batch)(state, ref_params, batch)
