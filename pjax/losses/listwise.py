"""Listwise objectives on LIST data: LiPO-λ (with a reference) and PRO (reference-free).

LIST data: `policy_logps`, `mask` (and `ref_logps`) are [B, K, T], K >= 2 responses per prompt;
`scores` is [B, K], higher is better. Neither objective is in TRL. (RRHF, also listwise, lives in
`pjax.losses.reference_free`.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pjax.losses.reference_free import check_list, require, seq_logps
from pjax.losses.registry import LossInputs, register


def _ranks_desc(s: jnp.ndarray) -> jnp.ndarray:
    """1-based rank of each entry along the last axis, 1 = largest (ties: the earlier index ranks first)."""
    order = jnp.argsort(-s, axis=-1, stable=True)
    return (jnp.argsort(order, axis=-1, stable=True) + 1).astype(s.dtype)


def _pair_accuracy(values: jnp.ndarray, better: jnp.ndarray) -> jnp.ndarray:
    """Fraction of ordered pairs (better[b, i, j] = 1 when i should beat j) with values_i > values_j."""
    right = (values[:, :, None] > values[:, None, :]).astype(better.dtype) * better
    return right.sum() / jnp.maximum(better.sum(), 1.0)


@register("lipo", data_shape="LIST [B,K,T]", needs_reference=True,
          paper="LiPO: Listwise Preference Optimization through Learning-to-Rank (Liu et al., 2024)")
def lipo_lambda_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """LiPO-λ.

    s_i = β ρ_i,  ρ_i = ℓ_π(y_i) - ℓ_ref(y_i) (token sums);  ψ = `inputs.scores` used directly as the
    graded labels (the paper uses graded relevance labels; any real score works since only
    G_i - G_j enters);  G = 2^ψ - 1;  τ_i = rank of s_i in its list under the CURRENT scores
    (1 = best, no gradient through the ranks, ties broken by index);  D(τ) = log2(1 + τ);
        Δ_ij = |G_i - G_j| · |1/D(τ_i) - 1/D(τ_j)|,
        L = mean_b Σ_{i,j: ψ_i > ψ_j} Δ_ij · log(1 + exp(-(s_i - s_j))).
    Pairs with equal ψ contribute nothing.

    K = 2: the two ranks are always {1, 2}, so with ψ_0 > ψ_1
        L = (2^ψ_0 - 2^ψ_1) · (1 - 1/log2 3) · (-log σ(β (ρ_0 - ρ_1))),
    i.e. DPO (`sigmoid`) on the pair, each pair weighted by c = (2^ψ_w - 2^ψ_l)(1 - 1/log2 3)
    (c ≈ 0.369 for labels (1, 0)).

    Metrics: `rewards/best|worst` (mean s of the top / bottom scored response), `rewards/margins`
    (best - worst), `rewards/accuracies` (fraction of ψ-ordered pairs with s in the same order),
    `logps/best` (token sum), `lambda_weight` (mean Δ over ψ-ordered pairs).
    """
    require(inputs, ("ref_logps", "scores"), "lipo")
    check_list(inputs, "lipo")
    policy, _, _ = seq_logps(inputs.policy_logps, inputs.mask)
    ref, _, _ = seq_logps(inputs.ref_logps, inputs.mask)
    s = cfg.beta * (policy - ref)  # [B, K]
    psi = inputs.scores.astype(s.dtype)
    gain = jnp.exp2(psi) - 1.0
    tau = _ranks_desc(jax.lax.stop_gradient(s))
    inv_d = 1.0 / jnp.log2(1.0 + tau)
    weight = jnp.abs(gain[:, :, None] - gain[:, None, :]) * jnp.abs(inv_d[:, :, None] - inv_d[:, None, :])
    better = (psi[:, :, None] > psi[:, None, :]).astype(s.dtype)  # [b, i, j]: ψ_i > ψ_j
    pair_loss = jax.nn.softplus(-(s[:, :, None] - s[:, None, :]))
    loss = (better * weight * pair_loss).sum((1, 2)).mean()

    best = jnp.argmax(psi, axis=-1)[:, None]
    worst = jnp.argmin(psi, axis=-1)[:, None]
    sd = jax.lax.stop_gradient(s)
    r_best = jnp.take_along_axis(sd, best, axis=-1)[:, 0]
    r_worst = jnp.take_along_axis(sd, worst, axis=-1)[:, 0]
    metrics = {
        "rewards/best": r_best.mean(),
        "rewards/worst": r_worst.mean(),
        "rewards/margins": (r_best - r_worst).mean(),
        "rewards/accuracies": _pair_accuracy(sd, better),
        "logps/best": jax.lax.stop_gradient(jnp.take_along_axis(policy, best, axis=-1)).mean(),
        "lambda_weight": (better * weight).sum() / jnp.maximum(better.sum(), 1.0),
    }
    return loss, metrics


@register("pro", data_shape="LIST [B,K,T]", needs_reference=False,
          paper="PRO: Preference Ranking Optimization for Human Alignment (Song et al., 2024)")
def pro_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """PRO (Plackett-Luce over the score ranking), reference-free.

    Order each list by `scores` descending (stable: equal scores keep their index order), y^1 best;
    with ℓ̄ the token-averaged policy log-prob and temperature T = 1:
        L_b = -Σ_{k=1}^{K-1} log[ exp(ℓ̄(y^k)) / Σ_{i>=k} exp(ℓ̄(y^i)) ]  -  w · ℓ̄(y^1),
        L = mean_b L_b,   w = `pro_sft_weight`.
    Choices: T = 1 for every k (the paper's score-gap temperatures, T from reward differences, are
    not implemented); the ranking terms are summed over k (not divided by K - 1); the SFT term is the
    token-AVERAGED log-prob of the best response (objectives.md writes β·ℓ summed; the average keeps
    it on the ranking terms' scale). `beta` is not used.

    K = 2: L_b = -log σ(ℓ̄(y^1) - ℓ̄(y^2)) - w ℓ̄(y^1), a Bradley-Terry pairwise loss on ℓ̄ plus SFT.

    Metrics: `rank_loss` (mean Σ_k term), `nll` (mean -ℓ̄(y^1), per token), `rank_accuracy`
    (fraction of score-ordered pairs whose ℓ̄ is in the same order), `logps/best` (ℓ̄(y^1)).
    """
    check_list(inputs, "pro")
    _, avg, _ = seq_logps(inputs.policy_logps, inputs.mask)
    order = jnp.argsort(-inputs.scores, axis=-1, stable=True)
    x = jnp.take_along_axis(avg, order, axis=-1)  # [B, K], best first
    K = x.shape[1]
    tail = (jnp.arange(K)[None, :] >= jnp.arange(K)[:, None]).astype(x.dtype)  # tail[k, i] = [i >= k]
    tail_lse = jax.nn.logsumexp(x[:, None, :], axis=-1, b=tail[None])  # [B, K]: log Σ_{i>=k} exp(x_i)
    rank = (tail_lse - x)[:, :-1].sum(-1)
    sft = -x[:, 0]
    loss = (rank + cfg.pro_sft_weight * sft).mean()
    psi = inputs.scores
    better = (psi[:, :, None] > psi[:, None, :]).astype(avg.dtype)
    metrics = {
        "rank_loss": jax.lax.stop_gradient(rank.mean()),
        "nll": jax.lax.stop_gradient(sft.mean()),
        "rank_accuracy": _pair_accuracy(jax.lax.stop_gradient(avg), better),
        "logps/best": jax.lax.stop_gradient(x[:, 0].mean()),
    }
    return loss, metrics
