"""Reference-free preference objectives: SimPO, CPO, ORPO (pairs) and RRHF (lists).

None of these needs a reference model: the implicit "reward" is the policy's own (summed or
token-averaged) sequence log-prob. Sequence log-probs are formed here from per-token log-probs and
masks: ℓ = Σ_t m_t log π(y_t), ℓ̄ = ℓ / n with n = Σ_t m_t (n is clamped to >= 1, so a row with no
scored token has ℓ̄ = 0).

The helpers at the top (`require`, `check_pair`, `check_list`, `seq_logps`, ...) are shared with
`pjax.losses.unpaired` and `pjax.losses.listwise`.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp

from pjax.losses.defaults import option
from pjax.losses.pairwise import pair_metrics
from pjax.losses.registry import LossInputs, register

# ---------------------------------------------------------------------------------------------
# shared helpers (static shape / presence checks raise ValueError; they run at trace time)
# ---------------------------------------------------------------------------------------------


def require(inputs: LossInputs, fields: Iterable[str], objective: str) -> None:
    """Raise ValueError naming every `LossInputs` field the objective needs but did not get."""
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise ValueError(f"objective {objective!r} needs LossInputs field(s) {', '.join(missing)}, "
                         f"which {'is' if len(missing) == 1 else 'are'} None")


def _check_same_shape(inputs: LossInputs, fields: Iterable[str], objective: str) -> None:
    shape = inputs.policy_logps.shape
    for f in fields:
        arr = getattr(inputs, f)
        if arr is not None and arr.shape != shape:
            raise ValueError(f"objective {objective!r}: inputs.{f} has shape {arr.shape}, "
                             f"expected policy_logps' shape {shape}")


def check_pair(inputs: LossInputs, objective: str) -> None:
    """PAIR data: policy_logps / mask (/ ref_logps) are [B, 2, T], index 0 chosen, 1 rejected."""
    shape = inputs.policy_logps.shape
    if len(shape) != 3 or shape[1] != 2:
        raise ValueError(f"objective {objective!r} needs PAIR data [B, 2, T]; got policy_logps {shape}")
    _check_same_shape(inputs, ("mask", "ref_logps"), objective)


def check_list(inputs: LossInputs, objective: str) -> None:
    """LIST data: policy_logps / mask (/ ref_logps) are [B, K, T] with K >= 2; scores is [B, K]."""
    require(inputs, ("scores",), objective)
    shape = inputs.policy_logps.shape
    if len(shape) != 3:
        raise ValueError(f"objective {objective!r} needs LIST data [B, K, T]; got policy_logps {shape}")
    if shape[1] < 2:
        raise ValueError(f"objective {objective!r} needs K >= 2 responses per list; got K = {shape[1]}")
    _check_same_shape(inputs, ("mask", "ref_logps"), objective)
    if inputs.scores.shape != shape[:2]:
        raise ValueError(f"objective {objective!r}: inputs.scores has shape {inputs.scores.shape}, "
                         f"expected [B, K] = {shape[:2]}")


def compute_dtype(x: jnp.ndarray) -> jnp.dtype:
    """At least float32 (bf16 log-probs are upcast; float64 stays float64 under x64)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def seq_logps(logps: jnp.ndarray, mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(ℓ, ℓ̄, n) over the last axis: masked token sum, token mean (n clamped to >= 1), token count."""
    dtype = compute_dtype(logps)
    m = mask.astype(dtype)
    total = (logps.astype(dtype) * m).sum(-1)
    n = m.sum(-1)
    return total, total / jnp.maximum(n, 1.0), n


def chosen_nll(inputs: LossInputs) -> jnp.ndarray:
    """Token-mean NLL of the chosen rows over the whole batch: -Σ_{b,t} m ℓ_bt / Σ_{b,t} m.

    This is TRL's `nn.CrossEntropyLoss()` over the chosen half of the batch (mean over all
    non-ignored completion tokens, not a mean of per-sequence means), and pjax's `sft` loss.
    """
    dtype = compute_dtype(inputs.policy_logps)
    lp, m = inputs.policy_logps[:, 0].astype(dtype), inputs.mask[:, 0].astype(dtype)
    return -(lp * m).sum() / jnp.maximum(m.sum(), 1.0)


def smoothed_logistic(z: jnp.ndarray, eps) -> jnp.ndarray:
    """-(1 - eps) log σ(z) - eps log σ(-z) (TRL CPO's label-smoothed sigmoid loss)."""
    return -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


def log1mexp(x: jnp.ndarray) -> jnp.ndarray:
    """log(1 - e^x) for x < 0, stably (Mächler 2012): log(-expm1(x)) near 0, log1p(-e^x) far from it."""
    return jnp.where(x > -jnp.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


# ---------------------------------------------------------------------------------------------
# pairwise, reference-free
# ---------------------------------------------------------------------------------------------


@register("simpo", data_shape="PAIR [B,2,T]", needs_reference=False,
          paper="SimPO: Simple Preference Optimization with a Reference-Free Reward (Meng et al., 2024)")
def simpo_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """SimPO as TRL's `CPOTrainer(loss_type="simpo", cpo_alpha=0)`.

    L = mean_b [ -log σ(β (ℓ̄_c - ℓ̄_r) - γ) ],  ℓ̄ = token-averaged policy log-prob, γ = `simpo_gamma`.

    The paper writes the same thing as -log σ(β/|y_w| ℓ(y_w) - β/|y_l| ℓ(y_l) - γ) with γ the target
    reward margin; TRL writes it as -log σ(β (ℓ̄_c - ℓ̄_r - γ/β)); all three are identical.
    `label_smoothing` ε (default in `pjax.losses.defaults`) gives TRL's smoothed form
    -(1-ε) log σ(z) - ε log σ(-z), as TRL's CPOTrainer applies it to `simpo` too.

    No NLL term (cpo_alpha = 0). CPO-SimPO (TRL `simpo` with cpo_alpha > 0) is
    `loss.names=("simpo", "sft")`, `loss.weights=(1, cpo_alpha)`: pjax's `sft` on PAIR data is the
    same token-mean chosen NLL that TRL adds.

    Metrics follow TRL's CPOTrainer for `simpo`: rewards = β ℓ̄ (AVERAGED log-probs, no reference),
    `logps/chosen|rejected` are the averaged log-probs too.
    """
    check_pair(inputs, "simpo")
    _, avg, _ = seq_logps(inputs.policy_logps, inputs.mask)
    z = cfg.beta * (avg[:, 0] - avg[:, 1]) - cfg.simpo_gamma
    loss = smoothed_logistic(z, option(cfg, "label_smoothing")).mean()
    return loss, pair_metrics(cfg.beta, avg, avg)


@register("cpo", data_shape="PAIR [B,2,T]", needs_reference=False,
          paper="CPO: Contrastive Preference Optimization (Xu et al., 2024)")
def cpo_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """CPO as TRL's `CPOTrainer(loss_type="sigmoid")`.

    L = mean_b [ -log σ(β (ℓ_c - ℓ_r)) ] + cpo_alpha * NLL_c,

    with ℓ = SUMMED policy log-probs (TRL averages only for `ipo` / `simpo`) and NLL_c the token-mean
    NLL over all chosen completion tokens of the batch (TRL's CrossEntropyLoss on the chosen half).
    `label_smoothing` ε (default in `pjax.losses.defaults`) gives TRL's conservative form.

    Metrics (TRL's CPO): rewards = β ℓ (summed log-probs, no reference), `logps/*` summed;
    `nll` is TRL's `nll_loss`. Difference from TRL: TRL skips (and logs 0 for) the NLL when
    cpo_alpha = 0; here `nll` is always reported (the loss is the same).
    """
    check_pair(inputs, "cpo")
    total, _, _ = seq_logps(inputs.policy_logps, inputs.mask)
    z = cfg.beta * (total[:, 0] - total[:, 1])
    pref = smoothed_logistic(z, option(cfg, "label_smoothing")).mean()
    nll = chosen_nll(inputs)
    loss = pref + cfg.cpo_alpha * nll
    metrics = pair_metrics(cfg.beta, total, total)
    metrics.update({"nll": jax.lax.stop_gradient(nll), "preference_loss": jax.lax.stop_gradient(pref)})
    return loss, metrics


@register("orpo", data_shape="PAIR [B,2,T]", needs_reference=False,
          paper="ORPO: Monolithic Preference Optimization without Reference Model (Hong et al., 2024)")
def orpo_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """ORPO (Hong et al., 2024); λ is `beta`.

    logodds = (ℓ̄_c - ℓ̄_r) - (log(1 - e^{ℓ̄_c}) - log(1 - e^{ℓ̄_r})),   (averaged log-probs, >= fp32)
    L = NLL_c - β * mean_b log σ(logodds),

    NLL_c the token-mean NLL of the chosen rows over the batch: over their completion tokens (the paper's
    SFT term; default), or with `loss.orpo_nll_on_prompt=True` over every real token, prompt included,
    as TRL 1.16's ORPOTrainer does for decoder-only models (its labels are the whole input). The log-odds
    term is TRL's; log(1 - e^x) is computed stably, as TRL 1.16 also does (log(-expm1 x) for
    x > -ln 2, else log1p(-e^x)). Like TRL, a row with ℓ̄ = 0 (probability 1, or no scored token)
    gives an infinite log-odds.

    Metrics (TRL's ORPO): rewards = β ℓ̄ (averaged log-probs), `logps/*` averaged, `nll` (TRL:
    `nll_loss`), `log_odds_ratio` = mean log σ(logodds), `log_odds_chosen` = mean logodds.
    """
    check_pair(inputs, "orpo")
    _, avg, _ = seq_logps(inputs.policy_logps, inputs.mask)
    log_odds = (avg[:, 0] - avg[:, 1]) - (log1mexp(avg[:, 0]) - log1mexp(avg[:, 1]))
    ratio = jax.nn.log_sigmoid(log_odds)
    on_prompt = option(cfg, "orpo_nll_on_prompt")
    nll = chosen_nll(inputs)
    if inputs.token_mask is not None:
        nll = jnp.where(on_prompt, chosen_nll(inputs.replace(mask=inputs.token_mask)), nll)
    elif on_prompt is True:
        raise ValueError("loss.orpo_nll_on_prompt=True needs LossInputs.token_mask (every real token); it is None")
    loss = nll - cfg.beta * ratio.mean()
    metrics = pair_metrics(cfg.beta, avg, avg)
    metrics.update({
        "nll": jax.lax.stop_gradient(nll),
        "log_odds_ratio": jax.lax.stop_gradient(ratio.mean()),
        "log_odds_chosen": jax.lax.stop_gradient(log_odds.mean()),
    })
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# listwise, reference-free
# ---------------------------------------------------------------------------------------------


@register("rrhf", data_shape="LIST [B,K,T]", needs_reference=False,
          paper="RRHF: Rank Responses to Align Language Models with Human Feedback without tears (Yuan et al., 2023)")
def rrhf_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """RRHF (not in TRL).

    L = mean_b [ Σ_{i,j: r_i < r_j} max(0, ℓ̄_i - ℓ̄_j)  -  ℓ(y_best) ],   r = `inputs.scores`,

    y_best = argmax_k r_k (the first one on ties). The ranking term uses token-averaged log-probs
    (the paper's length penalty 1); pairs with equal scores contribute nothing. The SFT term is the
    SUMMED log-prob of the best response (the paper's L_ft = -Σ_t log π, weight 1, and
    objectives.md's formula), NOT normalised by length; the authors' code instead divides the
    masked token sum by the padded length T. The per-list loss is summed over pairs and averaged
    over the batch. `beta` is not used.
    """
    check_list(inputs, "rrhf")
    total, avg, n = seq_logps(inputs.policy_logps, inputs.mask)
    r = inputs.scores
    worse = (r[:, :, None] < r[:, None, :]).astype(avg.dtype)  # [b, i, j]: r_i < r_j
    diff = avg[:, :, None] - avg[:, None, :]  # ℓ̄_i - ℓ̄_j
    rank = (jax.nn.relu(diff) * worse).sum((1, 2))
    best = jnp.argmax(r, axis=-1)
    best_total = jnp.take_along_axis(total, best[:, None], axis=-1)[:, 0]
    best_n = jnp.take_along_axis(n, best[:, None], axis=-1)[:, 0]
    loss = (rank - best_total).mean()
    n_pairs = jnp.maximum(worse.sum(), 1.0)
    metrics = {
        "rank_loss": jax.lax.stop_gradient(rank.mean()),
        "nll": jax.lax.stop_gradient(-best_total.mean()),  # summed NLL of the best response
        "nll_per_token": jax.lax.stop_gradient((-best_total / jnp.maximum(best_n, 1.0)).mean()),
        "rank_accuracy": jax.lax.stop_gradient(((diff < 0) * worse).sum() / n_pairs),
        "logps/best": jax.lax.stop_gradient(best_total.mean()),
    }
    return loss, metrics
