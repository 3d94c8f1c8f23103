"""SimPO, CPO, ORPO and RRHF against independent NumPy float64 references written from the formulas."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

import pjax.losses.reference_free  # noqa: F401  (registers the objectives)
from pjax.losses.registry import REGISTRY, LossInputs
from tests.losses.numeric import fd_grad


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _cfg(**kw):
    base = dict(beta=0.1, simpo_gamma=0.5, cpo_alpha=1.0, label_smoothing=0.0)
    base.update(kw)
    return ConfigDict(base)


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _random(seed, shape, p_mask=0.7):
    rng = np.random.default_rng(seed)
    lp = -rng.gamma(2.0, 0.5, size=shape)
    mask = (rng.random(shape) < p_mask).astype(np.int32)
    mask[..., 0] = 1  # at least one scored token per sequence; lengths vary
    return lp, mask


def _np_seq(lp, mask):
    total = (lp * mask).sum(-1)
    return total, total / np.maximum(mask.sum(-1), 1)


@functools.partial(jax.jit, static_argnames="name")
def _value_and_grad(name, lp, mask, fields, cfg_values):
    """One compiled function per (objective, shapes): the config values are traced arguments."""
    def loss(p):
        out = REGISTRY[name].fn(LossInputs(p, mask, **fields), ConfigDict(cfg_values))
        return out[0], out[1]

    return jax.value_and_grad(loss, has_aux=True)(lp)


def _run(name, lp, mask, cfg, **fields):
    """Value, metrics and d loss / d policy_logps of a registered objective, in float64."""
    fields = {k: jnp.asarray(v) for k, v in fields.items()}
    (value, metrics), grad = _value_and_grad(name, jnp.asarray(lp, jnp.float64), jnp.asarray(mask), fields,
                                             cfg.to_dict())
    assert value.dtype == jnp.float64
    return float(value), metrics, np.asarray(grad)


def _check(name, lp, mask, cfg, ref_fn, **fields):
    value, metrics, grad = _run(name, lp, mask, cfg, **fields)
    np.testing.assert_allclose(value, ref_fn(lp), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad, fd_grad(ref_fn, lp), rtol=1e-6, atol=1e-8)
    assert np.all(grad[mask == 0] == 0.0)  # padding never gets a gradient
    return metrics


# ------------------------------------------------------------------------------------------------- references


def _ref_simpo(lp, mask, beta, gamma, eps):
    _, avg = _np_seq(lp, mask)
    z = beta * (avg[:, 0] - avg[:, 1]) - gamma
    return np.mean(-(1 - eps) * _np_log_sigmoid(z) - eps * _np_log_sigmoid(-z))


def _np_nll_chosen(lp, mask):
    return -(lp[:, 0] * mask[:, 0]).sum() / mask[:, 0].sum()


def _ref_cpo(lp, mask, beta, alpha, eps):
    total, _ = _np_seq(lp, mask)
    z = beta * (total[:, 0] - total[:, 1])
    return np.mean(-(1 - eps) * _np_log_sigmoid(z) - eps * _np_log_sigmoid(-z)) + alpha * _np_nll_chosen(lp, mask)


def _ref_orpo(lp, mask, beta):
    _, avg = _np_seq(lp, mask)
    c, r = avg[:, 0], avg[:, 1]
    log_odds = (c - r) - (np.log(1 - np.exp(c)) - np.log(1 - np.exp(r)))
    return _np_nll_chosen(lp, mask) - beta * np.mean(_np_log_sigmoid(log_odds))


def _ref_rrhf(lp, mask, scores):
    total, avg = _np_seq(lp, mask)
    out = []
    for b in range(lp.shape[0]):
        rank = sum(max(0.0, avg[b, i] - avg[b, j])
                   for i, j in itertools.product(range(lp.shape[1]), repeat=2) if scores[b, i] < scores[b, j])
        out.append(rank - total[b, int(np.argmax(scores[b]))])
    return float(np.mean(out))


# ------------------------------------------------------------------------------------------------- (a) references


@pytest.mark.parametrize("beta,gamma,eps", [(0.1, 0.5, 0.0), (2.0, 1.2, 0.0), (2.5, 0.3, 0.1)])
def test_simpo_matches_numpy(beta, gamma, eps):
    lp, mask = _random(0, (5, 2, 7))
    metrics = _check("simpo", lp, mask, _cfg(beta=beta, simpo_gamma=gamma, label_smoothing=eps),
                     lambda p: _ref_simpo(p, mask, beta, gamma, eps))
    _, avg = _np_seq(lp, mask)  # TRL CPO/simpo metrics: rewards and logps are AVERAGED log-probs
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), beta * avg[:, 0].mean(), rtol=1e-9)
    np.testing.assert_allclose(float(metrics["logps/rejected"]), avg[:, 1].mean(), rtol=1e-9)
    assert float(metrics["rewards/accuracies"]) == pytest.approx(float((avg[:, 0] > avg[:, 1]).mean()))


@pytest.mark.parametrize("beta,alpha,eps", [(0.1, 1.0, 0.0), (0.5, 0.0, 0.0), (0.3, 1.7, 0.2)])
def test_cpo_matches_numpy(beta, alpha, eps):
    lp, mask = _random(1, (5, 2, 7))
    metrics = _check("cpo", lp, mask, _cfg(beta=beta, cpo_alpha=alpha, label_smoothing=eps),
                     lambda p: _ref_cpo(p, mask, beta, alpha, eps))
    total, _ = _np_seq(lp, mask)  # TRL CPO metrics: SUMMED log-probs
    np.testing.assert_allclose(float(metrics["rewards/margins"]), beta * (total[:, 0] - total[:, 1]).mean(), rtol=1e-9)
    np.testing.assert_allclose(float(metrics["logps/chosen"]), total[:, 0].mean(), rtol=1e-9)
    np.testing.assert_allclose(float(metrics["nll"]), _np_nll_chosen(lp, mask), rtol=1e-9)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_matches_numpy(beta):
    lp, mask = _random(2, (5, 2, 7))
    metrics = _check("orpo", lp, mask, _cfg(beta=beta), lambda p: _ref_orpo(p, mask, beta))
    _, avg = _np_seq(lp, mask)
    log_odds = (avg[:, 0] - avg[:, 1]) - (np.log1p(-np.exp(avg[:, 0])) - np.log1p(-np.exp(avg[:, 1])))
    np.testing.assert_allclose(float(metrics["log_odds_chosen"]), log_odds.mean(), rtol=1e-9)
    np.testing.assert_allclose(float(metrics["log_odds_ratio"]), _np_log_sigmoid(log_odds).mean(), rtol=1e-9)
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), beta * avg[:, 0].mean(), rtol=1e-9)
    np.testing.assert_allclose(float(metrics["nll"]), _np_nll_chosen(lp, mask), rtol=1e-9)


@pytest.mark.parametrize("seed,K", [(3, 4), (4, 3), (5, 5)])
def test_rrhf_matches_numpy(seed, K):
    lp, mask = _random(seed, (4, K, 6))
    scores = np.random.default_rng(seed + 100).permutation(4 * K).reshape(4, K).astype(np.float64)  # no ties
    metrics = _check("rrhf", lp, mask, _cfg(), lambda p: _ref_rrhf(p, mask, scores), scores=scores)
    total, _ = _np_seq(lp, mask)
    np.testing.assert_allclose(float(metrics["nll"]), -total[np.arange(4), scores.argmax(1)].mean(), rtol=1e-9)


# ------------------------------------------------------------------------------------------------- (b) identities


def test_simpo_is_length_normalised_and_equal_pairs_give_softplus_gamma():
    lp, mask = _random(6, (4, 2, 5), p_mask=1.0)
    cfg = _cfg(beta=2.0, simpo_gamma=0.7)
    base, _, _ = _run("simpo", lp, mask, cfg)
    # repeating every token doubles ℓ but leaves ℓ̄, hence SimPO, unchanged (CPO's summed version changes)
    lp2, mask2 = np.repeat(lp, 2, axis=-1), np.repeat(mask, 2, axis=-1)
    np.testing.assert_allclose(_run("simpo", lp2, mask2, cfg)[0], base, rtol=1e-12)
    assert abs(_run("cpo", lp2, mask2, _cfg(cpo_alpha=0.0))[0] - _run("cpo", lp, mask, _cfg(cpo_alpha=0.0))[0]) > 1e-3
    # chosen == rejected: loss is -log σ(-γ) = softplus(γ), and the two rows' gradients cancel
    same = np.stack([lp[:, 0], lp[:, 0]], 1)
    same_mask = np.stack([mask[:, 0], mask[:, 0]], 1)
    value, _, grad = _run("simpo", same, same_mask, cfg)
    np.testing.assert_allclose(value, np.log1p(np.exp(0.7)), rtol=1e-12)
    np.testing.assert_allclose(grad[:, 0] + grad[:, 1], 0.0, atol=1e-15)
    # a margin far beyond γ: the gradient vanishes
    far = lp.copy()
    far[:, 1] -= 50.0
    assert np.abs(_run("simpo", far, mask, cfg)[2]).max() < 1e-30


def test_cpo_without_nll_is_reference_free_dpo():
    lp, mask = _random(7, (6, 2, 5))
    beta = 0.2
    value, _, _ = _run("cpo", lp, mask, _cfg(beta=beta, cpo_alpha=0.0))
    total, _ = _np_seq(lp, mask)
    np.testing.assert_allclose(value, np.mean(np.log1p(np.exp(-beta * (total[:, 0] - total[:, 1])))), rtol=1e-12)


def test_orpo_nll_on_prompt_is_trls_whole_input_nll():
    """`loss.orpo_nll_on_prompt=True`: the chosen NLL over every real token (TRL 1.16's ORPOTrainer: its
    labels are the whole input of a decoder-only model), the log-odds term over the completion."""
    lp, completion = _random(3, (5, 2, 7))
    real = np.maximum(completion, np.random.default_rng(4).random(completion.shape) < 0.5).astype(completion.dtype)

    def ref(p):
        _, avg = _np_seq(p, completion)
        c, r = avg[:, 0], avg[:, 1]
        log_odds = (c - r) - (np.log(1 - np.exp(c)) - np.log(1 - np.exp(r)))
        return _np_nll_chosen(p, real) - 0.3 * np.mean(_np_log_sigmoid(log_odds))

    value, _, _ = _run("orpo", lp, completion, _cfg(beta=0.3, orpo_nll_on_prompt=True), token_mask=real)
    np.testing.assert_allclose(value, ref(lp), rtol=1e-6)
    assert (real > completion).any()  # the prompt's tokens count: the comparison is not the default's
    default, _, _ = _run("orpo", lp, completion, _cfg(beta=0.3), token_mask=real)
    assert abs(default - value) > 1e-3


def test_orpo_equal_pair_and_stable_log1mexp():
    lp, mask = _random(8, (3, 2, 5))
    same = np.stack([lp[:, 0], lp[:, 0]], 1)
    same_mask = np.stack([mask[:, 0], mask[:, 0]], 1)
    value, metrics, _ = _run("orpo", same, same_mask, _cfg(beta=0.4))
    np.testing.assert_allclose(value, _np_nll_chosen(same, same_mask) + 0.4 * np.log(2.0), rtol=1e-12)
    # log(1 - e^x) near 0 (probability of the response ≈ 1): finite and accurate in float32
    x = jnp.asarray([-1e-7, -1e-3, -0.5, -0.7, -5.0, -40.0], jnp.float32)
    got = np.asarray(jax.jit(pjax.losses.reference_free.log1mexp)(x))
    x64 = np.asarray(x, np.float64)
    want = np.where(x64 > -0.5, np.log(-np.expm1(x64)), np.log1p(-np.exp(x64)))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a near-certain chosen response in float32 still gives a finite loss and gradient
    near = np.full((2, 2, 3), -1e-6, np.float32)
    near[:, 1] = -2.0
    loss, grad = jax.jit(jax.value_and_grad(
        lambda p: REGISTRY["orpo"].fn(LossInputs(p, jnp.ones((2, 2, 3), jnp.int32)), _cfg())[0]))(jnp.asarray(near))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))


def test_rrhf_correct_ranking_leaves_only_sft_and_ties_do_not_count():
    lp, mask = _random(9, (3, 3, 4), p_mask=1.0)
    # make ℓ̄ strictly increase with the score: the ranking term is zero
    lp = np.sort(lp.mean(-1, keepdims=True), axis=1) + 0 * lp
    scores = np.tile(np.array([[0.0, 1.0, 2.0]]), (3, 1))
    value, metrics, grad = _run("rrhf", lp, mask, _cfg(), scores=scores)
    total, _ = _np_seq(lp, mask)
    np.testing.assert_allclose(value, -total[:, 2].mean(), rtol=1e-12)
    assert float(metrics["rank_loss"]) == 0.0 and float(metrics["rank_accuracy"]) == 1.0
    np.testing.assert_allclose(grad[:, :2], 0.0)
    np.testing.assert_allclose(grad[:, 2], -mask[:, 2] / 3)
    # all scores equal: no pair counts, and the best (argmax) is the first response
    tied = np.zeros_like(scores)
    value, _, _ = _run("rrhf", lp, mask, _cfg(), scores=tied)
    np.testing.assert_allclose(value, -total[:, 0].mean(), rtol=1e-12)


def test_jit_and_float32():
    lp, mask = _random(10, (4, 2, 6))
    for name in ("simpo", "cpo", "orpo"):
        f = jax.jit(lambda p, n=name: REGISTRY[n].fn(LossInputs(p, jnp.asarray(mask)), _cfg())[0])
        got = float(f(jnp.asarray(lp, jnp.float32)))
        ref = {"simpo": lambda: _ref_simpo(lp, mask, 0.1, 0.5, 0.0), "cpo": lambda: _ref_cpo(lp, mask, 0.1, 1.0, 0.0),
               "orpo": lambda: _ref_orpo(lp, mask, 0.1)}[name]()
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_registry_entries():
    for name in ("simpo", "cpo", "orpo"):
        assert REGISTRY[name].data_shape == "PAIR [B,2,T]" and not REGISTRY[name].needs_reference
    assert REGISTRY["rrhf"].data_shape == "LIST [B,K,T]" and not REGISTRY["rrhf"].needs_reference


# ------------------------------------------------------------------------------------------------- (c) errors


def test_input_errors():
    lp, mask = _random(11, (2, 3, 4))
    with pytest.raises(ValueError, match="scores"):
        REGISTRY["rrhf"].fn(LossInputs(jnp.asarray(lp), jnp.asarray(mask)), _cfg())
    with pytest.raises(ValueError, match="K >= 2"):
        REGISTRY["rrhf"].fn(LossInputs(jnp.asarray(lp[:, :1]), jnp.asarray(mask[:, :1]),
                                       scores=jnp.zeros((2, 1))), _cfg())
    with pytest.raises(ValueError, match="scores"):
        REGISTRY["rrhf"].fn(LossInputs(jnp.asarray(lp), jnp.asarray(mask), scores=jnp.zeros((2, 4))), _cfg())
    for name in ("simpo", "cpo", "orpo"):
        with pytest.raises(ValueError, match=r"PAIR data \[B, 2, T\]"):
            REGISTRY[name].fn(LossInputs(jnp.asarray(lp), jnp.asarray(mask)), _cfg())
        with pytest.raises(ValueError, match="mask"):
            REGISTRY[name].fn(LossInputs(jnp.asarray(lp[:, :2]), jnp.asarray(mask[:, :2, :3])), _cfg())
