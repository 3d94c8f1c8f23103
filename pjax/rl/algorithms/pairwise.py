"""Online pairwise algorithms: sampled pairs trained with any pairwise policy objective of the catalogue
(`loss.name`, e.g. dpo, ipo), built by `pjax.core.objective` exactly as offline, at logits / T.

- `online_dpo` (RLHF Workflow, Dong et al. 2024; Guo et al. 2024): the best and the worst of each
  prompt's samples are the chosen and the rejected completion; a prompt whose samples all score the same
  adds no gradient (chosen = rejected).
- `xpo` (Xie et al. 2024; TRL's XPOTrainer): one policy and one reference sample per prompt, ordered by
  the reward, plus `online.xpo_alpha` x the policy's log-prob of the reference's sample (exploration).
"""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from pjax import losses, models
from pjax.core import objective
from pjax.rl.algorithms.base import Algorithm, Rollout, register, sample_batch


class Pairwise(Algorithm):
    uses_kl_coef = False  # the objective's own loss.beta

    def validate(self, config: ConfigDict) -> None:
        o = config.online
        kind = losses.data_kind(config.loss)
        if kind != "PAIR" or losses.trains(config.loss) != "policy":
            raise ValueError(f"online.algorithm={o.algorithm!r} trains a pairwise policy objective; loss.name="
                             f"{config.loss.name!r} has data shape {kind}")
        if o.prompts_per_iteration % o.num_minibatches:
            raise ValueError(f"online.num_minibatches={o.num_minibatches} does not divide the "
                             f"{o.prompts_per_iteration} pairs of an iteration (online.prompts_per_iteration)")

    def training_rows(self, config: ConfigDict) -> int:
        return int(config.online.prompts_per_iteration)  # one pair per prompt

    def groups(self, config: ConfigDict, rollout: Rollout) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int]:
        """(rows, rewards, reference log-probs, group size) with each prompt's candidates consecutive."""
        return (sample_batch(rollout.samples), rollout.rewards, rollout.ref_logps,
                int(config.online.samples_per_prompt))

    def build_batch(self, config: ConfigDict, rollout: Rollout, carry: dict[str, float]) -> dict[str, np.ndarray]:
        """`[P, 2, L]`: the best (chosen) and the worst (rejected) candidate of each prompt."""
        batch, rewards, ref_logps, G = self.groups(config, rollout)
        B = len(rewards)
        grouped = rewards.reshape(-1, G)
        best, worst = grouped.argmax(1) + np.arange(0, B, G), grouped.argmin(1) + np.arange(0, B, G)
        tie = grouped.max(1) == grouped.min(1)
        worst = np.where(tie, best, worst)  # no preference: chosen = rejected, whose log-ratio difference is 0
        pick = np.stack([best, worst], 1)  # (no gradient from a pairwise term; RPO/ORPO-style NLL terms remain)
        pairs = {k: batch[k][pick] for k in ("tokens", "mask", "completion_mask")}
        pairs["ref_logps"] = ref_logps[pick].astype(np.float32)
        return pairs

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef):
        # the reference's log-probs come with the batch (from the rollout)
        return objective.make_loss_fn(config, model_def, temperature=float(config.online.temperature))


@register
class OnlineDPO(Pairwise):
    name = "online_dpo"
    min_samples = 2
    min_samples_why = "online_dpo pairs the best and the worst sample of each prompt"


@register
class XPO(Pairwise):
    name = "xpo"
    opponent = "reference"

    def validate(self, config: ConfigDict) -> None:
        if config.online.samples_per_prompt != 1:
            raise ValueError(f"online.samples_per_prompt={config.online.samples_per_prompt}: xpo pairs one policy "
                             "sample with one reference sample per prompt; set it to 1")
        super().validate(config)

    def groups(self, config, rollout):
        """Prompt p's policy sample (row p) and reference sample (row P + p), as groups of 2."""
        half = rollout.n_policy
        order = np.stack([np.arange(half), half + np.arange(half)], 1).reshape(-1)
        batch = {k: v[order] for k, v in sample_batch(rollout.samples).items()}
        return batch, rollout.rewards[order], rollout.ref_logps[order], 2

    def build_batch(self, config, rollout, carry):
        pairs = super().build_batch(config, rollout, carry)
        # the reference's samples, for the exploration term
        pairs.update({f"xpo_{k}": rollout.samples[k][rollout.n_policy:] for k in ("tokens", "mask", "completion_mask")})
        return pairs

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef):
        pairwise = super().loss_fn(config, model_def)
        alpha, T = config.online.xpo_alpha, float(config.online.temperature)

        def xpo_loss_fn(params, ref_params, batch, loss_state):
            """The pairwise loss plus alpha x the policy's log-prob of the reference's samples (summed over
            their tokens, averaged over prompts): exploration away from pi_ref."""
            pairs = {k: v for k, v in batch.items() if not k.startswith("xpo_")}
            loss, (metrics, state) = pairwise(params, ref_params, pairs, loss_state)
            lp = models.sequence_token_logprobs(model_def, params, batch["xpo_tokens"], batch["xpo_mask"],
                                                chunk_size=config.train.logprob_chunk, temperature=T)
            explore = (lp * batch["xpo_completion_mask"][:, 1:]).sum(-1).mean()
            return loss + alpha * explore, ({**metrics, "xpo/ref_sample_logp": explore}, state)

        return xpo_loss_fn
