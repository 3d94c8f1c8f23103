"""Reward-model objectives against NumPy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from pjax import losses
from pjax.losses import LossInputs
from pjax.losses.reward import AGGREGATIONS, aggregate_rewards
from tests.losses.numeric import fd_grad


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("eps,center", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.01), (0.2, 0.5)])
def test_bradley_terry_matches_numpy(eps, center):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(16, 2)).astype(np.float64) * 2
    cfg = get_config().loss
    cfg.label_smoothing, cfg.center_rewards_coefficient = eps, center
    loss, metrics = losses.get("bradley_terry").fn(LossInputs(rewards=jnp.asarray(rewards, jnp.float32)), cfg)
    d = rewards[:, 0] - rewards[:, 1]
    expected = np.mean(-(1 - eps) * _np_log_sigmoid(d) - eps * _np_log_sigmoid(-d))
    expected += center * np.mean((rewards[:, 0] + rewards[:, 1]) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(d > 0))
    np.testing.assert_allclose(float(metrics["margin"]), d.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["reward/min"]), rewards.min(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward/max"]), rewards.max(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward/mean"]), rewards.mean(), rtol=1e-5, atol=1e-7)


def test_reward_objectives_do_not_mix_with_policy_objectives():
    cfg = get_config().loss
    cfg.names = ("bradley_terry", "sigmoid")
    with pytest.raises(ValueError, match="mixes reward-model and policy objectives"):
        losses.terms(cfg)


# ------------------------------------------------------------------------------------------------ BT with margins


@pytest.mark.parametrize("eps,center", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.01), (0.2, 0.5)])
def test_bradley_terry_with_margins_matches_numpy(eps, center):
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(16, 2)) * 2
    m = rng.uniform(0.0, 3.0, size=16)
    cfg = get_config().loss
    cfg.label_smoothing, cfg.center_rewards_coefficient = eps, center
    inputs = LossInputs(rewards=jnp.asarray(rewards, jnp.float32), margins=jnp.asarray(m, jnp.float32))
    loss, metrics = losses.get("bradley_terry").fn(inputs, cfg)
    # smoothing on the shifted logit: P(chosen wins) = sigma(r_c - r_r - m), label 1 - eps
    p = 1.0 / (1.0 + np.exp(-(rewards[:, 0] - rewards[:, 1] - m)))
    expected = np.mean(-(1 - eps) * np.log(p) - eps * np.log1p(-p))
    expected += center * np.mean((rewards[:, 0] + rewards[:, 1]) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    d = rewards[:, 0] - rewards[:, 1]  # the metrics read the rewards without the margin
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(d > 0))
    np.testing.assert_allclose(float(metrics["margin"]), d.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), rewards[:, 0].mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics["rewards/rejected"]), rewards[:, 1].mean(), rtol=1e-5, atol=1e-7)


def test_bradley_terry_zero_margins_equal_no_margins():
    rewards = jnp.asarray(np.random.default_rng(2).normal(size=(8, 2)), jnp.float32)
    cfg = get_config().loss
    cfg.label_smoothing = 0.1
    fn = losses.get("bradley_terry").fn
    plain, _ = fn(LossInputs(rewards=rewards), cfg)
    zero, _ = fn(LossInputs(rewards=rewards, margins=jnp.zeros(8)), cfg)
    assert float(plain) == float(zero)


def test_bradley_terry_margins_shape_is_checked():
    cfg = get_config().loss
    with pytest.raises(AssertionError):
        losses.get("bradley_terry").fn(LossInputs(rewards=jnp.zeros((4, 2)), margins=jnp.zeros((4, 1))), cfg)


# ------------------------------------------------------------------------------------------------ Plackett-Luce


def _np_pl_nll(rewards, scores):
    """-log P(ranking) per list via the product formula, ranking = scores descending, ties by index."""
    out = []
    for r, s in zip(rewards, scores):
        ranking = sorted(range(len(s)), key=lambda i: (-s[i], i))
        logp = 0.0
        for k in range(len(ranking)):
            rest = ranking[k:]
            logp += np.log(np.exp(r[ranking[k]]) / np.sum(np.exp(r[rest])))
        out.append(-logp)
    return np.mean(out)


def _pl_data(seed, B, K, ties):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(B, K)) * 1.5
    scores = rng.integers(0, 3, size=(B, K)).astype(np.float64) if ties else rng.normal(size=(B, K))
    return rewards, scores


def _pl(rewards, scores, dtype=jnp.float32):
    return losses.get("plackett_luce").fn(LossInputs(rewards=jnp.asarray(rewards, dtype),
                                                     scores=jnp.asarray(scores, dtype)), get_config().loss)


@pytest.mark.parametrize("seed,K,ties", [(0, 3, False), (1, 4, False), (2, 3, True), (3, 4, True), (4, 5, True)])
def test_plackett_luce_matches_product_formula(seed, K, ties):
    rewards, scores = _pl_data(seed, 6, K, ties)
    if ties:
        assert any(len(set(row)) < K for row in scores)  # the data really has ties
    loss, metrics = _pl(rewards, scores)
    np.testing.assert_allclose(float(loss), _np_pl_nll(rewards, scores), rtol=1e-5)
    # metrics: score-ordered pairs (ties excluded) with rewards in the same order
    right = total = 0
    for r, s in zip(rewards, scores):
        for i, j in itertools.permutations(range(K), 2):
            if s[i] > s[j]:
                total += 1
                right += r[i] > r[j]
    np.testing.assert_allclose(float(metrics["accuracy"]), right / total, rtol=1e-6)
    top = [r[min(range(K), key=lambda i: (-s[i], i))] for r, s in zip(rewards, scores)]
    bottom = [r[max(range(K), key=lambda i: (-s[i], i))] for r, s in zip(rewards, scores)]
    np.testing.assert_allclose(float(metrics["margin"]), np.mean(np.subtract(top, bottom)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["reward/min"]), rewards.min(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward/max"]), rewards.max(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward/mean"]), rewards.mean(), rtol=1e-5, atol=1e-7)


def test_plackett_luce_ties_keep_index_order():
    # equal scores: the earlier index ranks first, so swapping the tied rewards changes the loss
    rewards, scores = np.array([[2.0, -1.0, 0.5]]), np.array([[1.0, 1.0, 0.0]])
    loss, _ = _pl(rewards, scores)
    np.testing.assert_allclose(float(loss), _np_pl_nll(rewards, scores), rtol=1e-6)
    swapped, _ = _pl(rewards[:, [1, 0, 2]], scores)
    assert abs(float(loss) - float(swapped)) > 1.0


def test_plackett_luce_k2_equals_bradley_terry():
    rewards, scores = _pl_data(5, 16, 2, ties=False)
    pl, pl_metrics = _pl(rewards, scores)
    # BT on the same pairs, chosen = the higher score
    flip = scores[:, 0] < scores[:, 1]
    pairs = np.where(flip[:, None], rewards[:, ::-1], rewards)
    cfg = get_config().loss
    bt, bt_metrics = losses.get("bradley_terry").fn(LossInputs(rewards=jnp.asarray(pairs, jnp.float32)), cfg)
    np.testing.assert_allclose(float(pl), float(bt), rtol=1e-6)
    np.testing.assert_allclose(float(pl_metrics["accuracy"]), float(bt_metrics["accuracy"]))
    np.testing.assert_allclose(float(pl_metrics["margin"]), float(bt_metrics["margin"]), rtol=1e-6)


def test_plackett_luce_gradient_matches_finite_differences():
    rewards, scores = _pl_data(6, 3, 4, ties=True)
    with jax.enable_x64(True):
        grad = jax.grad(lambda r: _pl(r, scores, jnp.float64)[0])(jnp.asarray(rewards, jnp.float64))
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, fd_grad(lambda r: _np_pl_nll(r, scores), rewards), rtol=1e-6, atol=1e-8)


def test_plackett_luce_needs_scores_and_k_at_least_2():
    cfg = get_config().loss
    with pytest.raises(ValueError, match="plackett_luce.*scores"):
        losses.get("plackett_luce").fn(LossInputs(rewards=jnp.zeros((2, 3))), cfg)
    with pytest.raises(ValueError, match="K >= 2"):
        losses.get("plackett_luce").fn(LossInputs(rewards=jnp.zeros((2, 1)), scores=jnp.zeros((2, 1))), cfg)


# ------------------------------------------------------------------------------------------------ regression RM


def test_reward_mse_matches_numpy():
    rng = np.random.default_rng(7)
    rewards = rng.normal(size=12) * 2
    scores = rng.integers(0, 5, size=12).astype(np.float64)  # Likert-like, with ties
    loss, metrics = losses.get("reward_mse").fn(
        LossInputs(rewards=jnp.asarray(rewards, jnp.float32), scores=jnp.asarray(scores, jnp.float32)),
        get_config().loss)
    expected = np.mean((rewards - scores) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mse"]), expected, rtol=1e-5)
    right = total = 0
    for i, j in itertools.combinations(range(12), 2):
        if scores[i] != scores[j]:
            total += 1
            right += np.sign(rewards[i] - rewards[j]) == np.sign(scores[i] - scores[j])
    np.testing.assert_allclose(float(metrics["accuracy"]), right / total, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward/min"]), rewards.min(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward/max"]), rewards.max(), rtol=1e-6)


def test_reward_mse_checks_shapes():
    with pytest.raises(AssertionError):
        losses.get("reward_mse").fn(LossInputs(rewards=jnp.zeros((4, 2)), scores=jnp.zeros((4, 2))),
                                    get_config().loss)


def test_new_reward_objectives_are_registered():
    for name, shape in (("plackett_luce", "LIST"), ("reward_mse", "SCORE")):
        obj = losses.get(name)
        assert (obj.trains, obj.kind, obj.needs_reference) == ("reward", shape, False)
    assert "`plackett_luce` | reward | LIST" in losses.markdown_table()


# ------------------------------------------------------------------------------------------------ ensembles


@pytest.mark.parametrize("method", AGGREGATIONS)
def test_aggregate_rewards_matches_numpy(method):
    r = np.random.default_rng(8).normal(size=(3, 5, 4))  # E = 4 ensemble members on the last axis
    lam = 0.7
    expected = {"mean": r.mean(-1), "min": r.min(-1),
                "uwo": r.mean(-1) - lam * ((r - r.mean(-1, keepdims=True)) ** 2).sum(-1) / r.shape[-1]}[method]
    got = aggregate_rewards(jnp.asarray(r, jnp.float32), method, uwo_lambda=lam)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_aggregate_rewards_unknown_method():
    with pytest.raises(ValueError, match=r"reward\.aggregate='max'.*mean.*min.*uwo"):
        aggregate_rewards(jnp.zeros((2, 3)), "max")
