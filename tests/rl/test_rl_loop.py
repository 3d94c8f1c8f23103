"""The online phase (`pjax.rl.loop` through the frame `pjax.core.loop.run_loop`): iterations of each
algorithm on the tiny model from the tiny SFT export, sampling with the current params at every
iteration (the first included), rewards from the gold reward or a Python function; checkpoints
numbered by iteration, resumed exactly; a non-finite update stops the run before anything is saved."""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import pjax
from pjax import checkpoint, models
from pjax.core import init
from pjax.models.config import model_config
from pjax.rl import algorithms, config as rl_config
from pjax.rl.algorithms.pairwise import Pairwise
from tests.rl.rl_helpers import online_config, use_algorithm

# per-algorithm settings of the two-iteration runs (an algorithm not named here runs with the defaults)
EXTRA = {"ppo": {"kl_coef": 0.05, "kl_target": 1.0, "epochs": 2},
         "grpo": {"kl_coef": 0.05, "loss_aggregation": "dr_grpo"},
         "xpo": {"samples_per_prompt": 1, "xpo_alpha": 0.1},
         "raft": {"samples_per_prompt": 2},
         "nash_md": {"samples_per_prompt": 1, "kl_coef": 0.1, "mixture_coef": 0.5}}


def checkpoint_dirs(workdir) -> set[str]:
    return {p.name for p in (Path(workdir) / "checkpoints").iterdir() if p.is_dir()}


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", sorted(algorithms.REGISTRY))
def test_two_iterations_sample_with_the_current_params(sft_export, tmp_path, name):
    algorithm = algorithms.get(name)
    cfg = use_algorithm(online_config(tmp_path, sft_export, **EXTRA.get(name, {})), name)
    if algorithm.trains_value_head:  # a separate value model here; the resume test shares the backbone
        cfg.model.value_backbone = "separate"
    out = pjax.train(cfg)
    rows = out["history"]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert out["source"] == f"export:{cfg.init_from}"
    if algorithm.trains_value_head:
        assert {"value_loss", "val/clipfrac", "kl_coef"} <= set(rows[0])
        assert rows[1]["kl_coef"] != rows[0]["kl_coef"]  # adaptive: moved towards kl_target
    for r in rows:
        if not isinstance(algorithm, Pairwise):
            # the first update of every iteration sees the params the samples were drawn with (ratio 1),
            # at the first iteration too; the last follows an update
            assert r["sampling/logp_diff_first_update"] < 1e-4
            assert r["sampling/logp_diff_last_update"] > 1e-4
        for key in ("reward/mean", "reward/std", "kl", "entropy", "completions/mean_length",
                    "completions/clipped_ratio", "time/generation_s", "time/training_s"):
            assert key in r and np.isfinite(r[key]), key
    if name == "xpo":
        assert np.isfinite(rows[0]["xpo/ref_sample_logp"])
    if algorithm.opponent is not None:
        assert np.isfinite(rows[0]["reward/opponent_mean"])
    if name == "nash_md":
        assert 0.0 < rows[0]["nash_md/preference"] < 1.0
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the SFT export is policy and reference at first
    meta = checkpoint.export_metadata(out["export"])
    assert meta["phase"] == "online" and meta["step"] == 2 and meta["online"]["algorithm"] == name
    assert checkpoint_dirs(cfg.workdir) == {"2"}  # numbered by iteration, whatever the optimizer steps

    if algorithm.trains_value_head:
        # a partial restore: the policy and the separate value model's backbone from the SFT export, the
        # value head fresh. A few small optimizer steps later (|update| ~ lr each) each is still far closer
        # to where it started than to another initialisation (the norms start at 1 either way: not compared)
        sft = jax.device_get(pjax.load_export(cfg.init_from).params)
        with pjax.Run(cfg) as run:
            fresh, other = (jax.device_get(run.init(seed)["params"]) for seed in (cfg.seed, cfg.seed + 1))
        final = jax.device_get(out["params"])
        assert set(final) == set(sft) | {"critic"}
        for key in ("embed", "layers"):
            assert max_diff(final[key], sft[key]) < 0.2 * max_diff(other[key], sft[key]), key
            assert max_diff(final["critic"][key], sft[key]) < 0.2 * max_diff(fresh["critic"][key], sft[key]), key
        value = final["critic"]["value"]
        assert max_diff(value, fresh["critic"]["value"]) < 0.2 * max_diff(other["critic"]["value"],
                                                                          fresh["critic"]["value"])


def test_python_reward_function_and_missing_eos_penalty(sft_export, tmp_path, monkeypatch):
    monkeypatch.setenv("PJAX_TEST_REWARD_LOG", str(tmp_path / "rewards.jsonl"))
    cfg = online_config(tmp_path, sft_export, reward="python:tests.rl.rl_helpers:count_words",
                        missing_eos_penalty=100.0)
    cfg.generate.max_new_tokens = 2  # most completions hit the limit: penalised
    cfg.train.steps = 1
    out = pjax.train(cfg)
    row = out["history"][0]
    calls = [json.loads(line) for line in (tmp_path / "rewards.jsonl").read_text().splitlines()]
    assert len(calls) == 1 and len(calls[0]["counts"]) == 16  # every completion of the iteration, scored once
    assert all(p == q for p, q in zip(calls[0]["prompts"][::4], calls[0]["prompts"][1::4]))  # groups of 4
    assert len(set(calls[0]["prompts"])) == 4
    clipped = row["completions/clipped_ratio"]
    assert clipped > 0
    assert row["reward/mean"] == pytest.approx(np.mean(calls[0]["counts"]) - 100.0 * clipped, abs=1e-5)
    cfg.online.reward, cfg.workdir = "python:nowhere:fn", str(tmp_path / "other")
    with pytest.raises(ValueError, match="online.reward='python:nowhere:fn'"):
        pjax.train(cfg)


def test_a_resumed_run_continues_exactly(sft_export, tmp_path):
    """The iteration is the data position: 2 iterations, then 2 more from the checkpoint in the same
    workdir, give the rewards and losses of 4 in one go (same prompts, same sampling keys, same carried
    KL coefficient)."""
    def config(workdir, steps):
        cfg = online_config(tmp_path, sft_export, algorithm="ppo", kl_coef=0.05, kl_target=1.0)
        cfg.model.value_head = True
        cfg.workdir, cfg.train.steps, cfg.optim.schedule = str(workdir), steps, "constant"
        cfg.train.log_every = 1  # every iteration's row
        return cfg

    whole = pjax.train(config(tmp_path / "whole", 4))["history"]
    pjax.train(config(tmp_path / "split", 2))
    assert checkpoint_dirs(tmp_path / "split") == {"2"}
    resumed = pjax.train(config(tmp_path / "split", 4))
    assert resumed["source"] == "checkpoint:2"
    assert [r["step"] for r in resumed["history"]] == [3, 4]
    for a, b in zip(whole[2:], resumed["history"]):
        for key in ("reward/mean", "loss", "kl", "kl_coef", "value_loss"):
            assert a[key] == b[key], key
    assert whole[2]["kl_coef"] != whole[0]["kl_coef"]  # the carried coefficient is not the initial one


def test_a_finished_online_phase_run_again_keeps_its_export(sft_export, tmp_path):
    """The frame's rule for every phase: run again after it finished, nothing is trained or re-exported."""
    cfg = online_config(tmp_path, sft_export)
    first = pjax.train(cfg)
    meta = checkpoint.export_metadata(first["export"])
    summary = (Path(cfg.workdir) / "online_summary.json").read_text()
    again = pjax.train(cfg)
    assert (Path(cfg.workdir) / "online_summary.json").read_text() == summary == json.dumps(first["history"][-1],
                                                                                              indent=2)
    assert again["history"] == [] and again["source"] == "checkpoint:2"
    assert checkpoint.export_metadata(again["export"]) == meta  # the same export_id: not written again


def test_separate_value_model_starts_from_value_from(sft_export, tmp_path):
    """`model.value_backbone='separate'`: the policy (backbone and LM head) comes from init_from, the value
    model's backbone from `online.value_from` (here a reward-model-shaped export), its value head fresh."""
    cfg = online_config(tmp_path, sft_export, algorithm="ppo")
    cfg.model.value_head, cfg.model.value_backbone = True, "separate"
    rm_cfg = model_config(cfg)
    rm_def = models.build(type(rm_cfg)(**{**rm_cfg.__dict__, "head": "scalar", "value_head": False,
                                          "value_backbone": "shared"}))
    rm_params = jax.device_get(jax.jit(rm_def.init)(jax.random.key(11)))
    checkpoint.export_params(tmp_path / "rm_export", rm_params, {"phase": "rm", "model": rm_def.cfg.__dict__})
    cfg.online.value_from = str(tmp_path / "rm_export")
    with pjax.Run(cfg) as run:
        params = jax.device_get(init.backbone_with_fresh_head(run.setup, cfg.init_from, cfg.online.value_from))
        fresh = jax.device_get(run.init()["params"])
    sft_params = jax.device_get(pjax.load_export(cfg.init_from).params)
    assert set(params) == set(sft_params) | {"critic"}
    for key in sft_params:  # embeddings, layers, final norm (and an untied LM head)
        jax.tree.map(np.testing.assert_array_equal, params[key], sft_params[key])
    for key in ("embed", "final_norm", "layers"):
        jax.tree.map(np.testing.assert_array_equal, params["critic"][key], rm_params[key])
    assert params["critic"]["value"].shape == (cfg.model.d_model,)
    np.testing.assert_array_equal(params["critic"]["value"], fresh["critic"]["value"])
    cfg.model.value_backbone = "shared"
    with pytest.raises(ValueError, match="online.value_from="):
        pjax.validate(cfg)


def broken_reward(monkeypatch, tmp_path, value: str, from_call: int) -> str:
    monkeypatch.setenv("PJAX_TEST_REWARD_LOG", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("PJAX_TEST_BAD_FROM", str(from_call))
    monkeypatch.setenv("PJAX_TEST_BAD_REWARD", value)
    return "python:tests.rl.rl_helpers:bad_from_call"


def assert_finite_checkpoints(cfg, iterations: list[int]) -> None:
    """<workdir>/checkpoints holds exactly `iterations`, each restoring finite params at its iteration."""
    workdir, steps_per_iteration = Path(cfg.workdir), rl_config.updates_per_iteration(cfg)
    assert checkpoint_dirs(workdir) == {str(i) for i in iterations}
    ckpts = checkpoint.PhaseCheckpoints(workdir, keep=10, async_save=False)
    try:
        assert ckpts.all_steps() == iterations
        with pjax.Run(cfg) as run:
            for it in iterations:
                state, position = ckpts.restore(it, run.setup.abstract_state)
                params = jax.device_get(state["params"])
                assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)), it
                assert position["iteration"] == it and int(jax.device_get(state["step"])) == steps_per_iteration * it
            assert int(jax.device_get(run.restore()["step"])) == steps_per_iteration * iterations[-1]  # the newest
    finally:
        ckpts.close()


def test_a_nonfinite_gradient_saves_nothing_nonfinite(sft_export, tmp_path, monkeypatch):
    """From iteration 4 on, one sample's reward is 1e30 (finite: a reward scale gone wrong): RLOO's
    advantages, unnormalised, make that iteration's gradient overflow. The run stops with a
    FloatingPointError naming the non-finite figures before saving or exporting anything; the
    checkpoints of iterations 1-3 (one per iteration) are all it leaves, each of them finite."""
    reward = broken_reward(monkeypatch, tmp_path, "1e30", 3)  # calls 0, 1, 2 (iterations 1-3) are sane
    cfg = online_config(tmp_path, sft_export, algorithm="rloo", reward=reward)
    cfg.train.steps, cfg.train.save_every, cfg.train.keep_checkpoints, cfg.train.log_every = 6, 1, 10, 3
    with pytest.raises(FloatingPointError) as raised:
        pjax.train(cfg)
    message = str(raised.value)
    found = re.match(r"non-finite (.*) at iteration 4 \(optimizer step (\d+)\): stopped without saving\. "
                     r"Last good checkpoint: iteration 3 in (\S+) ", message)
    assert found, message
    names, step = found.group(1).split(", "), int(found.group(2))
    assert "grad_norm" in names, names
    assert step in (7, 8)  # iteration 4's first or second minibatch, whichever holds the sample
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 4  # no iteration after the bad one
    assert not (Path(cfg.workdir) / "export").exists()
    assert_finite_checkpoints(cfg, [1, 2, 3])


def test_a_nonfinite_reward_stops_the_run_naming_the_reward(sft_export, tmp_path, monkeypatch):
    """A NaN reward stops the run at its iteration, naming online.reward, before anything is saved, whatever
    the algorithm (online_dpo, which would otherwise drop the NaN sample's group without a word)."""
    reward = broken_reward(monkeypatch, tmp_path, "nan", 1)  # iteration 2
    cfg = online_config(tmp_path, sft_export, algorithm="online_dpo", reward=reward)
    cfg.loss.name = "dpo"
    cfg.train.steps, cfg.train.save_every, cfg.train.log_every = 4, 1, 1
    message = f"online.reward='{reward}' gave 1 of the 16 samples of iteration 2 a non-finite reward"
    with pytest.raises(FloatingPointError, match=re.escape(message)):
        pjax.train(cfg)
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 2
    assert not (Path(cfg.workdir) / "export").exists()
    assert_finite_checkpoints(cfg, [1])


def test_keep_every_keeps_every_kth_iteration(sft_export, tmp_path):
    """`train.keep_every` counts iterations online (here 2 optimizer steps each): saving every iteration,
    keeping the latest one plus every 2nd leaves iterations 2, 4 and 6; resuming from iteration 4's
    checkpoint repeats iterations 5 and 6 exactly."""
    cfg = online_config(tmp_path, sft_export)
    cfg.train.steps, cfg.train.save_every, cfg.train.keep_checkpoints, cfg.train.keep_every = 6, 1, 1, 2
    cfg.train.log_every = 1
    assert cfg.online.num_minibatches * cfg.online.epochs == 2
    first = pjax.train(cfg)["history"]
    workdir = Path(cfg.workdir)
    assert checkpoint_dirs(workdir) == {"2", "4", "6"}
    shutil.rmtree(workdir / "checkpoints" / "6")
    resumed = pjax.train(cfg)
    assert resumed["source"] == "checkpoint:4"
    assert [r["step"] for r in resumed["history"]] == [5, 6]
    for a, b in zip(first[4:], resumed["history"]):
        for key in ("reward/mean", "loss", "kl", "grad_norm"):
            assert a[key] == b[key], key
    assert checkpoint_dirs(workdir) == {"2", "4", "6"}
    assert checkpoint.export_metadata(resumed["export"])["step"] == 6
