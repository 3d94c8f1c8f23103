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
    assert any("`sigmoid` | policy | PAIR [B,2,T] | yes" in line for line in lines)
    assert any("`bradley_terry` | reward | PAIR" in line for line in lines)


TRL_PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                    "logps/chosen", "logps/rejected")


@pytest.mark.parametrize("name", sorted(n for n, o in losses.REGISTRY.items()
                                        if o.kind in ("PAIR", "STEP") and o.trains == "policy"))
def test_pairwise_objectives_log_trl_metrics(name):
    from configs.base import get_config

    pol, ref, mask = _random_pairs(4)
    cfg = get_config().loss
    cfg.label_smoothing = 1e-3 if name == "exo_pair" else 0.0
    inputs = LossInputs(jnp.asarray(pol), jnp.asarray(mask), jnp.asarray(ref), policy_log_sum_p2=jnp.asarray(pol - 1.0))
    loss, metrics = losses.get(name).fn(inputs, cfg)
    assert np.isfinite(float(loss))
    for key in TRL_PAIR_METRICS:
        assert key in metrics, (name, key)


def test_mpo_recipe_is_the_weighted_sum():
    """loss.names=('sigmoid','bco_pair','sft'), weights (0.8, 0.2, 1.0) = the weighted sum of the parts."""
    pol, ref, mask = _random_pairs(5)
    inputs = LossInputs(jnp.asarray(pol), jnp.asarray(mask), jnp.asarray(ref), state={})
    cfg = ConfigDict({"name": "sigmoid", "names": ("sigmoid", "bco_pair", "sft"), "weights": (0.8, 0.2, 1.0),
                      "beta": 0.1})
    total, metrics, state = losses.combined(inputs, cfg)
    parts = {n: float(losses.get(n).fn(inputs, cfg)[0]) for n in ("sigmoid", "bco_pair", "sft")}
    np.testing.assert_allclose(float(total), 0.8 * parts["sigmoid"] + 0.2 * parts["bco_pair"] + parts["sft"], rtol=1e-6)
    assert float(metrics["loss/bco_pair"]) == pytest.approx(parts["bco_pair"])
    assert state == {}
    with pytest.raises(ValueError, match="loss.weights=.*one entry per loss.names"):
        losses.terms(ConfigDict({"name": "sigmoid", "names": ("sigmoid", "sft"), "weights": (1.0,)}))
    assert float(metrics["bco_pair/rewards/margins"]) == pytest.approx(float(metrics["rewards/margins"]))
    with pytest.raises(ValueError, match="`sft` reads the chosen row of pairs"):
        losses.terms(ConfigDict({"name": "kto", "names": ("kto", "sft"), "weights": ()}))
    with pytest.raises(ValueError, match="mixes data shapes"):
        losses.terms(ConfigDict({"name": "sigmoid", "names": ("sigmoid", "kto"), "weights": ()}))


def test_stateful_objective_state_flows_through_combined():
    rng = np.random.default_rng(6)
    lp = -rng.gamma(2.0, 1.0, (4, 5)).astype(np.float32)
    ref = -rng.gamma(2.0, 1.0, (4, 5)).astype(np.float32)
    mask = np.ones((4, 5), np.int32)
    cfg = ConfigDict({"name": "bco", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0})
    state = losses.init_state(cfg)
    inputs = LossInputs(jnp.asarray(lp), jnp.asarray(mask), jnp.asarray(ref), labels=jnp.array([1, 0, 1, 0]),
                        state=state)
    _, _, new_state = losses.combined(inputs, cfg)
    rewards = 0.1 * ((lp - ref) * mask).sum(-1)
    assert float(new_state["bco"]["mean"]) == pytest.approx(float(rewards.mean()), rel=1e-5)
    assert int(new_state["bco"]["count"]) == 4


def test_docs_table_lists_every_objective():
    """docs/objectives.md has a row for every registered objective (the docs cannot drift silently)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "objectives.md").read_text()
    rows = {line.split("`")[1] for line in doc.splitlines() if line.startswith("| `")}
    assert set(losses.REGISTRY) <= rows, set(losses.REGISTRY) - rows
