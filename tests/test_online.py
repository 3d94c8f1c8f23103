"""The online phase (`pjax.online`): two iterations of each algorithm on the tiny model, sampling with
the current params at every iteration (step 0 included), rewards from the gold reward, a reward model or
a Python function."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from configs import grpo_tiny
from pjax import checkpoint, train
from tests.conftest import tiny

def count_words(prompts, completions):
    """A Python reward function (`online.reward=python:tests.test_online:count_words`); it records what it
    scored in $PJAX_TEST_REWARD_LOG (importlib may load this file as another module than pytest's)."""
    counts = [float(len(c.split())) for c in completions]
    with open(os.environ["PJAX_TEST_REWARD_LOG"], "a") as f:
        f.write(json.dumps({"prompts": list(prompts), "counts": counts}) + "\n")
    return counts


def online_config(tmp_path, sft, **online):
    cfg = tiny(grpo_tiny.get_config(), tmp_path / "online", sft.data.cache_dir, steps=2)
    cfg.init_from = str(Path(sft.workdir) / "export")
    cfg.online.prompts_per_iteration, cfg.online.samples_per_prompt, cfg.online.num_minibatches = 4, 4, 2
    cfg.generate.max_new_tokens = 8
    for key, value in online.items():
        cfg.online[key] = value
    return cfg


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory):
    """One SFT export for every test here (the online phases start from it)."""
    from configs import sft_tiny

    root = tmp_path_factory.mktemp("online")
    sft = tiny(sft_tiny.get_config(), root / "sft", root / "cache")
    train.run(sft)
    return sft


@pytest.mark.parametrize("algorithm,extra", [("ppo", {"kl_coef": 0.05, "kl_target": 1.0, "epochs": 2}),
                                             ("grpo", {"kl_coef": 0.05, "loss_aggregation": "dr_grpo"}),
                                             ("rloo", {}), ("online_dpo", {}), ("xpo", {"samples_per_prompt": 1, "xpo_alpha": 0.1}),
                                             ("raft", {"samples_per_prompt": 2}),
                                             ("nash_md", {"samples_per_prompt": 1, "kl_coef": 0.1, "mixture_coef": 0.5})])
def test_two_iterations_sample_with_the_current_params(sft_export, tmp_path, caplog, algorithm, extra):
    import logging

    caplog.set_level(logging.INFO, logger="pjax")
    cfg = online_config(tmp_path, sft_export, algorithm=algorithm, **extra)
    cfg.model.value_head = algorithm == "ppo"
    if algorithm == "ppo":  # a separate value model here; test_a_resumed_run_continues_exactly shares the backbone
        cfg.model.value_backbone = "separate"
    cfg.loss.name = "dpo"
    out = train.run(cfg)
    rows = out["history"]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    if algorithm == "ppo":  # the SFT export's backbone and LM head; the value model's backbone from it too
        assert "partial restore" in caplog.text and "fresh ['critic.value']" in caplog.text
        assert f"value model: backbone from {cfg.init_from}, fresh value head" in caplog.text
        assert {"value_loss", "val/clipfrac", "kl_coef"} <= set(rows[0])
        assert rows[1]["kl_coef"] != rows[0]["kl_coef"]  # adaptive: moved towards kl_target
    for r in rows:
        if algorithm not in ("online_dpo", "xpo"):
            # the first update of every iteration sees the params the samples were drawn with (ratio 1),
            # at step 0 too; the last follows an update
            assert r["sampling/logp_diff_first_update"] < 1e-4
            assert r["sampling/logp_diff_last_update"] > 1e-4
        for key in ("reward/mean", "reward/std", "kl", "entropy", "completions/mean_length",
                    "completions/clipped_ratio", "time/generation_s", "time/training_s"):
            assert key in r and np.isfinite(r[key]), key
    if algorithm == "xpo":
        assert "xpo/ref_sample_logp" in rows[0]
    if algorithm in ("xpo", "nash_md"):
        assert np.isfinite(rows[0]["reward/opponent_mean"])
    if algorithm == "nash_md":
        assert 0.0 < rows[0]["nash_md/preference"] < 1.0
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the SFT export is policy and reference at step 0
    meta = checkpoint.export_metadata(out["export"])
    assert meta["phase"] == "online" and meta["step"] == 2 and meta["online"]["algorithm"] == algorithm


def test_python_reward_function_and_missing_eos_penalty(sft_export, tmp_path, monkeypatch):
    monkeypatch.setenv("PJAX_TEST_REWARD_LOG", str(tmp_path / "rewards.jsonl"))
    cfg = online_config(tmp_path, sft_export, reward="python:tests.test_online:count_words",
                        missing_eos_penalty=100.0)
    cfg.generate.max_new_tokens = 2  # most completions hit the limit: penalised
    cfg.train.steps = 1
    out = train.run(cfg)
    row = out["history"][0]
    calls = [json.loads(line) for line in (tmp_path / "rewards.jsonl").read_text().splitlines()]
    assert len(calls) == 1 and len(calls[0]["counts"]) == 16  # every completion of the iteration, scored once
    assert all(p == q for p, q in zip(calls[0]["prompts"][::4], calls[0]["prompts"][1::4]))  # groups of 4
    clipped = row["completions/clipped_ratio"]
    assert clipped > 0
    assert row["reward/mean"] == pytest.approx(np.mean(calls[0]["counts"]) - 100.0 * clipped, abs=1e-5)
    with pytest.raises(ValueError, match="online.reward='python:nowhere:fn'"):
        cfg.online.reward, cfg.workdir = "python:nowhere:fn", str(tmp_path / "other")
        train.run(cfg)


@pytest.mark.parametrize("key,value,match", [
    ("algorithm", "ppo2", "online.algorithm='ppo2'"),
    ("samples_per_prompt", 1, "online.samples_per_prompt=1"),
    ("num_minibatches", 3, "online.num_minibatches=3 does not divide"),
    ("reward", "rm", "online.reward='rm' needs reward.models"),
    ("loss_aggregation", "mean", "online.loss_aggregation='mean'"),
    ("top_k", 5, "online.top_k=5"),
    ("kl_target", 2.0, "online.kl_target=2.0 adapts PPO's"),
    ("scale_rewards", "mad", "online.scale_rewards='mad'"),
    ("mixture_coef", 1.5, "online.mixture_coef=1.5"),
])
def test_bad_online_configs_name_the_key(tmp_path, key, value, match):
    cfg = grpo_tiny.get_config()
    cfg.online[key] = value
    with pytest.raises(ValueError, match=match):
        train.validate(cfg)


def test_a_resumed_run_continues_exactly(sft_export, tmp_path):
    """The iteration is the data position: 2 iterations, then 2 more from the checkpoint in the same
    workdir, give the rewards and losses of 4 in one go (same prompts, same sampling keys)."""
    def config(workdir, steps):
        cfg = online_config(tmp_path, sft_export, algorithm="ppo", kl_coef=0.05, kl_target=1.0)
        cfg.model.value_head = True
        cfg.workdir, cfg.train.steps, cfg.optim.schedule = str(workdir), steps, "constant"
        return cfg

    whole = train.run(config(tmp_path / "whole", 4))["history"]
    train.run(config(tmp_path / "split", 2))
    resumed = train.run(config(tmp_path / "split", 4))
    assert resumed["source"].startswith("checkpoint:")
    assert [r["step"] for r in resumed["history"]] == [3, 4]
    for a, b in zip(whole[2:], resumed["history"]):
        for key in ("reward/mean", "loss", "kl", "kl_coef", "value_loss"):
            assert a[key] == b[key], key


def _samples(completion_lengths, P=3, N=4, eos=1):
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


def test_rollout_batches_place_log_probs_and_pair_samples():
    """The sampler's log-probs sit where the training path predicts each completion token (index P+i-1);
    online_dpo pairs the best and worst of each group (a tie: chosen = rejected); xpo pairs each prompt's
    policy sample with its reference sample; raft weights the best of groups that do not all tie."""
    from pjax import online

    samples = _samples([2, 4, 3, 1])
    old = online.sampler_logps(samples)
    assert old.shape == (4, 6)
    np.testing.assert_array_equal(old[:, 2:], samples["logprobs"])  # P - 1 = 2
    assert not old[:, :2].any()

    cfg = grpo_tiny.get_config()
    ref = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    cfg.online.algorithm, cfg.online.samples_per_prompt = "online_dpo", 2
    pairs = online.rollout_batch(cfg, samples, np.array([0.5, 1.5, 2.0, 2.0]), ref)
    np.testing.assert_array_equal(pairs["tokens"][0], samples["tokens"][[1, 0]])  # group 0: row 1 beats row 0
    np.testing.assert_array_equal(pairs["tokens"][1], samples["tokens"][[2, 2]])  # group 1 ties
    np.testing.assert_array_equal(pairs["ref_logps"][0], ref[[1, 0]])

    cfg.online.algorithm, cfg.online.samples_per_prompt = "xpo", 1
    xpo = online.rollout_batch(cfg, samples, np.array([0.5, 1.5, 2.0, -1.0]), ref)  # rows 0-1 policy, 2-3 reference
    np.testing.assert_array_equal(xpo["tokens"][0], samples["tokens"][[2, 0]])  # prompt 0: the reference won
    np.testing.assert_array_equal(xpo["tokens"][1], samples["tokens"][[1, 3]])
    np.testing.assert_array_equal(xpo["xpo_tokens"], samples["tokens"][[2, 3]])

    cfg.online.algorithm, cfg.online.samples_per_prompt = "raft", 2
    raft = online.rollout_batch(cfg, samples, np.array([0.5, 1.5, 2.0, 2.0]), ref)
    np.testing.assert_array_equal(raft["weights"], [0, 1, 0, 0])

    cfg.online.algorithm, cfg.online.samples_per_prompt = "nash_md", 1
    nash = online.rollout_batch(cfg, samples, np.array([0.5, 1.5, 2.0, -1.0]), ref)  # rows 2-3: mixture samples
    np.testing.assert_array_equal(nash["tokens"], samples["tokens"][:2])
    np.testing.assert_array_equal(nash["ref_logps"], ref[:2])
    np.testing.assert_allclose(nash["preference"], 1 / (1 + np.exp(-np.array([0.5 - 2.0, 1.5 + 1.0]))), rtol=1e-6)


def test_separate_value_model_starts_from_value_from(sft_export, tmp_path):
    """`model.value_backbone='separate'`: the policy (backbone and LM head) comes from init_from, the value
    model's backbone from `online.value_from` (here a reward-model-shaped export), its value head fresh."""
    import jax

    from pjax import models, sharding

    cfg = online_config(tmp_path, sft_export, algorithm="ppo")
    cfg.model.value_head, cfg.model.value_backbone = True, "separate"
    rm_cfg = train.model_config(cfg)
    rm_def = models.build(type(rm_cfg)(**{**rm_cfg.__dict__, "head": "scalar", "value_head": False,
                                          "value_backbone": "shared"}))
    rm_params = jax.jit(rm_def.init)(jax.random.key(11))
    checkpoint.export_params(tmp_path / "rm_export", rm_params, {"phase": "rm", "model": rm_def.cfg.__dict__})
    cfg.online.value_from = str(tmp_path / "rm_export")
    train.validate(cfg)
    mesh = sharding.make_mesh(cfg.mesh.shape)
    with jax.set_mesh(mesh), sharding.use_rules(sharding.config_rules(cfg.sharding)):
        setup = train.make_setup(cfg, mesh)
        params = jax.device_get(train.backbone_with_fresh_head(setup, cfg.init_from))
        _, sft_params, _ = checkpoint.load_export(cfg.init_from, mesh, setup.rules)
        sft_params = jax.device_get(sft_params)
    for key in ("embed", "final_norm"):
        jax.tree.map(np.testing.assert_array_equal, params[key], sft_params[key])
        jax.tree.map(np.testing.assert_array_equal, params["critic"][key], jax.device_get(rm_params[key]))
    jax.tree.map(np.testing.assert_array_equal, params["critic"]["layers"], jax.device_get(rm_params["layers"]))
    assert params["critic"]["value"].shape == (cfg.model.d_model,)
    cfg.model.value_backbone = "shared"
    with pytest.raises(ValueError, match="online.value_from="):
        train.validate(cfg)


def test_two_processes_roll_out_and_train_like_one(tmp_path):
    """Multi-host rollouts: two processes of 4 CPU devices run Nash-MD (policy samples, geometric-mixture
    samples of policy and reference, reference log-probs: each on the training mesh, the prompts placed
    from every host's own rows) and log the rewards and losses that one process of 8 devices logs."""
    from tests.procs import metric_rows, multi_process, spawn, tiny_flags, train_command, wait_all

    flags = lambda workdir, **kw: tiny_flags(  # noqa: E731
        workdir, tmp_path / "cache", 2, init_from="", online__algorithm="nash_md", online__kl_coef=0.1,
        online__prompts_per_iteration=4, online__samples_per_prompt=4, online__num_minibatches=2,
        generate__max_new_tokens=8, **kw)
    from pjax.data.tasks import synthetic

    synthetic.load_or_train_tokenizer(synthetic.SyntheticConfig(cache_dir=str(tmp_path / "cache")))  # once, for all
    one_log = tmp_path / "one.log"  # the one-process run trains beside the two-process one
    single = spawn(train_command("grpo_tiny.py", flags(tmp_path / "one", distributed__cpu_devices=8,
                                                       logging__tensorboard=False)), one_log)
    logs = [tmp_path / f"two_{i}.log" for i in range(2)]
    try:
        wait_all(multi_process("grpo_tiny.py", flags(tmp_path / "two"), logs, 4), logs)
        assert single.wait(300) == 0, one_log.read_text()[-3000:]
    finally:
        single.kill()
    one, two = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for key in ("reward/mean", "reward/opponent_mean", "kl", "loss", "nash_md/preference"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-4, atol=1e-5, err_msg=key)
    assert (tmp_path / "two" / "export" / "pjax.json").exists()
