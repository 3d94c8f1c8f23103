"""Start-up checks of the `online` section (each naming its key) and the figures of an iteration the
frame needs: optimizer steps per iteration and rows per optimizer step."""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from pjax import config_io
from pjax.losses import online as ol
from pjax.rl import algorithms


def validate(config: ConfigDict) -> None:
    o = config.online
    algorithm = algorithms.get(o.algorithm)
    if config.data.layout != "padded":
        raise ValueError(f"data.layout={config.data.layout!r} applies to the offline sft and dpo phases; "
                         "online batches are padded")
    for key in ("prompts_per_iteration", "samples_per_prompt", "epochs", "num_minibatches"):
        if o[key] <= 0:
            raise ValueError(f"online.{key}={o[key]} must be positive")
    if o.samples_per_prompt < algorithm.min_samples:
        raise ValueError(f"online.samples_per_prompt={o.samples_per_prompt}: {algorithm.min_samples_why}; it needs "
                         f"at least {algorithm.min_samples}")
    algorithm.validate(config)
    rows = o.prompts_per_iteration * o.samples_per_prompt
    if rows % o.num_minibatches:
        raise ValueError(f"online.num_minibatches={o.num_minibatches} does not divide the {rows} samples of an "
                         f"iteration (online.prompts_per_iteration x online.samples_per_prompt)")
    if o.temperature <= 0:
        raise ValueError(f"online.temperature={o.temperature} must be positive (sampling, and log-probs at logits / T)")
    if o.reward.startswith(config_io.REFUSED):
        spec = o.reward[len(config_io.REFUSED):]
        raise ValueError(f"online.reward={spec!r} comes from a saved config.json, and importing the code it names "
                         f"runs whatever that module holds: pass --config.online.reward={spec} yourself, or set "
                         f"{config_io.ALLOW_SAVED_PYTHON}=1 to trust the file")
    if not (o.reward in ("gold", "rm") or o.reward.startswith("python:")):
        raise ValueError(f"online.reward={o.reward!r}: expected 'gold', 'rm' or 'python:<module>:<function>'")
    if o.reward == "rm" and not config.reward.models:
        raise ValueError("online.reward='rm' needs reward.models (reward-model exports)")
    if o.loss_aggregation not in ol.AGGREGATIONS:
        raise ValueError(f"online.loss_aggregation={o.loss_aggregation!r}: expected one of {ol.AGGREGATIONS}")
    if o.value_from and not Path(o.value_from).expanduser().exists():
        raise FileNotFoundError(f"online.value_from={o.value_from!r}: no such export")
    if o.value_from and config.model.value_backbone != "separate":
        raise ValueError(f"online.value_from={o.value_from!r} initialises a separate value model's backbone: set "
                         "model.value_backbone='separate'")
    if o.kl_estimator not in ol.KL_ESTIMATORS:
        raise ValueError(f"online.kl_estimator={o.kl_estimator!r}: expected one of {ol.KL_ESTIMATORS}")
    if o.scale_rewards not in ol.GROUP_SCALES:
        raise ValueError(f"online.scale_rewards={o.scale_rewards!r}: expected one of {ol.GROUP_SCALES}")
    if not 0.0 <= o.mixture_coef <= 1.0:
        raise ValueError(f"online.mixture_coef={o.mixture_coef}: nash_md's geometric-mixture weight of the "
                         "reference must be in [0, 1]")
    if o.kl_coef and not algorithm.uses_kl_coef:
        raise ValueError(f"online.kl_coef={o.kl_coef}: {o.algorithm} does not use it (pairwise objectives have "
                         "loss.beta; raft none); set it to 0")
    if o.kl_target and (not algorithm.trains_value_head or not o.kl_coef):
        raise ValueError(f"online.kl_target={o.kl_target} adapts PPO's online.kl_coef, which must then be > 0")
    if config.model.value_head and not algorithm.trains_value_head:
        raise ValueError(f"model.value_head=True: only ppo trains a value head (online.algorithm={o.algorithm!r})")
    if (o.top_k or o.top_p < 1.0) and algorithm.exact_samples:
        raise ValueError(f"online.top_k={o.top_k} / online.top_p={o.top_p}: {o.algorithm}'s importance ratios and "
                         "KL need samples from the policy itself (log-probs at logits / T); use top_k=0, top_p=1")
    if config.train.grad_accum != 1:
        raise ValueError("train.grad_accum: online phases split an iteration into online.num_minibatches instead")
    if config.model.head != "lm":
        raise ValueError(f"model.head={config.model.head!r}: phase='online' trains a policy (model.head='lm')")


def updates_per_iteration(config: ConfigDict) -> int:
    return int(config.online.epochs * config.online.num_minibatches)


def step_rows(config: ConfigDict) -> tuple[int, str]:
    """The rows of one optimizer step (an iteration's training rows over `online.num_minibatches`)."""
    rows = algorithms.get(config.online.algorithm).training_rows(config) // config.online.num_minibatches
    return rows, ("the online minibatch (online.prompts_per_iteration x online.samples_per_prompt, or pairs, "
                  "over online.num_minibatches)")
