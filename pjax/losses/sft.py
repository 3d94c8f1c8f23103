"""Supervised fine-tuning objective."""

from __future__ import annotations

import jax.numpy as jnp

from pjax.losses.registry import LossInputs, register


@register("sft", data_shape="SEQ [B,T] (or the chosen row of PAIR [B,2,T])", needs_reference=False,
          paper="Maximum likelihood (next-token cross-entropy)")
def sft_loss(inputs: LossInputs, cfg) -> tuple[jnp.ndarray, dict]:
    """Masked next-token cross-entropy, averaged over all scored tokens of the batch.

    L = -sum_{b,t} m_bt log pi(y_bt | y_<t) / sum_{b,t} m_bt. Given paired data it scores the chosen
    row, as TRL's `sft` loss type in DPOTrainer does (for combining with a pairwise objective).
    """
    logps, mask = inputs.policy_logps, inputs.mask.astype(jnp.float32)
    if logps.ndim == 3:
        logps, mask = logps[:, 0], mask[:, 0]
    n = jnp.maximum(mask.sum(), 1.0)
    nll = -(logps * mask).sum() / n
    return nll, {"nll": nll, "num_tokens": mask.sum()}
