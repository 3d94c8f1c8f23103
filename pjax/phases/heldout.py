"""Held-out figures of an offline phase (`data.num_heldout` rows of `data.path`), before and after
training: log-prob and implicit-reward accuracy of pairs, a reward model's ranking accuracy (and MSE to
scores), the token NLL of single sequences."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from pjax import losses, models
from pjax.core.setup import Setup


def heldout_scores(setup: Setup, params: Any, heldout: dict[str, np.ndarray]) -> np.ndarray | None:
    """Scores of the held-out rows (`data.num_heldout`): for pairs `[N, 2]` summed completion log-probs;
    for single sequences `[N, 2]` their summed log-prob and scored tokens; for a reward model its
    rewards (`[N, 2]` pairs, `[N, K]` lists, `[N]` scored rows; an ensemble's aggregated with
    `reward.aggregate`). None for a policy's lists."""
    config, model_def = setup.config, setup.model_def
    keys = ("tokens", "mask", "completion_mask")
    if config.phase == "rm":
        rc = config.reward

        def rewards(p, t, m, c):
            r = models.sequence_rewards(model_def, p, t, m)
            return losses.aggregate_rewards(r, rc.aggregate, rc.uwo_lambda) if model_def.cfg.reward_heads > 1 else r

        return setup.map_rows("heldout_rewards", rewards, heldout, keys, params)
    pairs = heldout["tokens"].ndim == 3 and heldout["tokens"].shape[1] == 2
    if not pairs and heldout["tokens"].ndim != 2:
        return None

    def fn(p, t, m, c):
        lp = (models.sequence_token_logprobs(model_def, p, t, m, chunk_size=config.train.logprob_chunk)
              * c[..., 1:]).sum(-1)
        return lp if pairs else jnp.stack([lp, c[..., 1:].sum(-1).astype(jnp.float32)], -1)

    return setup.map_rows(f"heldout_logps:{pairs}", fn, heldout, keys, params)


def ordered_pair_accuracy(values: np.ndarray, targets: np.ndarray) -> float:
    """Over all pairs (i, j) within a row of `targets` `[..., K]` with targets_i > targets_j, the fraction
    with values_i > values_j (ties in values count half)."""
    better = targets[..., :, None] > targets[..., None, :]
    right = (values[..., :, None] > values[..., None, :]) + 0.5 * (values[..., :, None] == values[..., None, :])
    return float((right * better).sum() / max(better.sum(), 1))


def heldout_metrics(config: ConfigDict, scores: np.ndarray | None, ref_scores: np.ndarray | None,
                    targets: np.ndarray | None = None) -> dict[str, float]:
    """Held-out figures from `heldout_scores`: how often the chosen completion gets the higher summed
    log-prob (`logp_accuracy`); with the reference's scores, how often it gets the higher implicit
    reward rho = log pi/pi_ref (`implicit_reward_accuracy`, ties count half, so 0.5 at the start) and
    the mean beta * (rho_chosen - rho_rejected); for a reward model, how often the better completion
    gets the higher reward (`reward_accuracy`: r_chosen > r_rejected for pairs, every score-ordered pair
    of a list, every pair of scored rows) and for scored rows the `reward_mse` to the scores (`targets`);
    for single sequences (SFT), the token-mean negative log-likelihood of the completions."""
    if scores is None:
        return {}
    kind = losses.data_kind(config.loss)
    if config.phase == "rm":
        if kind == "PAIR":
            return {"reward_accuracy": float(np.mean(scores[:, 0] > scores[:, 1]))}
        out = {"reward_accuracy": ordered_pair_accuracy(scores, targets)}
        if kind == "SCORE":
            out["reward_mse"] = float(np.mean((scores - targets) ** 2))
        return out
    if kind in ("SEQ", "UNP"):
        return {"nll": float(-scores[:, 0].sum() / max(scores[:, 1].sum(), 1.0))}
    out = {"logp_accuracy": float(np.mean(scores[:, 0] > scores[:, 1]))}
    if ref_scores is not None:
        margin = (scores - ref_scores) @ np.array([1.0, -1.0])
        out["implicit_reward_accuracy"] = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
        out["reward_margin"] = float(config.loss.beta * margin.mean())
    return out
