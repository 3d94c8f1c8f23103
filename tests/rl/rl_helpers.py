"""Shared by the online tests (`tests/rl`): the tiny online config, Python reward functions for
`online.reward=python:tests.rl.rl_helpers:<name>`, and fake rollouts.

The reward functions keep their state in files named by environment variables: `importlib` loads
this module by its dotted name, which need not be the module object a test imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from configs import grpo_tiny
from pjax.rl import algorithms
from pjax.rl.algorithms.pairwise import Pairwise
from tests.conftest import tiny


def online_config(tmp_path, sft, **online):
    """The tiny GRPO config from the SFT export, 2 iterations of 4 prompts x 4 samples in 2 minibatches."""
    cfg = tiny(grpo_tiny.get_config(), tmp_path / "online", sft.data.cache_dir, steps=2)
    cfg.init_from = str(Path(sft.workdir) / "export")
    cfg.online.prompts_per_iteration, cfg.online.samples_per_prompt, cfg.online.num_minibatches = 4, 4, 2
    cfg.generate.max_new_tokens = 8
    cfg.logging.tensorboard = False
    for key, value in online.items():
        cfg.online[key] = value
    return cfg


def use_algorithm(cfg, name):
    """`online.algorithm=name` with what its entry needs of the rest: a value head (ppo), a pairwise
    objective (online_dpo, xpo: DPO)."""
    algorithm = algorithms.get(name)
    cfg.online.algorithm = name
    cfg.model.value_head = algorithm.trains_value_head
    if isinstance(algorithm, Pairwise):
        cfg.loss.name = "dpo"
    return cfg


def count_words(prompts, completions):
    """A Python reward (`python:tests.rl.rl_helpers:count_words`): the completion's word count. Each call
    (one per iteration) is recorded as a JSON line in $PJAX_TEST_REWARD_LOG."""
    counts = [float(len(c.split())) for c in completions]
    with open(os.environ["PJAX_TEST_REWARD_LOG"], "a") as f:
        f.write(json.dumps({"prompts": list(prompts), "counts": counts}) + "\n")
    return counts


def bad_from_call(prompts, completions):
    """A Python reward (`python:tests.rl.rl_helpers:bad_from_call`) that breaks: the word count, until call
    $PJAX_TEST_BAD_FROM (0-based; one call per iteration, so iteration $PJAX_TEST_BAD_FROM + 1) and every
    later call, where the first sample's reward is $PJAX_TEST_BAD_REWARD (`nan`, or a huge number). Calls
    are counted as lines of $PJAX_TEST_REWARD_LOG."""
    log = Path(os.environ["PJAX_TEST_REWARD_LOG"])
    calls = len(log.read_text().splitlines()) if log.exists() else 0
    with open(log, "a") as f:
        f.write(f"{calls}\n")
    rewards = np.array([float(len(c.split())) for c in completions])
    if calls >= int(os.environ["PJAX_TEST_BAD_FROM"]):
        rewards[0] = float(os.environ["PJAX_TEST_BAD_REWARD"])
    return rewards


def fake_samples(completion_lengths, P=3, N=4, eos=1):
    """A fake rollout: prompts of P tokens, completions of N with the given lengths (EOS last)."""
    B = len(completion_lengths)
    completion = np.zeros((B, N), np.int32)
    logprobs = np.zeros((B, N), np.float32)
    valid = np.zeros((B, N), np.int32)
    for b, n in enumerate(completion_lengths):
        completion[b, :n], completion[b, n - 1], valid[b, :n] = 7, eos, 1
        logprobs[b, :n] = -0.1 * (b + 1) * np.arange(1, n + 1)
    prompt = np.full((B, P), 5, np.int32)
    return {"tokens": np.concatenate([prompt, completion], 1),
            "mask": np.concatenate([np.ones((B, P), np.int32), valid], 1),
            "completion_mask": np.concatenate([np.zeros((B, P), np.int32), valid], 1),
            "completion": completion, "logprobs": logprobs, "lengths": valid.sum(1)}
