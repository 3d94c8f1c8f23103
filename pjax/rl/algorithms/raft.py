"""RAFT (Dong et al. 2023; best-of-N SFT, iterated): the best completion of each prompt's group is
fine-tuned on (a token-mean NLL); a group whose samples all tie teaches nothing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from pjax import models
from pjax.rl.algorithms.base import (Algorithm, Rollout, completion_mask, policy_logps, register, sample_batch,
                                     sampling_gap)


@register
class RAFT(Algorithm):
    name = "raft"
    uses_kl_coef = False

    def build_batch(self, config: ConfigDict, rollout: Rollout, carry: dict[str, float]) -> dict[str, np.ndarray]:
        batch = sample_batch(rollout.samples)
        B, G = len(rollout.rewards), config.online.samples_per_prompt
        grouped = rollout.rewards.reshape(-1, G)
        best = grouped.argmax(1) + np.arange(0, B, G)
        batch["weights"] = np.zeros(B, np.float32)
        batch["weights"][best] = grouped.max(1) > grouped.min(1)
        batch["ref_logps"] = rollout.ref_logps.astype(np.float32)
        return batch

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef):
        def loss_fn(params, ref_params, batch, loss_state):
            logps = policy_logps(config, model_def, params, batch)
            mask = completion_mask(batch)
            w = batch["weights"][:, None]
            loss = -(logps * mask * w).sum() / jnp.maximum((mask * w).sum(), 1.0)
            return loss, ({**sampling_gap(logps, batch, mask), "nll": loss}, loss_state)

        return loss_fn
