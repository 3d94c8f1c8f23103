"""Nash-MD (Munos et al. 2024; TRL's NashMDTrainer): each policy sample y meets a sample y' of the
geometric mixture pi^(1-beta) pi_ref^beta (`online.mixture_coef` = beta; `pjax.generate.generate_mixture`),
judged by a pairwise preference built from the reward, P(y > y') = sigmoid(r(y) - r(y')); REINFORCE on
P - 1/2 plus `online.kl_coef` x the KL to the reference. One epoch: there are no importance ratios."""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from pjax import models
from pjax.losses import online as ol
from pjax.rl.algorithms.base import (Algorithm, Rollout, completion_mask, policy_logps, register, sample_batch,
                                     sampling_gap)


@register
class NashMD(Algorithm):
    name = "nash_md"
    opponent = "mixture"
    ref_logps_of_opponents = False  # the loss reads the reference's log-probs of the policy's samples only
    exact_samples = True

    def validate(self, config: ConfigDict) -> None:
        if config.online.epochs != 1:
            raise ValueError(f"online.epochs={config.online.epochs}: nash_md is REINFORCE without importance "
                             "ratios; a second pass over the same samples would be off-policy (set it to 1)")

    def build_batch(self, config: ConfigDict, rollout: Rollout, carry: dict[str, float]) -> dict[str, np.ndarray]:
        """The policy's samples (rows [0, n)), each with its preference over its mixture opponent (row n + i)."""
        n = rollout.n_policy
        batch = {k: v[:n] for k, v in sample_batch(rollout.samples).items()}
        batch["preference"] = np.asarray(ol.bradley_terry_preference(rollout.rewards[:n], rollout.rewards[n:]))
        batch["ref_logps"] = rollout.ref_logps[:n].astype(np.float32)
        return batch

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef):
        kl_coef = config.online.kl_coef

        def loss_fn(params, ref_params, batch, loss_state):
            logps = policy_logps(config, model_def, params, batch)
            mask = completion_mask(batch)
            loss, m = ol.nash_md_loss(logps, batch["ref_logps"], mask, batch["preference"], kl_coef)
            return loss, ({**sampling_gap(logps, batch, mask), **m}, loss_state)

        return loss_fn
