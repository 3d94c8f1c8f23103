"""SFT and DPO objectives against NumPy references written from the formulas."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from pjax import losses
from pjax.losses import LossInputs


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _random_pairs(seed, B=6, T=9):
    rng = np.random.default_rng(seed)
    pol = -rng.gamma(2.0, 1.0, size=(B, 2, T)).astype(np.float32)
    ref = -rng.gamma(2.0, 1.0, size=(B, 2, T)).astype(np.float32)
    mask = (rng.random((B, 2, T)) < 0.7).astype(np.int32)
    mask[:, :, 0] = 1
    return pol, ref, mask


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_dpo_matches_numpy_reference(beta):
    pol, ref, mask = _random_pairs(0)
    loss, metrics = losses.get("dpo").fn(LossInputs(jnp.asarray(pol), jnp.asarray(mask), jnp.asarray(ref)),
                                         ConfigDict({"beta": beta}))
    # reference: sequence log-probs are masked token sums; h = rho_w - rho_l
    p64, r64, m64 = pol.astype(np.float64), ref.astype(np.float64), mask.astype(np.float64)
    rho = (p64 * m64).sum(-1) - (r64 * m64).sum(-1)
    h = rho[:, 0] - rho[:, 1]
    expected = -_np_log_sigmoid(beta * h).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), beta * rho[:, 0].mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["rewards/margins"]), beta * h.mean(), rtol=1e-5, atol=1e-6)
    assert float(metrics["rewards/accuracies"]) == pytest.approx(float((h > 0).mean()))
    np.testing.assert_allclose(float(metrics["logps/rejected"]), (p64 * m64).sum(-1)[:, 1].mean(), rtol=1e-5)


def test_dpo_is_ln2_when_policy_equals_reference():
    pol, _, mask = _random_pairs(1)
    loss, metrics = losses.get("sigmoid").fn(LossInputs(jnp.asarray(pol), jnp.asarray(mask), jnp.asarray(pol)),
                                             ConfigDict({"beta": 0.1}))
    assert float(loss) == float(np.float32(np.log(2.0)))
    assert float(metrics["rewards/margins"]) == 0.0


def test_dpo_gradient_matches_analytic():
    # d/dh [-log sigma(beta h)] = -beta * sigma(-beta h); a chosen token's log-prob enters h with +1.
    pol, ref, mask = _random_pairs(2, B=3, T=4)
    beta = 0.3
    g = jax.grad(lambda p: losses.get("dpo").fn(LossInputs(p, jnp.asarray(mask), jnp.asarray(ref)),
                                                ConfigDict({"beta": beta}))[0])(jnp.asarray(pol))
    rho = (pol * mask).sum(-1) - (ref * mask).sum(-1)
    h = (rho[:, 0] - rho[:, 1]).astype(np.float64)
    coeff = -beta / (1 + np.exp(beta * h)) / len(h)
    expected = np.stack([coeff[:, None] * mask[:, 0], -coeff[:, None] * mask[:, 1]], axis=1)
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5, atol=1e-7)


def test_sft_is_masked_token_mean_nll():
    rng = np.random.default_rng(3)
    lp = -rng.gamma(2.0, 1.0, size=(4, 7)).astype(np.float32)
    mask = (rng.random((4, 7)) < 0.5).astype(np.int32)
    loss, metrics = losses.get("sft").fn(LossInputs(jnp.asarray(lp), jnp.asarray(mask)), ConfigDict())
    np.testing.assert_allclose(float(loss), -(lp * mask).sum() / mask.sum(), rtol=1e-6)
    assert float(metrics["num_tokens"]) == mask.sum()
    # on pairs, only the chosen row counts
    pair_lp = np.stack([lp, lp - 5.0], axis=1)
    pair_mask = np.stack([mask, mask], axis=1)
    pair_loss, _ = losses.get("sft").fn(LossInputs(jnp.asarray(pair_lp), jnp.asarray(pair_mask)), ConfigDict())
    np.testing.assert_allclose(float(pair_loss), float(loss), rtol=1e-6)


def test_unknown_objective_names_the_key():
    with pytest.raises(ValueError, match="loss.name='nope'.*sigmoid"):
        losses.get("nope")


def test_registry_table_cli():
    out = subprocess.run([sys.executable, "-m", "pjax.losses"], capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(lines) == len(losses.REGISTRY)
    assert any("`sigmoid` | PAIR [B,2,T] | yes" in line for line in lines)
