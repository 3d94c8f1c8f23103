"""Unpaired (binary-feedback) objectives with a reference model: KTO and BCO.

Data is UNP: `policy_logps`, `ref_logps`, `mask` are [B, T] (one completion per row) and `labels` is
[B] with 1 = desirable, 0 = undesirable (any label > 0 counts as desirable). ρ = ℓ_π(y) - ℓ_ref(y)
with ℓ the masked token SUM (TRL's KTO / BCO convention). The batch mean of a loss is over all B
rows, desirable and undesirable together (TRL concatenates the two kinds and takes `nanmean`, which
is the plain mean over the rows present).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pjax.losses.reference_free import compute_dtype, require, seq_logps
from pjax.losses.registry import LossInputs, register


def _check_unpaired(inputs: LossInputs, objective: str, extra: tuple[str, ...] = ()) -> None:
    require(inputs, ("ref_logps", "labels") + extra, objective)
    shape = inputs.policy_logps.shape
    if len(shape) != 2:
        raise ValueError(f"objective {objective!r} needs UNP data [B, T]; got policy_logps {shape}")
    for f in ("mask", "ref_logps"):
        if getattr(inputs, f).shape != shape:
            raise ValueError(f"objective {objective!r}: inputs.{f} has shape {getattr(inputs, f).shape}, "
                             f"expected {shape}")
    if inputs.labels.shape != shape[:1]:
        raise ValueError(f"objective {objective!r}: inputs.labels has shape {inputs.labels.shape}, "
                         f"expected [B] = {shape[:1]}")


def _unpaired_metrics(beta, policy: jnp.ndarray, rho: jnp.ndarray, desirable: jnp.ndarray) -> dict:
    """TRL's KTO/BCO metrics, already divided by the counts (TRL logs `*_sum` and `count/*` and divides
    at log time). A kind absent from the batch reports 0 for its means (TRL omits the key)."""
    rewards = beta * jax.lax.stop_gradient(rho)
    policy = jax.lax.stop_gradient(policy)
    d = desirable.astype(rewards.dtype)
    u = 1.0 - d
    n_d, n_u = d.sum(), u.sum()
    mean_d = lambda x: (x * d).sum() / jnp.maximum(n_d, 1.0)  # noqa: E731
    mean_u = lambda x: (x * u).sum() / jnp.maximum(n_u, 1.0)  # noqa: E731
    return {
        "rewards/chosen": mean_d(rewards),
        "rewards/rejected": mean_u(rewards),
        "rewards/margins": mean_d(rewards) - mean_u(rewards),
        "logps/chosen": mean_d(policy),
        "logps/rejected": mean_u(policy),
        "count/chosen": n_d,
        "count/rejected": n_u,
    }


@register("kto", data_shape="UNP [B,T]", needs_reference=True,
          paper="KTO: Model Alignment as Prospect Theoretic Optimization (Ethayarajh et al., 2024)")
def kto_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """KTO as TRL's KTOTrainer (loss_type="kto").

    z0 = stop_grad(max(0, mean_b (ℓ_KL - ℓ⁰_KL))),  from `kl_policy_logps` / `kl_ref_logps` / `kl_mask`
         ([B, T'], mismatched (x_i, y_{i-1}) pairs built by the data side; token sums),
    L_des = λ_D (1 - σ(β (ρ - z0))),   L_und = λ_U (1 - σ(β (z0 - ρ))),
    L = mean over all B rows,  λ_D = `desirable_weight`, λ_U = `undesirable_weight`.

    Differences from TRL: TRL averages per-device KL means across ranks (equal to the global mean for
    equal per-device batches); here the mean is over the (global) batch. Metrics: `kl` = z0,
    `rewards/chosen|rejected` = mean β ρ over desirable / undesirable rows, `logps/*` (token sums),
    `count/chosen|rejected`; a kind absent from the batch reports 0 instead of being omitted.
    """
    _check_unpaired(inputs, "kto", ("kl_policy_logps", "kl_ref_logps", "kl_mask"))
    kl_shapes = {f: getattr(inputs, f).shape for f in ("kl_policy_logps", "kl_ref_logps", "kl_mask")}
    if len(set(kl_shapes.values())) != 1 or len(inputs.kl_policy_logps.shape) != 2:
        raise ValueError(f"objective 'kto': the KL arrays must share one [B, T] shape; got {kl_shapes}")
    policy, _, _ = seq_logps(inputs.policy_logps, inputs.mask)
    ref, _, _ = seq_logps(inputs.ref_logps, inputs.mask)
    rho = policy - ref
    kl_pol, _, _ = seq_logps(inputs.kl_policy_logps, inputs.kl_mask)
    kl_ref, _, _ = seq_logps(inputs.kl_ref_logps, inputs.kl_mask)
    z0 = jax.lax.stop_gradient(jnp.maximum((kl_pol - kl_ref).mean(), 0.0))
    desirable = inputs.labels > 0
    beta = cfg.beta
    des = cfg.desirable_weight * (1.0 - jax.nn.sigmoid(beta * (rho - z0)))
    und = cfg.undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - rho)))
    loss = jnp.where(desirable, des, und).mean()
    metrics = _unpaired_metrics(beta, policy, rho, desirable)
    metrics["kl"] = z0
    return loss, metrics


def _bco_init(cfg) -> dict:
    return {"mean": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)}


@register("bco", data_shape="UNP [B,T]", needs_reference=True,
          paper="BCO: Binary Classifier Optimization for Large Language Model Alignment (Jung et al., 2024)",
          init_state=_bco_init)
def bco_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict, dict]:
    """BCO as TRL's BCOTrainer without UDM (STATEFUL: returns (loss, metrics, new_state)).

    r = β ρ. The reward shift δ is the running mean of every r seen so far, INCLUDING this batch:
    like TRL's `self.running.update(cat(chosen_rewards, rejected_rewards))` followed by
    `delta = self.running.mean`, the state is updated first and the updated mean is used:
        count' = count + B,   mean' = mean + (mean_b r - mean) * B / count',   δ = mean'  (no gradient)
    L = mean over all B rows of  λ_D (-log σ(r - δ))  on desirable rows,
                                 λ_U (-log σ(-(r - δ))) on undesirable rows.
    State: {"mean": float32, "count": int32 (rows seen)}, initial {0, 0}.

    Differences from TRL:
    - no underlying-distribution-matching (UDM) density-ratio weights on the undesirable rows (TRL
      applies them only when a prompt-embedding classifier is configured); this is plain BCO.
    - `desirable_weight` / `undesirable_weight` (default 1 = TRL) are a pjax extension; TRL's
      BCOConfig has no such weights.
    - TRL's RunningMoments starts at count = 1e-24 (we start at 0: same mean up to 1e-24) and also
      tracks a variance, which its loss never uses; only mean and count are kept here.
    - TRL does not update the running mean at evaluation (`do_train=False`); a pure function cannot
      know, so the caller must not keep `new_state` from evaluation batches.
    Metrics: `delta` = δ, `rewards/*` (β ρ), `logps/*`, `count/*` as for KTO.
    """
    _check_unpaired(inputs, "bco")
    if inputs.state is None or not {"mean", "count"} <= set(inputs.state):
        raise ValueError("objective 'bco' is stateful: it needs LossInputs field state = "
                         "{'mean', 'count'} (start from Objective.init_state(cfg))")
    policy, _, _ = seq_logps(inputs.policy_logps, inputs.mask)
    ref, _, _ = seq_logps(inputs.ref_logps, inputs.mask)
    rho = policy - ref
    beta = cfg.beta
    rewards = beta * rho
    dtype = compute_dtype(rewards)
    old_mean = jnp.asarray(inputs.state["mean"])
    old_count = jnp.asarray(inputs.state["count"])
    batch = rewards.shape[0]
    new_count = old_count + batch
    delta_mean = jax.lax.stop_gradient(rewards).mean() - old_mean.astype(dtype)
    new_mean = old_mean.astype(dtype) + delta_mean * (batch / new_count.astype(dtype))
    delta = jax.lax.stop_gradient(new_mean)
    desirable = inputs.labels > 0
    des = cfg.desirable_weight * -jax.nn.log_sigmoid(rewards - delta)
    und = cfg.undesirable_weight * -jax.nn.log_sigmoid(-(rewards - delta))
    loss = jnp.where(desirable, des, und).mean()
    metrics = _unpaired_metrics(beta, policy, rho, desirable)
    metrics["delta"] = delta
    new_state = {"mean": new_mean.astype(old_mean.dtype), "count": new_count.astype(old_count.dtype)}
    return loss, metrics, new_state
