"""Reward-model objectives against NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from pjax import losses
from pjax.losses import LossInputs


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
