"""Reward-model objectives: they read a scalar head's rewards (`LossInputs.rewards`), not log-probs."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from pjax.losses.registry import LossInputs, register


def reward_metrics(chosen: jax.Array, rejected: jax.Array) -> dict[str, jax.Array]:
    """accuracy (chosen scored above rejected), margin, and min/mean/max of every reward."""
    both = jnp.concatenate([chosen, rejected])
    return {"accuracy": (chosen > rejected).astype(jnp.float32).mean(), "margin": (chosen - rejected).mean(),
            "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "reward/min": both.min(), "reward/mean": both.mean(), "reward/max": both.max()}


@register("bradley_terry", data_shape="PAIR [B,2,T] -> rewards [B,2]", needs_reference=False, trains="reward",
          paper="Bradley & Terry 1952; Ouyang et al. 2022 (InstructGPT RM); TRL RewardTrainer")
def bradley_terry(inputs: LossInputs, cfg) -> tuple[jax.Array, dict]:
    """Pairwise reward-model loss on r = r_phi(x, y) at the last token:

        L = -(1 - eps) log sigma(r_c - r_r) - eps log sigma(r_r - r_c) + c * mean((r_c + r_r)^2)

    eps = `loss.label_smoothing` (the chosen/rejected labels flipped with probability eps) and
    c = `loss.center_rewards_coefficient` (Eisenstein et al. 2023, TRL's `center_rewards_coefficient`:
    keeps rewards centred on zero).
    """
    rewards = inputs.rewards
    chex.assert_rank(rewards, 2)
    chex.assert_axis_dimension(rewards, 1, 2)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    eps = cfg.label_smoothing
    delta = chosen - rejected
    loss = (-(1.0 - eps) * jax.nn.log_sigmoid(delta) - eps * jax.nn.log_sigmoid(-delta)).mean()
    if cfg.center_rewards_coefficient:
        loss = loss + cfg.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss, reward_metrics(chosen, rejected)
