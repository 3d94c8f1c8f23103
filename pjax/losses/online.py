"""Model-free building blocks of online policy optimisation: PPO, GRPO, RLOO and their KL terms.

Conventions: per-token arrays are `[B, T]` float32 over the completion tokens (T = max new tokens) with
`mask` `[B, T]` (1 on real completion tokens, 0 after the end); sequence-level arrays are `[B]`. For
group methods B = P * G and the G samples of prompt p are the contiguous rows p*G .. p*G + G - 1.
Everything here is a pure jax function (jit-able; string options and `group_size` are static Python
values). Conventions follow TRL (`docs/objectives.md`, Part B section 5) unless stated.
Nothing here is registered as an objective: the online trainer composes these pieces.
"""

from __future__ import annotations

from typing import Optional, Union

import chex
import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]
Scalar = Union[float, Array]

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("grpo", "dr_grpo", "dapo")
GROUP_SCALES = ("std", "none")


def _check_tokens(*arrays: Array) -> None:
    chex.assert_rank(arrays[0], 2)
    chex.assert_equal_shape(arrays)


# --------------------------------------------------------------------------------------------------
# Masked statistics.
# --------------------------------------------------------------------------------------------------


def masked_sum(x: Array, mask: Array, axis: Optional[int] = None) -> Array:
    """sum(x * mask) over `axis` (all axes when None)."""
    return (x * mask).sum(axis=axis)


def masked_mean(x: Array, mask: Array, axis: Optional[int] = None) -> Array:
    """sum(x * mask) / sum(mask) over `axis` (all axes when None).

    TRL's `masked_mean`, except that the count is clamped at >= 1 so an empty mask gives 0, not NaN.
    """
    chex.assert_equal_shape((x, mask))
    return masked_sum(x, mask, axis) / jnp.maximum(mask.sum(axis=axis), 1.0)


def masked_var(x: Array, mask: Array, unbiased: bool = True) -> Array:
    """Masked variance over all elements; `unbiased` multiplies by n / (n - 1) (Bessel, TRL's default).

    TRL divides by zero when n = 1; here the correction is skipped for n <= 1.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * jnp.where(n > 1, n / jnp.maximum(n - 1.0, 1.0), 1.0)
    return var


def masked_whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """TRL/OpenAI whitening with statistics over the real tokens of the whole batch:

        w = (x - mu) / sqrt(var + eps),  mu = masked mean,  var = masked UNBIASED (Bessel) variance

    as TRL's `masked_whiten` (`masked_var(unbiased=True)`, eps = 1e-8). `shift_mean=False` adds mu back
    (TRL's `whiten_rewards`). Masked positions are set to 0, as TRL does right after whitening.
    """
    chex.assert_equal_shape((x, mask))
    mask = mask.astype(x.dtype)
    mean = masked_mean(x, mask)
    out = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# --------------------------------------------------------------------------------------------------
# KL estimators and PPO reward shaping.
# --------------------------------------------------------------------------------------------------


def kl_estimate(logp: Array, ref_logp: Array, kind: str = "k1") -> Array:
    """Per-token Monte-Carlo estimator of KL(pi || pi_ref) at tokens sampled from pi (Schulman 2020,
    "Approximating KL divergence"), with d = logp - ref_logp:

        k1 = d                                   (unbiased, can be negative; TRL PPO default)
        k2 = d^2 / 2                             (biased, low variance; TRL's `approxkl`)
        k3 = exp(-d) - (-d) - 1 >= 0             (unbiased, low variance; TRL GRPO)

    Elementwise, any shape; masking is the caller's job.
    """
    chex.assert_equal_shape((logp, ref_logp))
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d ** 2
    if kind == "k3":
        return jnp.expm1(-d) + d
    raise ValueError(f"online.kl_estimator={kind!r} is not one of {list(KL_ESTIMATORS)}")


def last_token_onehot(mask: Array) -> Array:
    """`[B, T]` one-hot of each row's last real token (all zeros for a row without real tokens)."""
    chex.assert_rank(mask, 2)
    t = mask.shape[1]
    real = mask > 0
    last = t - 1 - jnp.argmax(real[:, ::-1], axis=1)
    return jax.nn.one_hot(last, t, dtype=jnp.float32) * real.any(axis=1, keepdims=True)


def ppo_token_rewards(score: Array, logp: Array, ref_logp: Array, mask: Array, kl_coef: Scalar,
                      kind: str = "k1") -> tuple[Array, Array]:
    """Per-token PPO rewards with a KL penalty (Ziegler et al. 2019; Stiennon et al. 2020):

        r_t = -kl_coef * KL_t + score * [t = last real token],   KL_t = kl_estimate(logp, ref_logp, kind)

    on real tokens, 0 elsewhere. Returns (rewards `[B, T]`, KL_t `[B, T]`, masked). The score lands on the
    LAST REAL token, as TRL's original PPOTrainer (`compute_rewards`, `last_non_masked_index`); TRL's
    current PPOTrainer adds it at index seq_len + 1, which #3750 argues is the first PAD instead. TRL
    allows only k1 and k3 here (k2 is logging-only); all three are accepted.
    """
    _check_tokens(logp, ref_logp, mask)
    chex.assert_shape(score, (logp.shape[0],))
    mask = mask.astype(logp.dtype)
    kl = kl_estimate(logp, ref_logp, kind) * mask
    rewards = -kl_coef * kl + score[:, None].astype(logp.dtype) * last_token_onehot(mask)
    return rewards, kl


def sequence_kl_rewards(rewards: Array, seq_logp: Array, ref_seq_logp: Array, kl_coef: Scalar
                        ) -> tuple[Array, Array]:
    """TRL RLOO's sequence-level k1 penalty folded into the reward: r <- r - kl_coef * (l - l_ref), with
    l = sum_t mask * logp (TRL uses the sampling policy's log-probs). Returns (rewards `[B]`, kl `[B]`)."""
    chex.assert_rank(rewards, 1)
    chex.assert_equal_shape((rewards, seq_logp, ref_seq_logp))
    kl = seq_logp - ref_seq_logp
    return rewards - kl_coef * kl, kl


def adaptive_kl_update(kl_coef: Scalar, observed_kl: Scalar, target: Scalar, horizon: Scalar,
                       n_steps: Scalar) -> Array:
    """Adaptive KL controller (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences"; TRL's `AdaptiveKLController.update`) as a pure function:

        e = clip(observed_kl / target - 1, -0.2, 0.2);   new_coef = kl_coef * (1 + e * n_steps / horizon)

    `n_steps` is the number of samples since the last update (TRL: batch size x processes).
    """
    error = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    return jnp.asarray(kl_coef, jnp.float32) * (1.0 + error * n_steps / horizon)


# --------------------------------------------------------------------------------------------------
# Advantages.
# --------------------------------------------------------------------------------------------------


def gae(rewards: Array, values: Array, mask: Array, gamma: Scalar = 1.0, lam: Scalar = 0.95
        ) -> tuple[Array, Array]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation") over each row's real tokens, by a reverse `lax.scan`:

        delta_t = r_t + gamma * V_next - V_t,   A_t = delta_t + gamma * lam * A_next,   R_t = A_t + V_t

    where `next` is the row's next REAL token (masked positions are skipped, so holes such as
    environment tokens are transparent) and V_next = A_next = 0 after the last real token (the episode
    ends). Masked positions get A = R = 0. With a prefix mask this is the loop of TRL's original
    PPOTrainer (values and rewards zeroed by the mask); TRL's current PPOTrainer keeps V at the first pad
    (its `padding_mask_p1`), where it also puts the score. TRL's defaults: gamma = 1, lam = 0.95.
    Returns (advantages `[B, T]`, returns `[B, T]`).
    """
    _check_tokens(rewards, values, mask)
    real = mask > 0
    zero = jnp.zeros(rewards.shape[0], rewards.dtype)

    def step(carry, xs):
        next_adv, next_value = carry
        r, v, m = xs
        adv = r + gamma * next_value - v + gamma * lam * next_adv
        return (jnp.where(m, adv, next_adv), jnp.where(m, v, next_value)), jnp.where(m, adv, 0.0)

    _, adv_t = jax.lax.scan(step, (zero, zero), (rewards.T, values.T, real.T), reverse=True)
    advantages = adv_t.T
    return advantages, jnp.where(real, advantages + values, 0.0)


def _groups(rewards: Array, group_size: int) -> Array:
    chex.assert_rank(rewards, 1)
    if rewards.shape[0] % group_size:
        raise ValueError(f"online.group_size={group_size} does not divide the batch of {rewards.shape[0]} "
                         "rewards (B = prompts x group_size, each prompt's samples contiguous)")
    return rewards.reshape(-1, group_size)


def group_advantages(rewards: Array, group_size: int, scale: str = "std", eps: float = 1e-4) -> Array:
    """GRPO advantages (Shao et al. 2024, DeepSeekMath), per group of G = `group_size` contiguous rows:

        scale="std":  A_i = (r_i - mean_g) / (std_g + eps),  std with Bessel's correction (ddof = 1),
                      as TRL (`torch.std`, eps = 1e-4, `scale_rewards="group"`);
        scale="none": A_i = r_i - mean_g  (Dr. GRPO, Liu et al. 2025).

    `[B]` -> `[B]`. "std" needs G >= 2.
    """
    g = _groups(rewards, group_size)
    centred = (g - g.mean(axis=1, keepdims=True))
    if scale == "std":
        if group_size < 2:
            raise ValueError(f"online.scale_rewards='std' needs online.group_size >= 2, got {group_size}")
        centred = centred / (g.std(axis=1, ddof=1, keepdims=True) + eps)
    elif scale != "none":
        raise ValueError(f"online.scale_rewards={scale!r} is not one of {list(GROUP_SCALES)}")
    return centred.reshape(-1)


def rloo_advantages(rewards: Array, group_size: int) -> Array:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"):

        A_i = r_i - (sum_{j in group} r_j - r_i) / (G - 1)

    (TRL RLOOTrainer's baseline). `[B]` -> `[B]`; needs G >= 2.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs online.group_size >= 2 (a leave-one-out baseline), got {group_size}")
    g = _groups(rewards, group_size)
    baseline = (g.sum(axis=1, keepdims=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


# --------------------------------------------------------------------------------------------------
# Clipped surrogate losses.
# --------------------------------------------------------------------------------------------------


def _clip_metrics(ratio: Array, adv: Array, weights: Array, eps_low: Scalar, eps_high: Scalar) -> Metrics:
    """TRL GRPO's clip ratios: low = r < 1 - eps_low with A < 0, high = r > 1 + eps_high with A > 0,
    region = either (= PPO's clipfrac), as weighted means."""
    low = ((ratio < 1.0 - eps_low) & (adv < 0)).astype(jnp.float32)
    high = ((ratio > 1.0 + eps_high) & (adv > 0)).astype(jnp.float32)
    region = jnp.maximum(low, high)
    n = jnp.maximum(weights.sum(), 1.0)
    return {"clip_ratio/low_mean": (low * weights).sum() / n, "clip_ratio/high_mean": (high * weights).sum() / n,
            "clip_ratio/region_mean": (region * weights).sum() / n,
            "ratio_mean": (ratio * weights).sum() / n}


def _clipped_surrogate(ratio: Array, adv: Array, eps_low: Scalar, eps_high: Scalar) -> Array:
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)."""
    return -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)


def aggregate_tokens(x: Array, mask: Array, aggregation: str = "dapo", max_len: Optional[int] = None) -> Array:
    """Reduce a per-token loss `[B, T]` over the real tokens, as TRL GRPO's `loss_type`:

        "grpo":    mean_b [sum_t m x / max(|o_b|, 1)]    (Shao et al. 2024, GRPO: per-sequence mean)
        "dr_grpo": sum_{b,t} m x / (B * max_len)        (Liu et al. 2025, Dr. GRPO; max_len = the max
                                                         completion length, default T)
        "dapo":    sum_{b,t} m x / max(sum m, 1)        (Yu et al. 2025, DAPO token-level mean; = TRL
                                                         PPOTrainer's masked mean)
    """
    _check_tokens(x, mask)
    mask = mask.astype(x.dtype)
    summed = x * mask
    if aggregation == "grpo":
        return (summed.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)).mean()
    if aggregation == "dr_grpo":
        return summed.sum() / (x.shape[0] * (x.shape[1] if max_len is None else max_len))
    if aggregation == "dapo":
        return summed.sum() / jnp.maximum(mask.sum(), 1.0)
    raise ValueError(f"online.loss_aggregation={aggregation!r} is not one of {list(AGGREGATIONS)}")


def ppo_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, clip_eps_low: Scalar = 0.2,
                    clip_eps_high: Optional[Scalar] = None, aggregation: str = "dapo", *,
                    max_len: Optional[int] = None, ref_logp: Optional[Array] = None, kl_coef: Scalar = 0.0,
                    kl_kind: str = "k3") -> tuple[Array, Metrics]:
    """Token-level PPO clipped surrogate (Schulman et al. 2017) with GRPO's aggregations:

        r_t = exp(logp_t - old_logp_t),   l_t = -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t)
                                                 + kl_coef * KL_t(logp, ref_logp, kl_kind)

    `advantages` is `[B, T]` (PPO/GAE) or `[B]` (GRPO, broadcast over the tokens); `clip_eps_high=None`
    means eps_high = eps_low (DAPO's clip-higher recommends 0.28). The KL term is GRPO's (k3, added per
    token) and only applies when `ref_logp` is given. `aggregation` (TRL's `loss_type`) and `max_len`
    (dr_grpo's divisor, default T) as `aggregate_tokens`: "grpo" (mean over each sequence's tokens, then
    over sequences; GRPO), "dr_grpo" (sum / (B * max_len); Dr. GRPO), "dapo" (sum / real tokens; DAPO).

    Metrics, token means over the real tokens: `clip_ratio/{low,high,region}_mean` (TRL GRPO's names;
    region = TRL PPO's `clipfrac`), `approx_kl` = 0.5 * mean((logp - old_logp)^2) (k2, TRL PPO's
    `approxkl`), `ratio_mean`, and `kl` (mean KL_t) when `ref_logp` is given.
    """
    _check_tokens(logp, old_logp, mask)
    b, t = logp.shape
    if advantages.ndim == 1:
        chex.assert_shape(advantages, (b,))
        advantages = jnp.broadcast_to(advantages[:, None], (b, t))
    chex.assert_equal_shape((logp, advantages))
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    mask = mask.astype(logp.dtype)
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    per_token = _clipped_surrogate(ratio, advantages, clip_eps_low, eps_high)
    kl = None
    if ref_logp is not None:
        chex.assert_equal_shape((logp, ref_logp))
        kl = kl_estimate(logp, ref_logp, kl_kind)
        per_token = per_token + kl_coef * kl
    loss = aggregate_tokens(per_token, mask, aggregation, max_len)
    sg = jax.lax.stop_gradient
    metrics = _clip_metrics(sg(ratio), sg(advantages), mask, clip_eps_low, eps_high)
    metrics["approx_kl"] = 0.5 * masked_mean(sg(log_ratio) ** 2, mask)
    if kl is not None:
        metrics["kl"] = masked_mean(sg(kl), mask)
    return loss, metrics


def ppo_value_loss(values: Array, old_values: Array, returns: Array, mask: Array, clip_eps: Scalar = 0.2
                   ) -> tuple[Array, Metrics]:
    """PPO clipped value loss (TRL PPOTrainer; OpenAI lm-human-preferences):

        L = 0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2))

    Metric `val/clipfrac`: fraction of real tokens where the clipped term is strictly larger.
    """
    _check_tokens(values, old_values, returns, mask)
    mask = mask.astype(values.dtype)
    unclipped = (values - returns) ** 2
    clipped = (jnp.clip(values, old_values - clip_eps, old_values + clip_eps) - returns) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(unclipped, clipped), mask)
    frac = masked_mean(jax.lax.stop_gradient(clipped > unclipped).astype(values.dtype), mask)
    return loss, {"val/clipfrac": frac}


def rloo_loss(seq_logp: Array, old_seq_logp: Array, advantages: Array, clip_eps: Scalar = 0.2,
              clip_eps_high: Optional[Scalar] = None) -> tuple[Array, Metrics]:
    """TRL RLOOTrainer's sequence-level clipped REINFORCE (Ahmadian et al. 2024, "Back to Basics"):

        r_b = exp(l_b - l_old,b),  L = mean_b -min(r_b A_b, clip(r_b, 1 - eps, 1 + eps_high) A_b)

    with l = sum_t mask * logp the sequence log-prob. At r = 1 (one update per batch) the gradient is
    plain REINFORCE, -A grad l. `clip_eps_high=None` means eps_high = eps. Metrics:
    `clip_ratio/{low,high,region}_mean` on the sequence ratio and `ratio_mean`.
    """
    chex.assert_rank(seq_logp, 1)
    chex.assert_equal_shape((seq_logp, old_seq_logp, advantages))
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = jnp.exp(seq_logp - old_seq_logp)
    loss = _clipped_surrogate(ratio, advantages, clip_eps, eps_high).mean()
    sg = jax.lax.stop_gradient
    return loss, _clip_metrics(sg(ratio), sg(advantages), jnp.ones_like(ratio), clip_eps, eps_high)


def bradley_terry_preference(rewards_a: Array, rewards_b: Array) -> Array:
    """A pairwise preference judge from a reward model: P(a > b) = sigmoid(r_a - r_b) (Bradley-Terry;
    TRL's Nash-MD / XPO with a reward model)."""
    chex.assert_equal_shape((rewards_a, rewards_b))
    return jax.nn.sigmoid(jnp.asarray(rewards_a, jnp.float32) - jnp.asarray(rewards_b, jnp.float32))


def nash_md_loss(logp: Array, ref_logp: Array, mask: Array, preference: Array, kl_coef: Scalar) -> tuple[Array, Metrics]:
    """Nash-MD's policy-gradient loss (Munos et al. 2024, "Nash Learning from Human Feedback"; TRL's
    NashMDTrainer) on samples y ~ pi, each compared with a sample y' of the geometric mixture:

        L = mean_b [ kl_coef * sum_t sg(logp - ref_logp)_t logp_t  -  (P(y > y') - 1/2) * sum_t logp_t ]

    REINFORCE on the preference with 1/2 as the control variate, plus the KL to the reference by
    REINFORCE (its gradient is that of KL(pi || pi_ref) along the samples). `preference` `[B]`:
    P(y_b > y'_b) from the judge. Metrics: `nash_md/preference`, `nash_md/score` (the REINFORCE term)
    and `nash_md/kl` (sequence k1 KL of the samples).
    """
    _check_tokens(logp, ref_logp, mask)
    chex.assert_shape(preference, (logp.shape[0],))
    mask = mask.astype(jnp.float32)
    seq_logp = (logp * mask).sum(-1)
    log_ratio = jax.lax.stop_gradient(logp - ref_logp) * mask
    score = (preference - 0.5) * seq_logp
    loss = (kl_coef * (log_ratio * logp).sum(-1) - score).mean()
    sg = jax.lax.stop_gradient
    return loss, {"nash_md/preference": preference.mean(), "nash_md/score": sg(score).mean(),
                  "nash_md/kl": log_ratio.sum(-1).mean()}
