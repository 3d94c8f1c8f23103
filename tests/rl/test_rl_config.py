"""Start-up checks of the `online` section (`pjax.rl.config`, through `pjax.validate`): each bad value
fails before anything runs, naming its key."""

import pytest

import pjax
from configs import grpo_tiny
from pjax.rl import algorithms, config as rl_config


@pytest.mark.parametrize("settings,match", [
    ({"online.algorithm": "ppo2"}, r"online.algorithm='ppo2': expected one of \('grpo'"),
    ({"online.samples_per_prompt": 1}, "online.samples_per_prompt=1: grpo compares"),
    ({"online.num_minibatches": 3}, "online.num_minibatches=3 does not divide"),
    ({"online.reward": "rm"}, "online.reward='rm' needs reward.models"),
    ({"online.reward": "judge"}, "online.reward='judge': expected"),
    ({"online.loss_aggregation": "mean"}, "online.loss_aggregation='mean'"),
    ({"online.top_k": 5}, "online.top_k=5"),
    ({"online.kl_target": 2.0}, "online.kl_target=2.0 adapts PPO's"),
    ({"online.scale_rewards": "mad"}, "online.scale_rewards='mad'"),
    ({"online.mixture_coef": 1.5}, "online.mixture_coef=1.5"),
    ({"online.temperature": 0.0}, "online.temperature=0.0 must be positive"),
    ({"online.epochs": 0}, "online.epochs=0 must be positive"),
    ({"online.kl_estimator": "k4"}, "online.kl_estimator='k4'"),
    ({"online.value_from": "/nowhere/export"}, "online.value_from='/nowhere/export': no such export"),
    ({"train.grad_accum": 2}, "train.grad_accum: online phases split"),
    ({"data.layout": "packed"}, "data.layout='packed' applies to the offline sft and dpo phases"),
    ({"model.value_head": True}, "model.value_head=True: only ppo trains a value head"),
    ({"online.algorithm": "ppo"}, "online.algorithm='ppo' needs a value head"),
    ({"online.algorithm": "online_dpo", "loss.name": "dpo", "online.kl_coef": 0.1}, "online.kl_coef=0.1: online_dpo"),
    ({"online.algorithm": "online_dpo", "loss.name": "sft"}, "online.algorithm='online_dpo' trains a pairwise"),
    ({"online.algorithm": "xpo", "loss.name": "dpo"}, "online.samples_per_prompt=4: xpo pairs one policy"),
    ({"online.algorithm": "nash_md", "online.epochs": 2}, "online.epochs=2: nash_md is REINFORCE"),
    ({"online.algorithm": "online_dpo", "loss.name": "dpo", "online.prompts_per_iteration": 4,
      "online.samples_per_prompt": 6, "online.num_minibatches": 8},
     "online.num_minibatches=8 does not divide the 4 pairs"),
])
def test_bad_online_configs_name_the_key(settings, match):
    cfg = grpo_tiny.get_config()
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        pjax.validate(cfg)


def test_the_tiny_config_validates_and_counts_its_steps():
    """The config the other tests start from is valid; an iteration is epochs x num_minibatches optimizer
    steps of (pairs or samples) / num_minibatches rows."""
    cfg = grpo_tiny.get_config()
    pjax.validate(cfg)
    cfg.online.epochs, cfg.online.num_minibatches = 3, 2
    assert rl_config.updates_per_iteration(cfg) == 6
    assert rl_config.step_rows(cfg)[0] == 16 * 4 // 2
    cfg.online.algorithm, cfg.loss.name = "online_dpo", "dpo"
    assert rl_config.step_rows(cfg)[0] == 16 // 2  # one pair per prompt
    assert {"ppo", "grpo", "rloo", "online_dpo", "xpo", "raft", "nash_md"} <= set(algorithms.REGISTRY)


def test_a_saved_python_reward_is_not_imported_unless_the_user_says_so(tmp_path, monkeypatch):
    """A workdir's config.json may be someone else's: its `python:` reward is refused (naming the module
    and the two ways to allow it) instead of imported; restating it on the command line, or the
    environment flag, allows it."""
    from pjax import config_io

    cfg = grpo_tiny.get_config()
    cfg.online.reward = "python:tests.rl.rl_helpers:count_words"
    config_io.save_run_config(tmp_path, cfg)
    monkeypatch.delenv(config_io.ALLOW_SAVED_PYTHON, raising=False)
    with pytest.raises(ValueError, match=r"online.reward='python:tests.rl.rl_helpers:count_words' comes from a "
                                         r"saved config.json.*PJAX_ALLOW_SAVED_PYTHON_REWARD=1"):
        pjax.config(str(tmp_path))
    pjax.validate(pjax.config(str(tmp_path), online__reward="python:tests.rl.rl_helpers:count_words"))
    monkeypatch.setenv(config_io.ALLOW_SAVED_PYTHON, "1")
    assert pjax.config(str(tmp_path)).online.reward == "python:tests.rl.rl_helpers:count_words"
