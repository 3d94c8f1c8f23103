"""Every registered online algorithm learns: a few iterations on the synthetic task's gold reward, from
the tiny SFT export, raise the gold reward of the policy's samples on held-out prompts (prompts no
training row has), by much more than the noise of the measurement."""

import time

import numpy as np
import pytest

import pjax
from pjax.data import tasks
from pjax.rl import algorithms
from tests.rl.rl_helpers import online_config, use_algorithm

# The settings of each algorithm's run (the rest: 8 iterations of 16 prompts x 4 samples, one optimizer
# step each at lr 1e-3). xpo and nash_md draw one policy sample per prompt (plus an opponent's): twice
# the prompts, a larger step. An algorithm not named here runs with the defaults.
DEFAULTS = {"steps": 8, "lr": 1e-3, "prompts_per_iteration": 16, "samples_per_prompt": 4}
SETTINGS = {"xpo": {"prompts_per_iteration": 32, "samples_per_prompt": 1, "lr": 2e-3},
            "nash_md": {"prompts_per_iteration": 32, "samples_per_prompt": 1, "lr": 2e-3}}
HELDOUT_PROMPTS, SAMPLES_PER_PROMPT, MAX_NEW_TOKENS = 64, 8, 8
MIN_GAIN, MIN_Z = 0.3, 4.0  # gold reward: base completions score about 0 +- 1.1, the cap is 3


@pytest.fixture(scope="module")
def heldout(sft_export):
    """(held-out prompts, the gold reward, the SFT policy's per-prompt mean gold reward)."""
    cfg = sft_export.copy_and_resolve_references()
    cfg.data.num_heldout_prompts = HELDOUT_PROMPTS
    task = tasks.build_task(cfg)
    prompts = task.heldout_prompts
    assert len(set(prompts)) == HELDOUT_PROMPTS and not set(prompts) & {p for p, _ in task.sft}
    return prompts, task.gold_reward, gold_per_prompt(f"{sft_export.workdir}/export", prompts, task.gold_reward)


def gold_per_prompt(export, prompts, gold) -> np.ndarray:
    """The mean gold reward of each prompt's samples (temperature 1, the training's completion length)."""
    completions = pjax.load_export(export).sample(prompts, n=SAMPLES_PER_PROMPT, max_new_tokens=MAX_NEW_TOKENS,
                                                  seed=1234)
    return np.array([np.mean([gold(c) for c in cs]) for cs in completions])


@pytest.mark.parametrize("name", sorted(algorithms.REGISTRY))
def test_a_few_iterations_raise_the_gold_reward(sft_export, heldout, tmp_path, name):
    prompts, gold, before = heldout
    settings = {**DEFAULTS, **SETTINGS.get(name, {})}
    cfg = use_algorithm(online_config(tmp_path, sft_export), name)
    cfg.train.steps, cfg.optim.lr, cfg.optim.schedule = settings.pop("steps"), settings.pop("lr"), "constant"
    cfg.train.save_every, cfg.train.log_every = cfg.train.steps, cfg.train.steps
    cfg.online.num_minibatches = 1
    for key, value in settings.items():
        cfg.online[key] = value
    t0 = time.perf_counter()
    out = pjax.train(cfg)
    t1 = time.perf_counter()
    after = gold_per_prompt(out["export"], prompts, gold)
    gain = after - before  # paired by prompt
    mean, se = gain.mean(), gain.std(ddof=1) / np.sqrt(len(gain))
    print(f"\n{name}: gold reward {before.mean():.3f} -> {after.mean():.3f} (gain {mean:.3f} +- {se:.3f} over "
          f"{len(gain)} held-out prompts x {SAMPLES_PER_PROMPT}); train {t1 - t0:.1f}s, "
          f"eval {time.perf_counter() - t1:.1f}s")
    assert mean > MIN_GAIN and mean > MIN_Z * se, (name, mean, se)
