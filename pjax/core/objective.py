"""The objective: `config.loss` (any objective of the `pjax.losses` catalogue, or several combined)
turned into the loss function a train step differentiates. Offline phases and online pairwise
algorithms build theirs here; the objectives never see a model, this module computes what they read."""

from __future__ import annotations

from typing import Callable

import jax
from ml_collections import ConfigDict

from pjax import losses, models
from pjax.losses import LossInputs


def make_loss_fn(config: ConfigDict, model_def: models.ModelDef, temperature: float = 1.0) -> Callable:
    """`loss_fn(params, ref_params, batch, loss_state) -> (loss, (metrics, new_loss_state))`.

    Reward-model objectives get the scalar head's rewards at each row's last token. Otherwise it
    computes the per-token log-probs the configured objectives need (the policy's; the reference's
    unless the batch carries precomputed `ref_logps`; KTO's mismatched `kl_*` rows; WPO's
    `log sum p^2`) and hands them to `losses.combined`. `temperature`: log-probs at logits / T (online
    pairwise objectives on samples drawn at T). It reads `config.loss`, `config.train.logprob_chunk` and
    `config.reward` only: every phase that trains an objective of the catalogue builds it here.
    """
    cfg = config.loss
    needs_ref = losses.needs_reference(cfg)
    chunk = config.train.logprob_chunk
    names = {o.name for o, _ in losses.terms(cfg)}
    weighting = bool(cfg.use_weighting) or "wpo" in names
    kto = "kto" in names

    def logps(params, tokens, mask, with_log_sum_p2=False, batch=None):
        if batch is not None and "packed_tokens" in batch:  # a padding-free layout (pjax.data.layout)
            return models.packed_token_logprobs(model_def, params, batch, chunk_size=chunk,
                                                with_log_sum_p2=with_log_sum_p2, temperature=temperature)
        packed = {} if batch is None else {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
        return models.sequence_token_logprobs(model_def, params, tokens, mask, chunk_size=chunk,
                                              with_log_sum_p2=with_log_sum_p2, temperature=temperature, **packed)

    def reference(ref_params, batch, prefix=""):
        if f"{prefix}ref_logps" in batch:
            return batch[f"{prefix}ref_logps"]
        return jax.lax.stop_gradient(logps(ref_params, batch[f"{prefix}tokens"], batch[f"{prefix}mask"],
                                           batch=None if prefix else batch))

    if losses.trains(cfg) == "reward":
        heads, rc = model_def.cfg.reward_heads, config.reward

        def reward_loss_fn(params, ref_params, batch, loss_state):
            rewards = models.sequence_rewards(model_def, params, batch["tokens"], batch["mask"])
            inputs = LossInputs(rewards=rewards, mask=batch["completion_mask"][..., 1:], scores=batch.get("scores"),
                                margins=batch.get("margins"), state=loss_state)
            if heads == 1:
                loss, metrics, new_state = losses.combined(inputs, cfg)
                return loss, (metrics, new_state)
            # an ensemble of reward heads: each head trained on the objective, the loss their mean;
            # the metrics are the heads' means (min/max over heads), plus the aggregated reward's accuracy
            # (of the raw heads: the statistics that standardise them downstream are recorded at the end)
            per_head = jax.vmap(lambda r: losses.combined(inputs.replace(rewards=r), cfg)[:2], in_axes=-1)
            loss_e, metrics_e = per_head(rewards)
            metrics = {k: v.min(0) if k.endswith("/min") else v.max(0) if k.endswith("/max") else v.mean(0)
                       for k, v in metrics_e.items()}
            aggregated = losses.aggregate_rewards(rewards, rc.aggregate, rc.uwo_lambda)
            _, ensemble, _ = losses.combined(inputs.replace(rewards=aggregated), cfg)
            metrics.update({f"ensemble/{k}": v for k, v in ensemble.items() if k in ("accuracy", "margin")})
            return loss_e.mean(), (metrics, loss_state)

        return reward_loss_fn

    def loss_fn(params, ref_params, batch, loss_state):
        out = logps(params, batch["tokens"], batch["mask"], with_log_sum_p2=weighting, batch=batch)
        policy, log_sum_p2 = out if weighting else (out, None)
        extra = {}
        if kto:  # KTO's z0 from mismatched rows: detached, so no gradient flows through this forward
            frozen = jax.lax.stop_gradient(params)
            extra = dict(kl_policy_logps=logps(frozen, batch["kl_tokens"], batch["kl_mask"]),
                         kl_mask=batch["kl_completion_mask"][..., 1:])
            if needs_ref:
                extra["kl_ref_logps"] = reference(ref_params, batch, "kl_")
        inputs = LossInputs(policy_logps=policy, mask=batch["completion_mask"][..., 1:], token_mask=batch["mask"][..., 1:],
                            ref_logps=reference(ref_params, batch) if needs_ref else None,
                            labels=batch.get("labels"), scores=batch.get("scores"),
                            policy_log_sum_p2=log_sum_p2, state=loss_state, **extra)
        loss, metrics, new_state = losses.combined(inputs, cfg)
        return loss, (metrics, new_state)

    return loss_fn
