"""Pairwise preference objectives with a reference model (the DPO family)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from pjax.losses.registry import LossInputs, register


def pair_logratios(inputs: LossInputs) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Sequence log-probs (token sums) of policy and reference, and rho = their difference: each [B, 2]."""
    chex.assert_rank(inputs.policy_logps, 3)
    chex.assert_equal_shape((inputs.policy_logps, inputs.ref_logps, inputs.mask))
    chex.assert_axis_dimension(inputs.policy_logps, 1, 2)
    mask = inputs.mask.astype(jnp.float32)
    policy = (inputs.policy_logps * mask).sum(-1)
    ref = (inputs.ref_logps * mask).sum(-1)
    return policy, ref, policy - ref, mask.sum(-1)


def pair_metrics(beta: float, policy: jnp.ndarray, rho: jnp.ndarray) -> dict:
    """TRL's DPO metric names: rewards are beta * rho; log-probs are token sums."""
    rewards = beta * jax.lax.stop_gradient(rho)
    return {
        "rewards/chosen": rewards[:, 0].mean(),
        "rewards/rejected": rewards[:, 1].mean(),
        "rewards/margins": (rewards[:, 0] - rewards[:, 1]).mean(),
        "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).astype(jnp.float32).mean(),
        "logps/chosen": jax.lax.stop_gradient(policy[:, 0]).mean(),
        "logps/rejected": jax.lax.stop_gradient(policy[:, 1]).mean(),
    }


@register("sigmoid", data_shape="PAIR [B,2,T]", needs_reference=True,
          paper="DPO: Direct Preference Optimization (Rafailov et al., 2023)")
def dpo_sigmoid(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """DPO: L = -log sigma(beta * h), h = (log pi/pi_ref)(y_w) - (log pi/pi_ref)(y_l), mean over pairs.

    Sequence log-probs are token sums over the completion (TRL's convention).
    """
    policy, _, rho, _ = pair_logratios(inputs)
    h = rho[:, 0] - rho[:, 1]
    loss = -jax.nn.log_sigmoid(cfg.beta * h).mean()
    return loss, pair_metrics(cfg.beta, policy, rho)
