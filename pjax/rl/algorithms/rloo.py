"""RLOO (Ahmadian et al. 2024; TRL's RLOOTrainer): a leave-one-out baseline over the samples of a prompt,
the sequence KL to the reference folded into the reward (`online.kl_coef`), a sequence-level clipped
ratio."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from pjax import models
from pjax.losses import online as ol
from pjax.rl.algorithms.base import (Algorithm, Rollout, completion_mask, policy_logps, register, sample_batch,
                                     sampling_gap)


@register
class RLOO(Algorithm):
    name = "rloo"
    min_samples = 2
    min_samples_why = "rloo compares the samples of a prompt with each other"
    exact_samples = True

    def build_batch(self, config: ConfigDict, rollout: Rollout, carry: dict[str, float]) -> dict[str, np.ndarray]:
        o = config.online
        batch = sample_batch(rollout.samples)
        r = jnp.asarray(rollout.rewards, jnp.float32)
        if o.kl_coef:  # TRL's RLOO: the sequence KL to the reference folded into the reward
            mask = rollout.samples["completion_mask"][:, 1:]
            r, _ = ol.sequence_kl_rewards(r, jnp.asarray((batch["old_logps"] * mask).sum(-1)),
                                          jnp.asarray((rollout.ref_logps * mask).sum(-1)), o.kl_coef)
        batch["advantages"] = np.asarray(ol.rloo_advantages(r, o.samples_per_prompt))
        batch["ref_logps"] = rollout.ref_logps.astype(np.float32)
        return batch

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef):
        o = config.online

        def loss_fn(params, ref_params, batch, loss_state):
            logps = policy_logps(config, model_def, params, batch)
            mask = completion_mask(batch)
            seq, old = (logps * mask).sum(-1), (batch["old_logps"] * mask).sum(-1)
            loss, m = ol.rloo_loss(seq, old, batch["advantages"], o.clip_eps, o.clip_eps_high or o.clip_eps)
            return loss, ({**sampling_gap(logps, batch, mask), **m}, loss_state)

        return loss_fn
