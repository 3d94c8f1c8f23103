"""Pairwise preference objectives with a reference model (the DPO family).

Notation (as in `docs/objectives.md`): per pair, l(y) = masked token sum of log pi over the
completion (TRL's convention), l0 the same for the reference, rho = l - l0 (index 0 chosen, 1 rejected),
n = completion token count. Every objective here goes through `pair_terms`, which applies the shared
modifiers read from the `config.loss` section:

* `ld_alpha` (LD-DPO): l = sum over the first min(n_c, n_r) completion tokens + ld_alpha * sum over the
  rest, for policy and reference alike (1 = plain sums).
* `f_divergence` / `f_alpha` (f-DPO): the score s(rho) = f'(e^rho) that TRL 1.16 feeds to the losses
  that use a score: reverse_kl s = rho; forward_kl s = 1 - exp(-rho); js_divergence s = log 2 +
  log sigmoid(rho); alpha_divergence s = (exp(min((a-1) rho, 80)) - 1) / (a-1), with a = 1 falling back to
  reverse_kl. Delta = s(rho_c) - s(rho_r). TRL 1.16 accepts a non-reverse-KL divergence only for sigmoid,
  sigmoid_norm, hinge, ipo, exo_pair, robust, discopop (and sft) and raises for the others; pjax applies
  s(rho) wherever an objective reads the score (nca_pair, bco_pair, sppo_hard, apo_down: an extension).
* `use_weighting` (WPO): the per-pair loss is multiplied by w_c * w_r, w = exp(mean over completion tokens
  of [log p_t - log sum_v p(v)^2]) (detached, no clamp), from `LossInputs.policy_log_sum_p2`.

Every objective returns (mean over pairs of the per-pair loss, metrics). The metrics always hold TRL's
`rewards/{chosen,rejected,margins,accuracies}` (beta * the raw rho, also under an f-divergence) and
`logps/{chosen,rejected}` (the token sums, LD-weighted when `ld_alpha` < 1, as TRL logs them).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import chex
import jax
import jax.numpy as jnp

from pjax.losses.defaults import option
from pjax.losses.registry import LossInputs, register
from pjax.losses.sft import sft_loss

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# --------------------------------------------------------------------------------------------------
# Shared pieces: sequence log-probs (LD-DPO), the f-divergence score, WPO weights, metrics.
# --------------------------------------------------------------------------------------------------


def _check_pair_shapes(inputs: LossInputs) -> None:
    chex.assert_rank(inputs.policy_logps, 3)
    if inputs.ref_logps is None:
        raise ValueError("this pairwise objective needs a reference: LossInputs.ref_logps is None")
    chex.assert_equal_shape((inputs.policy_logps, inputs.ref_logps, inputs.mask))
    chex.assert_axis_dimension(inputs.policy_logps, 1, 2)


def ld_token_weights(mask: jnp.ndarray, ld_alpha: float) -> jnp.ndarray:
    """Per-token weights `[B, 2, T]` of LD-DPO: 1 on the first min(n_c, n_r) completion tokens of each
    row, `ld_alpha` on the later completion tokens, 0 off the mask."""
    pos = jnp.cumsum(mask, axis=-1)  # 1-based position among the completion tokens
    shared = jnp.min(mask.sum(-1), axis=1)[:, None, None]  # [B,1,1]: min(n_c, n_r)
    return mask * jnp.where(pos <= shared, 1.0, ld_alpha).astype(mask.dtype)


def pair_logratios(inputs: LossInputs, ld_alpha: float = 1.0
                   ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Sequence log-probs of policy and reference, rho = their difference, and the completion token
    counts: each `[B, 2]`. `ld_alpha` < 1 down-weights the tokens past the shorter response (LD-DPO)."""
    _check_pair_shapes(inputs)
    if not 0.0 <= ld_alpha <= 1.0:
        raise ValueError(f"loss.ld_alpha={ld_alpha} must lie in [0, 1] (1 = plain token sums)")
    mask = inputs.mask.astype(inputs.policy_logps.dtype)
    weights = mask if ld_alpha == 1.0 else ld_token_weights(mask, ld_alpha)
    policy = (inputs.policy_logps * weights).sum(-1)
    ref = (inputs.ref_logps * weights).sum(-1)
    return policy, ref, policy - ref, mask.sum(-1)


def f_score(rho: jnp.ndarray, f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> jnp.ndarray:
    """TRL 1.16's f-divergence score s(rho) = f'(e^rho) (f-DPO), elementwise, constants included: they
    cancel in s(rho_c) - s(rho_r) but not once each side is divided by its length (`sigmoid_norm`, `ipo`)."""
    if f_divergence == "reverse_kl":
        return rho
    if f_divergence == "forward_kl":  # f'(t) = 1 - 1/t
        return 1.0 - jnp.exp(-rho)
    if f_divergence == "js_divergence":  # f'(t) = log(2t / (t + 1))
        return jnp.log(2.0) + jax.nn.log_sigmoid(rho)
    if f_divergence == "alpha_divergence":  # f'(t) = (t^(a-1) - 1) / (a - 1)
        if abs(f_alpha - 1.0) < 1e-6:  # the limit a -> 1 is reverse KL
            return rho
        clamp = 11.0 if rho.dtype == jnp.float16 else 80.0  # TRL: exp(.) stays representable
        return (jnp.exp(jnp.minimum((f_alpha - 1.0) * rho, clamp)) - 1.0) / (f_alpha - 1.0)
    raise ValueError(f"loss.f_divergence={f_divergence!r} is not one of {list(F_DIVERGENCES)}")


def wpo_weights(inputs: LossInputs) -> jnp.ndarray:
    """WPO per-pair weights `[B]`: w_c * w_r with w = exp(token-mean of log p_t - log sum_v p(v)^2), detached."""
    if inputs.policy_log_sum_p2 is None:
        raise ValueError("loss.use_weighting=True (WPO) needs LossInputs.policy_log_sum_p2 "
                         "(per-token log sum_v p(v)^2); it is None")
    chex.assert_equal_shape((inputs.policy_logps, inputs.policy_log_sum_p2))
    mask = inputs.mask.astype(inputs.policy_logps.dtype)
    n = jnp.maximum(mask.sum(-1), 1.0)
    w = jnp.exp(((inputs.policy_logps - inputs.policy_log_sum_p2) * mask).sum(-1) / n)
    return jax.lax.stop_gradient(w[:, 0] * w[:, 1])


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


@dataclasses.dataclass(frozen=True)
class PairTerms:
    """What every with-reference pairwise objective needs, after the shared modifiers."""

    beta: float
    policy: jnp.ndarray  # [B, 2] sequence log-probs (LD-weighted if ld_alpha < 1)
    ref: jnp.ndarray  # [B, 2]
    rho: jnp.ndarray  # [B, 2] raw log-ratios policy - ref
    score: jnp.ndarray  # [B, 2] s(rho) of the configured f-divergence
    n: jnp.ndarray  # [B, 2] completion token counts
    weight: Optional[jnp.ndarray]  # [B] WPO weights w_c * w_r, or None

    @property
    def delta(self) -> jnp.ndarray:
        """Delta = s(rho_c) - s(rho_r): [B]."""
        return self.score[:, 0] - self.score[:, 1]

    @property
    def norm_delta(self) -> jnp.ndarray:
        """Length-normalised Delta: s(rho_c)/n_c - s(rho_r)/n_r (counts clamped at >= 1, as TRL): [B]."""
        s = self.score / jnp.maximum(self.n, 1.0)
        return s[:, 0] - s[:, 1]


def pair_terms(inputs: LossInputs, cfg, *, use_weighting: Optional[bool] = None) -> PairTerms:
    """Apply the shared modifiers (`ld_alpha`, `f_divergence`/`f_alpha`, `use_weighting`) of `cfg`."""
    policy, ref, rho, n = pair_logratios(inputs, float(option(cfg, "ld_alpha")))
    score = f_score(rho, option(cfg, "f_divergence"), float(option(cfg, "f_alpha")))
    weighting = bool(option(cfg, "use_weighting")) if use_weighting is None else use_weighting
    weight = wpo_weights(inputs) if weighting else None
    return PairTerms(float(option(cfg, "beta")), policy, ref, rho, score, n, weight)


def reduce_pairs(per_pair: jnp.ndarray, t: PairTerms, extra: Optional[dict] = None) -> tuple[jnp.ndarray, dict]:
    """Mean over pairs of the (WPO-weighted) per-pair loss, with TRL's metrics plus `extra`."""
    metrics = pair_metrics(t.beta, t.policy, t.rho)
    if t.weight is not None:
        per_pair = per_pair * t.weight
        metrics["wpo/weight"] = t.weight.mean()
    metrics.update(extra or {})
    return per_pair.mean(), metrics


def _no_weighting(cfg, name: str) -> None:
    if bool(option(cfg, "use_weighting")):
        raise ValueError(f"loss.use_weighting=True cannot be combined with loss.name={name!r} "
                         "(TRL raises NotImplementedError for aot / aot_unpaired)")


def _smoothing(cfg) -> float:
    return float(option(cfg, "label_smoothing"))


def _logistic(z: jnp.ndarray) -> jnp.ndarray:
    """-log sigma(z)."""
    return -jax.nn.log_sigmoid(z)


PAIR = "PAIR [B,2,T]"


def _pairwise(name: str, paper: str, data_shape: str = PAIR) -> Callable:
    return register(name, data_shape=data_shape, needs_reference=True, paper=paper)


# --------------------------------------------------------------------------------------------------
# The DPO family.
# --------------------------------------------------------------------------------------------------


def _sigmoid_loss(inputs: LossInputs, cfg, *, use_weighting: Optional[bool] = None):
    t = pair_terms(inputs, cfg, use_weighting=use_weighting)
    return reduce_pairs(_logistic(t.beta * t.delta), t)


@_pairwise("sigmoid", "DPO: Direct Preference Optimization: Your Language Model is Secretly a Reward Model "
                      "(Rafailov et al., 2023)")
def dpo_sigmoid(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """DPO: L = -log sigma(beta * Delta), Delta = s(rho_c) - s(rho_r) (= h for reverse KL), mean over pairs.

    Sequence log-probs are token sums over the completion (TRL's convention); `ld_alpha`, `f_divergence`
    and `use_weighting` apply as in TRL. Same as TRL `sigmoid` (no label smoothing: see `cdpo`).
    """
    return _sigmoid_loss(inputs, cfg)


@_pairwise("f_dpo", "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence "
                    "Constraints (Wang et al., 2023)")
def f_dpo(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """f-DPO: L = -log sigma(beta * (s(rho_c) - s(rho_r))), the divergence from `loss.f_divergence`.

    s: reverse_kl rho (plain DPO); forward_kl -exp(-rho); js_divergence log sigma(rho); alpha_divergence
    exp((a-1) rho)/(a-1), a = `loss.f_alpha`, exponent clamped at <= 80, a = 1 -> reverse KL. These are
    the paper's f'(u), u = pi/pi_ref, up to additive constants that cancel in the difference. Identical to
    `sigmoid` (TRL: `loss_type="sigmoid"` with `f_divergence_type`); the name only documents the intent.
    """
    return _sigmoid_loss(inputs, cfg)


@_pairwise("ld_dpo", "Length Desensitization in Direct Preference Optimization (Liu et al., 2024)")
def ld_dpo(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """LD-DPO: DPO with l(y) = sum_{t <= min(n_c, n_r)} log pi_t + ld_alpha * sum_{t > min(n_c, n_r)} log pi_t
    for policy and reference alike (alpha = `loss.ld_alpha` in [0, 1]; 1 gives plain DPO).

    Identical to `sigmoid` with `ld_alpha` (TRL's `ld_alpha` option of `loss_type="sigmoid"`).
    """
    return _sigmoid_loss(inputs, cfg)


@_pairwise("wpo", "WPO: Enhancing RLHF with Weighted Preference Optimization (Zhou et al., 2024)")
def wpo(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """WPO: DPO with each pair's loss multiplied by w_c * w_r, w = exp(mean_t [log p(y_t) - log sum_v p(v)^2])
    (paper Eq. 2; detached, no clamp, as TRL HEAD). Weighting is forced on, whatever `loss.use_weighting` says;
    needs `LossInputs.policy_log_sum_p2`. TRL: `loss_type="sigmoid"`, `use_weighting=True`.
    """
    return _sigmoid_loss(inputs, cfg, use_weighting=True)


@_pairwise("step_dpo", "Step-DPO: Step-wise Preference Optimization for Long-chain Reasoning of LLMs "
                       "(Lai et al., 2024)", data_shape="STEP [B,2,T]")
def step_dpo(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """Step-DPO: L = -log sigma(beta * [Delta(s_win | x, s_<k) - Delta(s_lose | x, s_<k)]).

    The formula of `sigmoid`; the data differ: both rows share the prompt and the previous steps s_<k
    (context only) and the mask covers only the final step's tokens. Not in TRL.
    """
    return _sigmoid_loss(inputs, cfg)


@_pairwise("cdpo", "cDPO: A Note on DPO with Noisy Preferences & Relationship to IPO (Mitchell, 2023)")
def cdpo(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """Conservative DPO (label smoothing eps = `loss.label_smoothing`):
    L = (1 - eps) * (-log sigma(beta Delta)) + eps * (-log sigma(-beta Delta)).

    TRL's `sigmoid` did this with `label_smoothing` > 0 up to v0.28; at HEAD it has no such loss type.
    """
    eps = _smoothing(cfg)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"loss.label_smoothing={eps} must lie in [0, 1] for loss.name='cdpo'")
    t = pair_terms(inputs, cfg)
    z = t.beta * t.delta
    return reduce_pairs((1.0 - eps) * _logistic(z) + eps * _logistic(-z), t)


@_pairwise("robust", "Provably Robust DPO: Aligning Language Models with Noisy Feedback (Chowdhury et al., 2024)")
def robust(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """rDPO: L = [(1 - eps) * (-log sigma(beta Delta)) - eps * (-log sigma(-beta Delta))] / (1 - 2 eps),
    eps = `loss.label_smoothing` (the flip rate). An unbiased loss under label flips; eps = 0 is DPO.

    Deviation: TRL only warns unless 0 <= eps < 0.5; pjax raises ValueError.
    """
    eps = _smoothing(cfg)
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"loss.label_smoothing={eps} must lie in [0, 0.5) for loss.name='robust'")
    t = pair_terms(inputs, cfg)
    z = t.beta * t.delta
    return reduce_pairs(((1.0 - eps) * _logistic(z) - eps * _logistic(-z)) / (1.0 - 2.0 * eps), t)


@_pairwise("ipo", "A General Theoretical Paradigm to Understand Learning from Human Preferences (Azar et al., 2023)")
def ipo(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """IPO: L = ((s(rho_c)/n_c - s(rho_r)/n_r) - 1/(2 beta))^2, beta playing the paper's tau.

    Length-normalised as TRL (confirmed with the IPO authors, TRL PR #1265; counts clamped at >= 1).
    """
    t = pair_terms(inputs, cfg)
    return reduce_pairs((t.norm_delta - 1.0 / (2.0 * t.beta)) ** 2, t)


@_pairwise("hinge", "SLiC-HF: Sequence Likelihood Calibration with Human Feedback (Zhao et al., 2023)")
def hinge(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """SLiC hinge (TRL `hinge`): L = max(0, 1 - beta * Delta).

    As TRL, it uses the reference log-ratios and no SFT regulariser (the paper's SLiC-HF is reference-free
    with delta = 1/beta and adds -lambda * l(y_sft); add `sft` through `loss.names` for that).
    """
    t = pair_terms(inputs, cfg)
    return reduce_pairs(jax.nn.relu(1.0 - t.beta * t.delta), t)


@_pairwise("sigmoid_norm", "Length-normalised DPO (LN-DPO) from SimPO: Simple Preference Optimization with a "
                           "Reference-Free Reward (Meng et al., 2024)")
def sigmoid_norm(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """Length-normalised DPO (TRL `sigmoid_norm`): L = -log sigma(beta * (s(rho_c)/n_c - s(rho_r)/n_r)).

    It keeps the reference and has no margin, so it is not SimPO (counts clamped at >= 1, as TRL).
    """
    t = pair_terms(inputs, cfg)
    return reduce_pairs(_logistic(t.beta * t.norm_delta), t)


@_pairwise("exo_pair", "Towards Efficient Exact Optimization of Language Model Alignment (Ji et al., 2024)")
def exo_pair(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """EXO (pairwise, paper Eq. 16): KL(q || p) with q = softmax over {chosen, rejected} of beta * s(rho)
    and p = [1 - eps, eps], eps = `loss.label_smoothing` (> 0; the paper recommends 1e-3):
    L = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps), q_w = sigma(beta Delta), q_l = sigma(-beta Delta).

    TRL raises only for eps = 0; pjax also rejects eps >= 1 (log(1 - eps) undefined).
    """
    eps = _smoothing(cfg)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"loss.label_smoothing={eps} must lie in (0, 1) for loss.name='exo_pair' "
                         "(the EXO paper recommends 1e-3)")
    t = pair_terms(inputs, cfg)
    z = t.beta * t.delta
    per_pair = (jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-eps))
                + jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(eps)))
    return reduce_pairs(per_pair, t)


@_pairwise("nca_pair", "Noise Contrastive Alignment of Language Models with Explicit Rewards (Chen et al., 2024)")
def nca_pair(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """NCA (pairwise): with a = beta s(rho_c), b = beta s(rho_r):
    L = -log sigma(a) - 1/2 log sigma(-a) - 1/2 log sigma(-b). Same as TRL `nca_pair` with reverse KL;
    TRL 1.16 raises for this loss with a divergence other than reverse_kl; pjax applies s(rho) (an extension).
    """
    t = pair_terms(inputs, cfg)
    a, b = t.beta * t.score[:, 0], t.beta * t.score[:, 1]
    return reduce_pairs(_logistic(a) + 0.5 * _logistic(-a) + 0.5 * _logistic(-b), t)


@_pairwise("bco_pair", "Binary Classifier Optimization for Large Language Model Alignment (Jung et al., 2024)")
def bco_pair(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """BCO on pairs (TRL `bco_pair` at HEAD): L = -log sigma(beta s(rho_c)) - log sigma(-beta s(rho_r)).
    TRL 1.16 raises for this loss with a divergence other than reverse_kl; pjax applies s(rho) (an extension).

    As TRL HEAD: no running-mean reward shift delta and no density-ratio weights (the paper has both).
    """
    t = pair_terms(inputs, cfg)
    return reduce_pairs(_logistic(t.beta * t.score[:, 0]) + _logistic(-t.beta * t.score[:, 1]), t)


@_pairwise("sppo_hard", "Self-Play Preference Optimization for Language Model Alignment (Wu et al., 2024)")
def sppo_hard(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """SPPO with hard win probabilities (1 for the chosen, 0 for the rejected; TRL `sppo_hard`):
    L = (s(rho_c) - 1/(2 beta))^2 + (s(rho_r) + 1/(2 beta))^2.
    TRL 1.16 raises for this loss with a divergence other than reverse_kl; pjax applies s(rho) (an extension).

    The reference plays the previous iterate pi_t of the paper.
    """
    t = pair_terms(inputs, cfg)
    half = 0.5 / t.beta
    return reduce_pairs((t.score[:, 0] - half) ** 2 + (t.score[:, 1] + half) ** 2, t)


def _smoothed_logistic(z: jnp.ndarray, eps: float) -> jnp.ndarray:
    return (1.0 - eps) * _logistic(z) + eps * _logistic(-z)


@_pairwise("aot", "Distributional Preference Alignment of LLMs via Optimal Transport (Melnyk et al., 2024)")
def aot(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """AOT (paired): u = sort_batch(l_c - l_r), v = sort_batch(l0_c - l0_r), delta = u - v;
    L = (1 - eps)(-log sigma(beta delta)) + eps(-log sigma(-beta delta)), eps = `loss.label_smoothing`.

    As TRL: the sort is over this (micro-)batch, uses the raw log-probs (LD-weighted if `ld_alpha` < 1)
    and ignores the f-divergence. TRL raises NotImplementedError with WPO weighting; pjax raises ValueError.
    """
    _no_weighting(cfg, "aot")
    t = pair_terms(inputs, cfg, use_weighting=False)
    u = jnp.sort(t.policy[:, 0] - t.policy[:, 1])
    v = jnp.sort(t.ref[:, 0] - t.ref[:, 1])
    return reduce_pairs(_smoothed_logistic(t.beta * (u - v), _smoothing(cfg)), t)


@_pairwise("aot_unpaired", "Distributional Preference Alignment of LLMs via Optimal Transport "
                           "(Melnyk et al., 2024)")
def aot_unpaired(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """AOT (unpaired): delta = sort_batch(rho_c) - sort_batch(rho_r) (raw rho, f-divergence ignored);
    L = (1 - eps)(-log sigma(beta delta)) + eps(-log sigma(-beta delta)). As TRL `aot_unpaired`
    (TRL raises NotImplementedError with WPO weighting; pjax raises ValueError).
    """
    _no_weighting(cfg, "aot_unpaired")
    t = pair_terms(inputs, cfg, use_weighting=False)
    delta = jnp.sort(t.rho[:, 0]) - jnp.sort(t.rho[:, 1])
    return reduce_pairs(_smoothed_logistic(t.beta * delta, _smoothing(cfg)), t)


_APO = ("Anchored Preference Optimization and Contrastive Revisions: Addressing Underspecification in "
        "Alignment (D'Oosterlinck et al., 2024)")


@_pairwise("apo_zero", _APO)
def apo_zero(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """APO-zero (paper Eq. 7): L = 1 - sigma(beta rho_c) + sigma(beta rho_r); raw rho (no f-divergence), as TRL.

    For chosen outputs better than the model's own: raise the chosen likelihood, lower the rejected.
    """
    t = pair_terms(inputs, cfg)
    return reduce_pairs(1.0 - jax.nn.sigmoid(t.beta * t.rho[:, 0]) + jax.nn.sigmoid(t.beta * t.rho[:, 1]), t)


@_pairwise("apo_down", _APO)
def apo_down(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """APO-down (paper Eq. 8): L = sigma(beta rho_c) + 1 - sigma(beta Delta); rho_c raw and Delta from
    the f-divergence score. TRL 1.16 raises for this loss with a divergence other than reverse_kl; pjax applies s(rho) (an extension). For chosen outputs worse than the model's own: lower both likelihoods,
    the rejected more.
    """
    t = pair_terms(inputs, cfg)
    return reduce_pairs(jax.nn.sigmoid(t.beta * t.rho[:, 0]) + 1.0 - jax.nn.sigmoid(t.beta * t.delta), t)


@_pairwise("discopop", "Discovering Preference Optimization Algorithms with and for Large Language Models "
                       "(Lu et al., 2024)")
def discopop(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """DiscoPOP / log-ratio modulated loss (paper Eq. 5): z = beta Delta, m = sigma(z / tau),
    L = (1 - m)(-log sigma(z)) + m exp(-z), tau = `loss.discopop_tau` (0.05). Same as TRL `discopop`.
    """
    t = pair_terms(inputs, cfg)
    z = t.beta * t.delta
    m = jax.nn.sigmoid(z / float(option(cfg, "discopop_tau")))
    return reduce_pairs((1.0 - m) * _logistic(z) + m * jnp.exp(-z), t)


@_pairwise("dpop", "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive (Pal et al., 2024)")
def dpop(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """DPO-Positive (paper Eq. 3): L = -log sigma(beta * (Delta - lambda * max(0, l0(y_w) - l(y_w)))),
    lambda = `loss.dpop_lambda` (the paper uses 5-500; default 50). The penalty sits inside beta, as in the
    paper, and fires when the chosen likelihood drops below the reference's. Not in TRL; Delta follows the
    shared modifiers (f-divergence score), the penalty uses the raw rho_c.
    """
    t = pair_terms(inputs, cfg)
    penalty = jax.nn.relu(-t.rho[:, 0])
    per_pair = _logistic(t.beta * (t.delta - float(option(cfg, "dpop_lambda")) * penalty))
    return reduce_pairs(per_pair, t, {"dpop/penalty": jax.lax.stop_gradient(penalty).mean()})


@_pairwise("rdpo_length", "Disentangling Length from Quality in Direct Preference Optimization (Park et al., 2024)")
def rdpo_length(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """R-DPO: L = -log sigma(beta Delta - alpha (|y_w| - |y_l|)), alpha = `loss.length_alpha`, |y| the
    completion token counts; the length term sits outside beta, as in the paper. Not in TRL.
    """
    t = pair_terms(inputs, cfg)
    length_diff = t.n[:, 0] - t.n[:, 1]
    per_pair = _logistic(t.beta * t.delta - float(option(cfg, "length_alpha")) * length_diff)
    return reduce_pairs(per_pair, t, {"rdpo/length_diff": length_diff.mean()})


@_pairwise("rpo", "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial "
                  "Regularizer (Liu et al., 2024)")
def rpo(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """RPO: L = mean_pairs[-log sigma(beta Delta)] + alpha * NLL, alpha = `loss.rpo_alpha` and NLL the token
    mean of -log pi over all chosen completion tokens of the batch (the `sft` objective on pairs).

    As TRL's replacement `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, alpha]`: with WPO weighting both
    terms are multiplied per pair by w_c * w_r (TRL weights every loss type). The NLL uses the plain token
    log-probs (no LD weighting). Old TRL `rpo_alpha` code had a CE ignore_index quirk; not reproduced.
    """
    t = pair_terms(inputs, cfg)
    nll, _ = sft_loss(inputs, cfg)
    per_pair = _logistic(t.beta * t.delta) + float(option(cfg, "rpo_alpha")) * nll
    return reduce_pairs(per_pair, t, {"nll": jax.lax.stop_gradient(nll)})
