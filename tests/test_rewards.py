"""Rewards from reward-model exports: every head standardised with its recorded statistics, then
aggregated (mean, worst case, uncertainty-weighted) over an ensemble of heads and of exports."""

import jax
import numpy as np
import pytest

import pjax
from configs.base import get_config
from pjax import checkpoint, models
from pjax.rewards import RewardModel



def _export(path, heads, seed, stats=True):
    import dataclasses

    cfg = models.preset("tiny", vocab_size=64, head="scalar", reward_heads=heads)
    model_def = models.build(cfg)
    params = model_def.init(jax.random.key(seed))
    meta = {"phase": "rm", "step": 1, "model": dataclasses.asdict(cfg)}
    if stats:
        meta["reward_stats"] = {"mean": [0.3 * (i + seed) for i in range(heads)],
                                "std": [1.0 + 0.5 * i for i in range(heads)], "rows": 1, "count": 2}
    checkpoint.export_params(path, params, meta)
    return model_def, params, meta


@pytest.mark.parametrize("aggregate", ["mean", "min", "uwo"])
def test_ensemble_of_exports_and_heads(tmp_path, aggregate):
    a = _export(tmp_path / "a", heads=1, seed=0)
    b = _export(tmp_path / "b", heads=3, seed=1)
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 64, (5, 9)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :3] = 0  # left padding
    mask[2, 6:] = 0  # right padding
    with pjax.on_mesh(get_config()) as (mesh, rules):
        rm = RewardModel.load([str(tmp_path / "a"), str(tmp_path / "b")], mesh, rules, aggregate=aggregate,
                              uwo_lambda=0.7, batch_size=2)  # 5 rows in batches of 2: the last one wraps
        got = rm(tokens, mask)
    columns = []
    for model_def, params, meta in (a, b):
        raw = np.asarray(models.sequence_rewards(model_def, params, tokens, mask), np.float64).reshape(5, -1)
        stats = meta["reward_stats"]
        columns.append((raw - np.array(stats["mean"])) / np.array(stats["std"]))
    heads = np.concatenate(columns, axis=1)
    assert rm.num_heads == heads.shape[1] == 4
    want = {"mean": heads.mean(1), "min": heads.min(1), "uwo": heads.mean(1) - 0.7 * heads.var(1)}[aggregate]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reward_model_errors_name_the_problem(tmp_path):
    _export(tmp_path / "raw", heads=1, seed=0, stats=False)
    with pjax.on_mesh(get_config()) as (mesh, rules):
        with pytest.raises(ValueError, match="records no reward statistics.*reward.normalize=False"):
            RewardModel.load([str(tmp_path / "raw")], mesh, rules)
        with pytest.raises(FileNotFoundError, match=r"reward.models\[0\]=.*missing"):
            RewardModel.load([str(tmp_path / "missing")], mesh, rules)
        with pytest.raises(ValueError, match="reward.aggregate='max'"):
            RewardModel.load([str(tmp_path / "raw")], mesh, rules, normalize=False, aggregate="max")
        rm = RewardModel.load([str(tmp_path / "raw")], mesh, rules, normalize=False)
        with pytest.raises(ValueError, match="token id 70 is outside the reward model's vocabulary"):
            rm(np.array([[3, 70]]), np.array([[1, 1]]))
