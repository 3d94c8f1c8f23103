"""LiPO-λ and PRO against independent NumPy float64 references written from the formulas."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

import pjax.losses.listwise  # noqa: F401  (registers the objectives)
from pjax.losses.registry import REGISTRY, LossInputs
from tests.losses.numeric import fd_grad


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _cfg(**kw):
    base = dict(beta=0.1, pro_sft_weight=1.0)
    base.update(kw)
    return ConfigDict(base)


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _random(seed, B=4, K=4, T=6, graded=True):
    rng = np.random.default_rng(seed)
    lp = -rng.gamma(2.0, 0.5, size=(B, K, T))
    ref = -rng.gamma(2.0, 0.5, size=(B, K, T))
    mask = (rng.random((B, K, T)) < 0.7).astype(np.int32)
    mask[..., 0] = 1
    if graded:  # integer relevance labels 0..3, ties allowed
        scores = rng.integers(0, 4, size=(B, K)).astype(np.float64)
        scores[:, 0], scores[:, 1] = 3.0, 0.0  # at least one ordered pair per list
    else:  # distinct real scores
        scores = rng.permutation(B * K).reshape(B, K) / 3.0
    return dict(lp=lp, ref=ref, mask=mask, scores=scores)


@functools.partial(jax.jit, static_argnames="name")
def _value_and_grad(name, d, cfg_values):
    """One compiled function per (objective, shapes): the config values are traced arguments."""
    def loss(p):
        inputs = LossInputs(p, d["mask"], d["ref"], scores=d["scores"])
        return REGISTRY[name].fn(inputs, ConfigDict(cfg_values))

    return jax.value_and_grad(loss, has_aux=True)(d["lp"])


def _run(name, d, cfg):
    arrays = {k: jnp.asarray(v) for k, v in d.items()}
    (value, metrics), grad = _value_and_grad(name, arrays, cfg.to_dict())
    assert value.dtype == jnp.float64
    return float(value), metrics, np.asarray(grad)


def _np_seq(lp, mask):
    total = (lp * mask).sum(-1)
    return total, total / np.maximum(mask.sum(-1), 1)


# ------------------------------------------------------------------------------------------------- references


def _ref_lipo(lp, d, beta):
    m, psi = d["mask"], d["scores"]
    s = beta * ((lp * m).sum(-1) - (d["ref"] * m).sum(-1))
    B, K = s.shape
    losses = []
    for b in range(B):
        tau = np.empty(K)
        tau[np.argsort(-s[b], kind="stable")] = np.arange(1, K + 1)  # 1 = highest current score
        gain, disc = 2.0 ** psi[b] - 1.0, np.log2(1.0 + tau)
        total = 0.0
        for i, j in itertools.product(range(K), repeat=2):
            if psi[b, i] > psi[b, j]:
                lam = abs(gain[i] - gain[j]) * abs(1.0 / disc[i] - 1.0 / disc[j])
                total += lam * np.log1p(np.exp(-(s[b, i] - s[b, j])))
        losses.append(total)
    return float(np.mean(losses))


def _ref_pro(lp, d, w):
    _, avg = _np_seq(lp, d["mask"])
    losses = []
    for b in range(avg.shape[0]):
        x = avg[b, np.argsort(-d["scores"][b], kind="stable")]  # best first
        rank = sum(-(x[k] - np.log(np.sum(np.exp(x[k:])))) for k in range(len(x) - 1))
        losses.append(rank - w * x[0])
    return float(np.mean(losses))


# ------------------------------------------------------------------------------------------------- (a) references


@pytest.mark.parametrize("seed,beta,K,graded", [(0, 0.1, 4, True), (1, 0.5, 3, False), (2, 1.0, 5, True)])
def test_lipo_matches_numpy(seed, beta, K, graded):
    d = _random(seed, K=K, graded=graded)
    value, metrics, grad = _run("lipo", d, _cfg(beta=beta))
    np.testing.assert_allclose(value, _ref_lipo(d["lp"], d, beta), rtol=1e-6, atol=1e-8)
    # the ranks τ carry no gradient: they are piecewise constant, so finite differences (no ties in s) agree
    np.testing.assert_allclose(grad, fd_grad(lambda p: _ref_lipo(p, d, beta), d["lp"]), rtol=1e-6, atol=1e-8)
    assert np.all(grad[d["mask"] == 0] == 0.0)
    s = beta * (_np_seq(d["lp"], d["mask"])[0] - _np_seq(d["ref"], d["mask"])[0])
    best = d["scores"].argmax(1)
    np.testing.assert_allclose(float(metrics["rewards/best"]), s[np.arange(len(s)), best].mean(), rtol=1e-9)


@pytest.mark.parametrize("seed,w,K", [(3, 1.0, 4), (4, 0.3, 3), (5, 0.0, 6)])
def test_pro_matches_numpy(seed, w, K):
    d = _random(seed, K=K, graded=False)
    value, metrics, grad = _run("pro", d, _cfg(pro_sft_weight=w))
    np.testing.assert_allclose(value, _ref_pro(d["lp"], d, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad, fd_grad(lambda p: _ref_pro(p, d, w), d["lp"]), rtol=1e-6, atol=1e-8)
    assert np.all(grad[d["mask"] == 0] == 0.0)
    _, avg = _np_seq(d["lp"], d["mask"])
    np.testing.assert_allclose(float(metrics["nll"]), -avg[np.arange(len(avg)), d["scores"].argmax(1)].mean(),
                               rtol=1e-9)


# ------------------------------------------------------------------------------------------------- (b) identities


def test_lipo_with_two_responses_is_weighted_dpo():
    """K = 2: L = (2^ψ_w - 2^ψ_l)(1 - 1/log2 3) · (-log σ(β(ρ_w - ρ_l))) per pair, 0 on ties."""
    d = _random(6, B=5, K=2)
    d["scores"] = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [2.0, 2.0], [0.5, 2.5]])
    beta = 0.3
    value, _, grad = _run("lipo", d, _cfg(beta=beta))
    rho = _np_seq(d["lp"], d["mask"])[0] - _np_seq(d["ref"], d["mask"])[0]
    psi = d["scores"]
    w_idx = psi.argmax(1)  # the winner (irrelevant on the tie row, whose weight is 0)
    h = rho[np.arange(5), w_idx] - rho[np.arange(5), 1 - w_idx]
    c = np.abs(2.0 ** psi[:, 0] - 2.0 ** psi[:, 1]) * (1.0 - 1.0 / np.log2(3.0))
    np.testing.assert_allclose(value, np.mean(c * -_np_log_sigmoid(beta * h)), rtol=1e-12)
    np.testing.assert_allclose(grad[3], 0.0)  # tied labels: no signal


def test_pro_with_two_responses_is_bradley_terry_plus_sft():
    d = _random(7, B=5, K=2, graded=False)
    w = 0.7
    value, _, _ = _run("pro", d, _cfg(pro_sft_weight=w))
    _, avg = _np_seq(d["lp"], d["mask"])
    win = d["scores"].argmax(1)
    a, b = avg[np.arange(5), win], avg[np.arange(5), 1 - win]
    np.testing.assert_allclose(value, np.mean(-_np_log_sigmoid(a - b) - w * a), rtol=1e-12)


def test_pro_is_stable_for_far_apart_log_probs_in_float32():
    # the best response is far more likely than the rest: each tail sum must not underflow to log 0
    lp = jnp.asarray([[[0.0, -1e-3], [-200.0, -200.0], [-201.0, -201.0]]], jnp.float32)
    scores = jnp.asarray([[2.0, 1.0, 0.0]], jnp.float32)
    loss = jax.jit(lambda p: REGISTRY["pro"].fn(LossInputs(p, jnp.ones_like(p), scores=scores), _cfg())[0])(lp)
    x = np.array([-5e-4, -200.0, -201.0])
    expected = (np.logaddexp.reduce(x) - x[0]) + (np.logaddexp.reduce(x[1:]) - x[1]) - x[0]
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["lipo", "pro"])
def test_invariant_to_list_order(name):
    d = _random(8, K=5, graded=False)
    base = _run(name, d, _cfg())
    perm = np.array([3, 0, 4, 1, 2])
    shuffled = {k: v[:, perm] for k, v in d.items()}
    got = _run(name, shuffled, _cfg())
    np.testing.assert_allclose(got[0], base[0], rtol=1e-12)
    np.testing.assert_allclose(got[2], base[2][:, perm], rtol=1e-10, atol=1e-15)


def test_lipo_weights_follow_current_ranks():
    """Swapping which response the policy currently ranks first changes Δ_ij (ranks come from s, not ψ)."""
    d = _random(9, B=1, K=3)
    d["scores"] = np.array([[2.0, 1.0, 0.0]])
    d["ref"] = np.zeros_like(d["ref"])
    d["mask"] = np.ones_like(d["mask"])
    d["lp"] = np.zeros_like(d["lp"])
    d["lp"][0, :, 0] = [-1.0, -2.0, -3.0]  # s in label order: ranks 1, 2, 3
    in_order = _run("lipo", d, _cfg(beta=1.0))[0]
    np.testing.assert_allclose(in_order, _ref_lipo(d["lp"], d, 1.0), rtol=1e-12)
    d["lp"][0, :, 0] = [-3.0, -2.0, -1.0]  # reversed: ranks 3, 2, 1
    reversed_ = _run("lipo", d, _cfg(beta=1.0))[0]
    np.testing.assert_allclose(reversed_, _ref_lipo(d["lp"], d, 1.0), rtol=1e-12)
    assert reversed_ > in_order


def test_registry_entries():
    assert REGISTRY["lipo"].data_shape == "LIST [B,K,T]" and REGISTRY["lipo"].needs_reference
    assert REGISTRY["pro"].data_shape == "LIST [B,K,T]" and not REGISTRY["pro"].needs_reference


# ------------------------------------------------------------------------------------------------- (c) errors


def test_input_errors():
    d = _random(10)
    p, m, ref, scores = (jnp.asarray(d[k]) for k in ("lp", "mask", "ref", "scores"))
    for name in ("lipo", "pro"):
        with pytest.raises(ValueError, match="scores"):
            REGISTRY[name].fn(LossInputs(p, m, ref), _cfg())
        with pytest.raises(ValueError, match="K >= 2"):
            REGISTRY[name].fn(LossInputs(p[:, :1], m[:, :1], ref[:, :1], scores=scores[:, :1]), _cfg())
        with pytest.raises(ValueError, match="scores has shape"):
            REGISTRY[name].fn(LossInputs(p, m, ref, scores=scores[:, :3]), _cfg())
        with pytest.raises(ValueError, match=r"LIST data \[B, K, T\]"):
            REGISTRY[name].fn(LossInputs(p[:, 0], m[:, 0], ref[:, 0], scores=scores), _cfg())
    with pytest.raises(ValueError, match="ref_logps"):
        REGISTRY["lipo"].fn(LossInputs(p, m, scores=scores), _cfg())
    with pytest.raises(ValueError, match="ref_logps, scores"):
        REGISTRY["lipo"].fn(LossInputs(p, m), _cfg())
