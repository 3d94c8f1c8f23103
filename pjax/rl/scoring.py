"""Rewards of an iteration's samples: `online.reward` = `gold` (the task's gold or verifiable reward),
`rm` (`reward.models`, standardised with their recorded statistics, ensembles aggregated) or
`python:<module>:<function>` (`fn(prompts, completions) -> rewards`); minus
`online.missing_eos_penalty` for a completion that hit the length limit without a stop token."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np
from ml_collections import ConfigDict

from pjax.core.setup import Setup
from pjax.rewards import RewardModel
from pjax.rl.rollout import Prompts


def python_reward(spec: str) -> Callable[[list[str], list[str]], np.ndarray]:
    """`python:<module>:<function>` -> the function, called as fn(prompts, completions) -> rewards."""
    try:
        _, module, name = spec.split(":")
        fn = getattr(importlib.import_module(module), name)
    except (ValueError, ImportError, AttributeError) as e:
        raise ValueError(f"online.reward={spec!r}: cannot load it ({e}); expected python:<module>:<function>") from e
    return lambda ps, cs: np.asarray(fn(ps, cs), np.float64)


class Scorer:
    """Rewards of the rollouts: online.reward, minus online.missing_eos_penalty where it applies."""

    def __init__(self, config: ConfigDict, setup: Setup, prompts: Prompts, tokenizer: Any):
        o = config.online
        self.penalty, self.stop_ids = float(o.missing_eos_penalty), np.asarray(tokenizer.stop_ids)
        if o.reward == "rm":
            rm = RewardModel.from_config(config, setup.mesh, setup.rules)
            self.fn = lambda ps, cs, samples: rm(samples["tokens"], samples["mask"])
        elif o.reward == "gold":
            if prompts.gold is None:
                raise ValueError("online.reward='gold': the task has no gold reward (data.path); use 'rm' or python:")
            self.fn = lambda ps, cs, samples: prompts.gold(ps, cs)
        else:
            fn = python_reward(o.reward)
            self.fn = lambda ps, cs, samples: fn(ps, cs)

    def __call__(self, prompts: list[str], completions: list[str], samples: dict) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, ended_with_a_stop_token) of each sample."""
        rewards = np.asarray(self.fn(prompts, completions, samples), np.float64)
        last = samples["completion"][np.arange(len(rewards)), np.maximum(samples["lengths"] - 1, 0)]
        ended = (samples["lengths"] > 0) & np.isin(last, self.stop_ids)
        return rewards - self.penalty * (~ended), ended
