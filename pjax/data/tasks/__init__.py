"""The built-in tasks (`data.task` when a run has no `data.path`): `synthetic` (review sentiment with a
gold reward, `pjax.data.tasks.synthetic`) and `arithmetic` (sums with a verifiable answer,
`pjax.data.tasks.arithmetic`), and their configs from a run config (`configs/base.py`'s `data`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pjax.data.tasks import arithmetic, base, synthetic

if TYPE_CHECKING:
    from ml_collections import ConfigDict

TASKS = ("synthetic", "arithmetic")


def build_task(config: ConfigDict) -> Any:
    """The built-in task `data.task`: `synthetic` (review sentiment with a gold reward) or `arithmetic`
    (sums with a verifiable answer)."""
    if config.data.task == "arithmetic":
        return arithmetic.build_task(arithmetic_config(config))
    if config.data.task == "synthetic":
        return synthetic.build_task(synthetic_config(config))
    raise ValueError(f"data.task={config.data.task!r}: the built-in tasks are {TASKS}")


def arithmetic_config(config: ConfigDict) -> arithmetic.ArithmeticConfig:
    """`data.arithmetic` with data.seed, data.num_sft, data.num_heldout_prompts and data.cache_dir."""
    d, a = config.data, config.data.arithmetic
    return _task_config(arithmetic.ArithmeticConfig, "data.arithmetic / data.*", config, seed=d.seed,
                        num_sft=d.num_sft, num_heldout_prompts=d.num_heldout_prompts, max_operand=a.max_operand,
                        operations=a.operations, min_terms=a.min_terms, max_terms=a.max_terms,
                        answer_noise=a.answer_noise, sp_vocab_size=a.sp_vocab_size)


def synthetic_config(config: ConfigDict) -> synthetic.SyntheticConfig:
    """The review-sentiment task's sizes, noise, vocabulary size and cache directory from `data.*`."""
    d = config.data
    return _task_config(synthetic.SyntheticConfig, "data.*", config, seed=d.seed, num_sft=d.num_sft,
                        num_pairs=d.num_pairs, num_heldout_prompts=d.num_heldout_prompts,
                        num_heldout_pairs=d.num_heldout_pairs, label_noise=d.label_noise,
                        bt_temperature=d.bt_temperature, sp_vocab_size=d.sp_vocab_size)


def _task_config(cls: type[base.TaskConfig], keys: str, config: ConfigDict, **fields: Any) -> Any:
    """``cls(**fields)`` with `data.cache_dir` when set (else the default), errors prefixed by `keys`."""
    if config.data.cache_dir:
        fields["cache_dir"] = config.data.cache_dir
    try:
        return cls(**fields)
    except ValueError as e:
        raise ValueError(f"{keys}: {e}") from e


def cache_dir(config: ConfigDict) -> Path:
    """The tasks' cache directory (tokenizers; by default also encoded data and reference log-probs):
    `data.cache_dir`, else ``$PJAX_CACHE/synthetic`` (``PJAX_CACHE`` defaulting to ``~/.cache/pjax``)."""
    return Path(config.data.cache_dir or base.default_cache_dir()).expanduser()


__all__ = ["TASKS", "arithmetic", "arithmetic_config", "base", "build_task", "cache_dir", "synthetic",
           "synthetic_config"]
