"""PPO (Schulman et al. 2017; the RLHF recipe of Ziegler et al. 2019 / TRL's PPOTrainer): the reward at
the last completion token minus `online.kl_coef` x the KL estimate to the reference at every token
(`online.kl_target` > 0: the coefficient adapts), GAE (`online.gamma`, `online.lam`) over the values of
a value head (`model.value_head`) on the policy's backbone or a separate value model's
(`model.value_backbone='separate'`), advantages whitened; clipped policy and value losses
(`online.vf_coef`, `online.vf_clip`)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from pjax import models
from pjax.losses import online as ol
from pjax.rl.algorithms.base import (Algorithm, Rollout, completion_mask, policy_logps, register, sample_batch,
                                     sampling_gap)


@register
class PPO(Algorithm):
    name = "ppo"
    exact_samples = True
    trains_value_head = True

    def validate(self, config: ConfigDict) -> None:
        if not config.model.value_head:
            raise ValueError("online.algorithm='ppo' needs a value head: set model.value_head=True (a per-token "
                             "value head, started fresh; on the policy's backbone, or model.value_backbone='separate')")

    def initial_carry(self, config: ConfigDict, saved: dict[str, Any] | None) -> dict[str, float]:
        return {"kl_coef": float((saved or {}).get("kl_coef", config.online.kl_coef))}

    def after_iteration(self, config, carry, row):
        o, kl_coef = config.online, carry["kl_coef"]
        if o.kl_target > 0:  # adaptive: towards kl_target nats per sequence
            rows = o.prompts_per_iteration * o.samples_per_prompt
            carry = {"kl_coef": float(ol.adaptive_kl_update(kl_coef, row["kl"], o.kl_target, o.kl_horizon, rows))}
        return carry, {"kl_coef": kl_coef}

    def build_batch(self, config: ConfigDict, rollout: Rollout, carry: dict[str, float]) -> dict[str, np.ndarray]:
        """The score at the last completion token minus kl_coef x the KL estimate at every token, GAE over
        the values at rollout, advantages whitened over the batch's tokens."""
        o, samples = config.online, rollout.samples
        batch = sample_batch(samples)
        mask = jnp.asarray(samples["completion_mask"][:, 1:], jnp.float32)
        token_rewards, _ = ol.ppo_token_rewards(jnp.asarray(rollout.rewards, jnp.float32), jnp.asarray(batch["old_logps"]),
                                                jnp.asarray(rollout.ref_logps), mask, carry["kl_coef"], o.kl_estimator)
        adv, returns = ol.gae(token_rewards, jnp.asarray(rollout.values), mask, o.gamma, o.lam)
        if o.whiten_advantages:
            adv = ol.masked_whiten(adv, mask)
        batch.update(advantages=np.asarray(adv), returns=np.asarray(returns),
                     old_values=rollout.values.astype(np.float32), ref_logps=rollout.ref_logps.astype(np.float32))
        return batch

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef):
        o = config.online

        def loss_fn(params, ref_params, batch, loss_state):
            logps, values = policy_logps(config, model_def, params, batch, with_values=True)
            mask = completion_mask(batch)
            policy_loss, m = ol.ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, o.clip_eps,
                                                o.clip_eps_high or o.clip_eps, "dapo")
            value_loss, vm = ol.ppo_value_loss(values, batch["old_values"], batch["returns"], mask, o.vf_clip)
            metrics = {**sampling_gap(logps, batch, mask), **m, **vm, "policy_loss": policy_loss,
                       "value_loss": value_loss}
            return policy_loss + o.vf_coef * value_loss, (metrics, loss_state)

        return loss_fn
