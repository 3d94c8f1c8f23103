"""The online-algorithm registry: one `Algorithm` per name (`online.algorithm`), each saying what its
rollout samples, how an iteration's samples become a training batch, and the loss of that batch.
The loop (`pjax.rl.loop`) asks the entry; nothing else branches on the algorithm's name."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from pjax import models

LossFn = Callable[..., Any]  # (params, ref_params, batch, loss_state) -> (loss, (metrics, loss_state))


@dataclasses.dataclass
class Rollout:
    """One iteration's samples as the algorithm sees them.

    `samples` holds every sample (`pjax.generate` output: tokens/mask/completion_mask `[N, L]`,
    completion, logprobs, lengths): the policy's first (`n_policy` of them, `samples_per_prompt`
    consecutive rows per prompt), then one opponent per policy sample when the algorithm has opponents.
    `rewards` `[N]` are theirs; `ref_logps` `[M, L-1]` the reference's log-probs of the first M rows
    (`Algorithm.ref_logps_of_opponents`); `values` `[n_policy, L-1]` the value head's at rollout (ppo)."""

    samples: dict[str, np.ndarray]
    rewards: np.ndarray
    ref_logps: np.ndarray | None
    n_policy: int
    values: np.ndarray | None = None


class Algorithm:
    """An online algorithm. Subclasses set the attributes and implement `build_batch` and `loss_fn`."""

    name: str = ""
    opponent: str | None = None  # each policy sample meets a sample of: None | "reference" | "mixture"
    ref_logps_of_opponents: bool = True  # the reference scores the opponents' samples too
    min_samples: int = 1  # online.samples_per_prompt at least (why: `min_samples_why`)
    min_samples_why: str = ""
    exact_samples: bool = False  # importance ratios / KL need samples of the policy itself (no top-k/top-p)
    uses_kl_coef: bool = True  # online.kl_coef means something to it
    trains_value_head: bool = False  # a per-token value head (model.value_head), whose values the rollout needs

    def validate(self, config: ConfigDict) -> None:
        """Checks of its own, beyond the shared ones of `pjax.rl.config`."""

    def training_rows(self, config: ConfigDict) -> int:
        """Rows of an iteration's training batch (split into `online.num_minibatches`)."""
        return int(config.online.prompts_per_iteration * config.online.samples_per_prompt)

    def initial_carry(self, config: ConfigDict, saved: dict[str, Any] | None) -> dict[str, float]:
        """Host state carried from iteration to iteration (and checkpointed with the data position)."""
        return {}

    def after_iteration(self, config: ConfigDict, carry: dict[str, float], row: dict[str, float]
                        ) -> tuple[dict[str, float], dict[str, float]]:
        """(the next carry, figures to log) once an iteration's row is known."""
        return carry, {}

    def build_batch(self, config: ConfigDict, rollout: Rollout, carry: dict[str, float]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def loss_fn(self, config: ConfigDict, model_def: models.ModelDef) -> LossFn:
        raise NotImplementedError


REGISTRY: dict[str, Algorithm] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: add an algorithm to the registry under its `name`."""
    if cls.name in REGISTRY:
        raise ValueError(f"online algorithm {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Algorithm:
    if name not in REGISTRY:
        raise ValueError(f"online.algorithm={name!r}: expected one of {tuple(REGISTRY)}")
    return REGISTRY[name]


def sampler_logps(samples: dict) -> np.ndarray:
    """The sampler's log-probs `[B, L-1]` at the training path's positions (completion token i sits at
    P + i and is predicted at P + i - 1; 0 elsewhere)."""
    B, L = samples["tokens"].shape
    P = L - samples["completion"].shape[1]
    out = np.zeros((B, L - 1), np.float32)
    out[:, P - 1:] = samples["logprobs"]
    return out


def sample_batch(samples: dict) -> dict[str, np.ndarray]:
    """The rows of the samples as the training path reads them, with the sampler's (`old_logps`)."""
    return {"tokens": samples["tokens"], "mask": samples["mask"], "completion_mask": samples["completion_mask"],
            "old_logps": sampler_logps(samples)}


def policy_logps(config: ConfigDict, model_def: models.ModelDef, params: Any, batch: dict,
                 with_values: bool = False):
    """The policy's per-token log-probs `[B, L-1]` of the batch at logits / `online.temperature` (and the
    value head's values, `with_values`), chunked over the vocabulary."""
    kw = dict(chunk_size=config.train.logprob_chunk, temperature=float(config.online.temperature))
    if with_values:
        return models.sequence_logprobs_and_values(model_def, params, batch["tokens"], batch["mask"], **kw)
    return models.sequence_token_logprobs(model_def, params, batch["tokens"], batch["mask"], **kw)


def completion_mask(batch: dict) -> jax.Array:
    return batch["completion_mask"][:, 1:].astype(jnp.float32)


def sampling_gap(logps: jax.Array, batch: dict, mask: jax.Array) -> dict[str, jax.Array]:
    """How far the params being trained are from those the samples were drawn with (0 at the first update)."""
    return {"logp_diff_max": jax.lax.stop_gradient(jnp.abs(logps - batch["old_logps"]) * mask).max()}
