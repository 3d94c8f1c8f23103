"""Reward-model objectives: they read a scalar head's rewards (`LossInputs.rewards`), not log-probs.

PAIR: `bradley_terry` (optional per-pair margin);  LIST: `plackett_luce`;  SCORE: `reward_mse`.
`aggregate_rewards` combines an ensemble of reward heads/models (mean, WCO, UWO).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from pjax.losses.reference_free import require
from pjax.losses.registry import LossInputs, register

AGGREGATIONS = ("mean", "min", "uwo")


def reward_metrics(chosen: jax.Array, rejected: jax.Array) -> dict[str, jax.Array]:
    """accuracy (chosen scored above rejected), margin, and min/mean/max of every reward."""
    both = jnp.concatenate([chosen, rejected])
    return {"accuracy": (chosen > rejected).astype(jnp.float32).mean(), "margin": (chosen - rejected).mean(),
            "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "reward/min": both.min(), "reward/mean": both.mean(), "reward/max": both.max()}


def _range_metrics(rewards: jax.Array) -> dict[str, jax.Array]:
    return {"reward/min": rewards.min(), "reward/mean": rewards.mean(), "reward/max": rewards.max()}


def _ordered_pair_accuracy(rewards: jax.Array, scores: jax.Array) -> jax.Array:
    """Fraction of pairs (i, j) along the last axis with s_i > s_j (ties left out) that have r_i > r_j."""
    better = (scores[..., :, None] > scores[..., None, :]).astype(jnp.float32)
    right = (rewards[..., :, None] > rewards[..., None, :]).astype(jnp.float32) * better
    return right.sum() / jnp.maximum(better.sum(), 1.0)


@register("bradley_terry", data_shape="PAIR [B,2,T] -> rewards [B,2]", needs_reference=False, trains="reward",
          paper="Bradley & Terry 1952; Ouyang et al. 2022 (InstructGPT RM); TRL RewardTrainer; "
                "Touvron et al. 2023 (Llama 2 margin)")
def bradley_terry(inputs: LossInputs, cfg) -> tuple[jax.Array, dict]:
    """Pairwise reward-model loss on r = r_phi(x, y) at the last token, with d = r_c - r_r - m:

        L = mean[-(1 - eps) log sigma(d) - eps log sigma(-d)] + c * mean((r_c + r_r)^2)

    m = `inputs.margins` [B] (TRL's optional per-row `margin` column, Llama 2's preference-strength
    margin; m = 0 when None), eps = `loss.label_smoothing` (the chosen/rejected labels flipped with
    probability eps; with a margin it smooths the SHIFTED logit d, so a flipped pair asks for
    r_r - r_c > -m, i.e. the margin is not mirrored) and c = `loss.center_rewards_coefficient`
    (Eisenstein et al. 2023, TRL's `center_rewards_coefficient`: keeps rewards centred on zero).
    With eps = 0 this is TRL's RewardTrainer loss. Metrics (`accuracy`, `margin` = mean(r_c - r_r))
    read the rewards without m.
    """
    require(inputs, ("rewards",), "bradley_terry")
    rewards = inputs.rewards
    chex.assert_rank(rewards, 2)
    chex.assert_axis_dimension(rewards, 1, 2)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    eps = cfg.label_smoothing
    delta = chosen - rejected
    if inputs.margins is not None:
        chex.assert_shape(inputs.margins, (rewards.shape[0],))
        delta = delta - inputs.margins.astype(rewards.dtype)
    loss = (-(1.0 - eps) * jax.nn.log_sigmoid(delta) - eps * jax.nn.log_sigmoid(-delta)).mean()
    if cfg.center_rewards_coefficient:
        loss = loss + cfg.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss, reward_metrics(chosen, rejected)


@register("plackett_luce", data_shape="LIST [B,K,T] -> rewards [B,K]", needs_reference=False, trains="reward",
          paper="Plackett 1975; Luce 1959; Ouyang et al. 2022 (InstructGPT K-wise RM); Song et al. 2024 (PRO)")
def plackett_luce(inputs: LossInputs, cfg) -> tuple[jax.Array, dict]:
    """Negative log Plackett-Luce likelihood of the score ranking of each list of K >= 2 responses.

    sigma = the order of `inputs.scores` [B, K] descending (stable: equal scores keep index order);
        L = mean_b sum_{k=1}^{K-1} -(r_{sigma_k} - logsumexp_{j>=k} r_{sigma_j}).
    K = 2 is `bradley_terry` with eps = c = 0. `label_smoothing` and `center_rewards_coefficient` are
    not used. Metrics: `accuracy` (fraction of score-ordered pairs, ties left out, with the rewards in
    the same order), `margin` (mean r of the first minus the last response of sigma),
    `reward/min|mean|max` over all rewards.
    """
    del cfg
    require(inputs, ("rewards", "scores"), "plackett_luce")
    rewards = inputs.rewards
    chex.assert_rank(rewards, 2)
    chex.assert_equal_shape([rewards, inputs.scores])
    K = rewards.shape[1]
    if K < 2:
        raise ValueError(f"objective 'plackett_luce' needs K >= 2 responses per list; got K = {K}")
    scores = inputs.scores.astype(rewards.dtype)
    order = jnp.argsort(-scores, axis=-1, stable=True)
    x = jnp.take_along_axis(rewards, order, axis=-1)  # [B, K], best first
    tail = (jnp.arange(K)[None, :] >= jnp.arange(K)[:, None]).astype(x.dtype)  # tail[k, j] = [j >= k]
    tail_lse = jax.nn.logsumexp(x[:, None, :], axis=-1, b=tail[None])  # [B, K]: log sum_{j>=k} exp(x_j)
    loss = (tail_lse - x)[:, :-1].sum(-1).mean()
    metrics = {"accuracy": _ordered_pair_accuracy(rewards, scores), "margin": (x[:, 0] - x[:, -1]).mean(),
               **_range_metrics(rewards)}
    return loss, metrics


@register("reward_mse", data_shape="SCORE [B,T] -> rewards [B]", needs_reference=False, trains="reward",
          paper="Wang et al. 2024 (HelpSteer2 regression RM)")
def reward_mse(inputs: LossInputs, cfg) -> tuple[jax.Array, dict]:
    """Regression reward model: L = mean_b (r_b - s_b)^2 with s = `inputs.scores` [B].

    Metrics: `mse` (= L), `accuracy` (fraction of within-batch pairs with s_i != s_j whose rewards are
    in the same, strict, order), `reward/min|mean|max`.
    """
    del cfg
    require(inputs, ("rewards", "scores"), "reward_mse")
    rewards = inputs.rewards
    chex.assert_rank(rewards, 1)
    chex.assert_equal_shape([rewards, inputs.scores])
    scores = inputs.scores.astype(rewards.dtype)
    loss = ((rewards - scores) ** 2).mean()
    return loss, {"mse": loss, "accuracy": _ordered_pair_accuracy(rewards, scores), **_range_metrics(rewards)}


def aggregate_rewards(rewards: jax.Array, method: str, uwo_lambda: float = 0.5) -> jax.Array:
    """Combine an ensemble of E rewards on the LAST axis ([..., E] -> [...]); Coste et al. 2024,
    "Reward Model Ensembles Help Mitigate Overoptimization".

    mean: mean_e r_e;  min (worst-case optimisation, WCO): min_e r_e;
    uwo (uncertainty-weighted optimisation): mean_e r_e - lambda * var_e r_e (variance with ddof = 0).
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"reward.aggregate={method!r} is not one of {AGGREGATIONS}")
    if rewards.ndim < 1:
        raise ValueError(f"aggregate_rewards needs an ensemble axis last; got a scalar of shape {rewards.shape}")
    if method == "mean":
        return rewards.mean(-1)
    if method == "min":
        return rewards.min(-1)
    return rewards.mean(-1) - uwo_lambda * rewards.var(-1)
