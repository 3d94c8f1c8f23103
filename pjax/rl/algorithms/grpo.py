"""GRPO (Shao et al. 2024, DeepSeekMath): group-normalised rewards (`online.scale_rewards`; Dr. GRPO's
`none`), PPO-clipped token ratios aggregated as `online.loss_aggregation` (grpo | dr_grpo | dapo), an
optional k-estimator KL to the reference (`online.kl_coef`, `online.kl_estimator`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from pjax import models
from pjax.losses import online as ol
from pjax.rl.algorithms.base import (Algorithm, Rollout, completion_mask, policy_logps, register, sample_batch,
                                     sampling_gap)


@register
class GRPO(Algorithm):
    name = "grpo"
    min_samples = 2
    min_samples_why = "grpo compares the samples of a prompt with each other"
    exact_samples = True

    def build_batch(self, config: ConfigDict, rollout: Rollout, carry: dict[str, float]) -> dict[str, np.ndarray]:
        o = config.online
        batch = sample_batch(rollout.samples)
        batch["advantages"] = np.asarray(ol.group_advantages(jnp.asarray(rollout.rewards, jnp.float32),
                                                             o.samples_per_prompt, scale=o.scale_rewards))
        batch["ref_logps"] = rollout.ref_logps.astype(np.float32)
        return batch

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef):
        o = config.online
        max_new = int(config.generate.max_new_tokens)

        def loss_fn(params, ref_params, batch, loss_state):
            logps = policy_logps(config, model_def, params, batch)
            mask = completion_mask(batch)
            loss, m = ol.ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, o.clip_eps,
                                         o.clip_eps_high or o.clip_eps, o.loss_aggregation, max_len=max_new,
                                         ref_logp=batch["ref_logps"] if o.kl_coef else None, kl_coef=o.kl_coef,
                                         kl_kind=o.kl_estimator)
            return loss, ({**sampling_gap(logps, batch, mask), **m}, loss_state)

        return loss_fn
