"""Evaluation figures, and the demo pipeline on a few steps."""

import jax
import numpy as np
import pytest

from pjax import eval as evaluation
from pjax import models
from pjax.models.heads import naive_token_logprobs


def test_mean_stderr():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    m, se = evaluation.mean_stderr(x)
    assert m == pytest.approx(3.5)
    assert se == pytest.approx(np.std(x, ddof=1) / 2.0)


def _naive_seq_logps(model_def, params, tokens, mask, completion_mask):
    model = model_def.module(params)
    T = tokens.shape[-1]
    tok, msk = tokens.reshape(-1, T), mask.reshape(-1, T)
    hidden, _ = model(tok[:, :-1], models.positions_from_mask(msk)[:, :-1], msk[:, :-1])
    lp = np.asarray(naive_token_logprobs(hidden, model.head_kernel(), tok[:, 1:]), np.float64)
    return (lp * completion_mask.reshape(-1, T)[:, 1:]).sum(-1).reshape(tokens.shape[:-1])


def test_implicit_reward_accuracy_against_full_logits():
    model_def = models.build(models.preset("tiny", vocab_size=64))
    policy = model_def.init(jax.random.key(0))
    reference = model_def.init(jax.random.key(1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 64, (10, 2, 12)).astype(np.int32)
    mask = np.ones_like(tokens)
    completion_mask = np.zeros_like(tokens)
    completion_mask[..., 6:] = 1
    pairs = {"tokens": tokens, "mask": mask, "completion_mask": completion_mask}
    rho = (_naive_seq_logps(model_def, policy, tokens, mask, completion_mask)
           - _naive_seq_logps(model_def, reference, tokens, mask, completion_mask))
    expected = float((rho[:, 0] > rho[:, 1]).mean())
    assert evaluation.implicit_reward_accuracy(model_def, policy, reference, pairs, batch_size=4) == expected
    assert evaluation.implicit_reward_accuracy(model_def, policy, policy, pairs) == 0.0  # ties never count


def test_demo_pipeline_and_table(tmp_path):
    from pjax import demo, train

    small = {"data.cache_dir": str(tmp_path / "cache"), "data.num_sft": 256, "data.num_pairs": 256,
             "data.num_heldout_prompts": 24, "data.num_heldout_pairs": 24, "train.steps": 4,
             "train.batch_size": 8, "train.progress": False, "optim.warmup_steps": 1,
             "generate.max_new_tokens": 8}
    sft, dpo = demo.phase_configs(tmp_path / "demo", small)
    assert dpo.init_from == str(tmp_path / "demo" / "sft" / "export")
    train.run(sft)
    train.run(dpo)
    result = demo.evaluate(dpo)
    pol, ref = result["policy"], result["reference"]
    assert 0.0 <= pol["win_rate_vs_reference"][0] <= 1.0
    assert 0.0 <= pol["implicit_reward_accuracy"] <= 1.0
    assert np.isfinite(pol["kl_to_reference"]).all() and np.isfinite(ref["gold_reward"]).all()
    table = demo.format_table(result)
    for row in ("gold reward of samples", "win rate vs SFT", "implicit-reward accuracy", "KL to SFT", "sample 2"):
        assert row in table

    # the DPO export compared with itself: identical samples, zero KL, a 0.5 win rate
    dpo.init_from = dpo.workdir + "/export"
    same = demo.evaluate(dpo)
    assert same["policy"]["kl_to_reference"][0] == 0.0
    assert same["policy"]["win_rate_vs_reference"][0] == 0.5
    assert same["policy"]["gold_reward"] == same["reference"]["gold_reward"]
