"""KTO and BCO against independent NumPy float64 references written from the formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

import pjax.losses.unpaired  # noqa: F401  (registers the objectives)
from pjax.losses.registry import REGISTRY, LossInputs
from tests.losses.numeric import fd_grad


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _cfg(**kw):
    base = dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)
    base.update(kw)
    return ConfigDict(base)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _random(seed, B=6, T=7, T_kl=5, kl_shift=0.0):
    rng = np.random.default_rng(seed)
    lp = -rng.gamma(2.0, 0.5, size=(B, T))
    ref = -rng.gamma(2.0, 0.5, size=(B, T))
    mask = (rng.random((B, T)) < 0.7).astype(np.int32)
    mask[:, 0] = 1
    labels = (rng.random(B) < 0.5).astype(np.int32)
    labels[0], labels[1] = 1, 0  # both kinds present
    klp = -rng.gamma(2.0, 0.5, size=(B, T_kl)) + kl_shift
    klr = -rng.gamma(2.0, 0.5, size=(B, T_kl))
    klm = (rng.random((B, T_kl)) < 0.8).astype(np.int32)
    klm[:, 0] = 1
    return dict(lp=lp, ref=ref, mask=mask, labels=labels, klp=klp, klr=klr, klm=klm)


def _inputs(d, p, state=None, with_kl=True):
    kw = dict(ref_logps=jnp.asarray(d["ref"]), labels=jnp.asarray(d["labels"]), state=state)
    if with_kl:
        kw.update(kl_policy_logps=jnp.asarray(d["klp"]), kl_ref_logps=jnp.asarray(d["klr"]),
                  kl_mask=jnp.asarray(d["klm"]))
    return LossInputs(p, jnp.asarray(d["mask"]), **kw)


@functools.partial(jax.jit, static_argnames="name")
def _value_and_grad(name, d, cfg_values, state):
    """One compiled function per (objective, shapes): config values and state are traced arguments."""
    def loss(p):
        out = REGISTRY[name].fn(_inputs(d, p, state, with_kl=name == "kto"), ConfigDict(cfg_values))
        return out[0], out[1:]

    return jax.value_and_grad(loss, has_aux=True)(d["lp"])


def _run(name, d, cfg, state=None):
    arrays = {k: jnp.asarray(v) for k, v in d.items()}
    (value, aux), grad = _value_and_grad(name, arrays, cfg.to_dict(), state)
    assert value.dtype == jnp.float64
    return float(value), aux, np.asarray(grad)


# ------------------------------------------------------------------------------------------------- references


def _ref_kto(lp, d, beta, wd, wu):
    m = d["mask"]
    rho = (lp * m).sum(-1) - (d["ref"] * m).sum(-1)
    z0 = max(0.0, float(np.mean((d["klp"] * d["klm"]).sum(-1) - (d["klr"] * d["klm"]).sum(-1))))
    des = [wd * (1 - _sigmoid(beta * (r - z0))) for r, y in zip(rho, d["labels"]) if y == 1]
    und = [wu * (1 - _sigmoid(beta * (z0 - r))) for r, y in zip(rho, d["labels"]) if y == 0]
    return float(np.mean(np.concatenate([des, und]))), z0  # TRL: cat(weighted des, weighted und).nanmean()


def _bco_rewards(lp, d, beta):
    m = d["mask"]
    return beta * ((lp * m).sum(-1) - (d["ref"] * m).sum(-1))


def _ref_bco(lp, d, beta, wd, wu, delta):
    r = _bco_rewards(lp, d, beta)
    des = [wd * -_np_log_sigmoid(x - delta) for x, y in zip(r, d["labels"]) if y == 1]
    und = [wu * -_np_log_sigmoid(-(x - delta)) for x, y in zip(r, d["labels"]) if y == 0]
    return float(np.mean(np.concatenate([des, und])))


# ------------------------------------------------------------------------------------------------- (a) KTO


@pytest.mark.parametrize("kl_shift,beta,wd,wu", [(1.0, 0.1, 1.0, 1.0), (1.5, 0.5, 1.3, 0.7), (-3.0, 0.3, 1.0, 2.0)])
def test_kto_matches_numpy(kl_shift, beta, wd, wu):
    d = _random(0, kl_shift=kl_shift)
    value, (metrics,), grad = _run("kto", d, _cfg(beta=beta, desirable_weight=wd, undesirable_weight=wu))
    expected, z0 = _ref_kto(d["lp"], d, beta, wd, wu)
    assert (z0 > 0) == (kl_shift > 0)  # the last case exercises the clamp at 0
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad, fd_grad(lambda p: _ref_kto(p, d, beta, wd, wu)[0], d["lp"]), rtol=1e-6, atol=1e-8)
    assert np.all(grad[d["mask"] == 0] == 0.0)
    # metrics: TRL's per-kind means, counts and z0
    rho = (d["lp"] * d["mask"]).sum(-1) - (d["ref"] * d["mask"]).sum(-1)
    des = d["labels"] == 1
    np.testing.assert_allclose(float(metrics["kl"]), z0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), beta * rho[des].mean(), rtol=1e-9)
    np.testing.assert_allclose(float(metrics["rewards/rejected"]), beta * rho[~des].mean(), rtol=1e-9)
    assert float(metrics["count/chosen"]) == des.sum() and float(metrics["count/rejected"]) == (~des).sum()


def test_kto_z0_has_no_gradient():
    d = _random(1, kl_shift=1.0)
    g = jax.jit(jax.grad(lambda klp: REGISTRY["kto"].fn(
        LossInputs(jnp.asarray(d["lp"]), jnp.asarray(d["mask"]), jnp.asarray(d["ref"]), labels=jnp.asarray(d["labels"]),
                   kl_policy_logps=klp, kl_ref_logps=jnp.asarray(d["klr"]), kl_mask=jnp.asarray(d["klm"])),
        _cfg())[0]))(jnp.asarray(d["klp"]))
    assert np.all(np.asarray(g) == 0.0)


def test_kto_at_reference_is_half_per_example():
    d = _random(2)
    d["ref"] = d["lp"].copy()
    d["klr"] = d["klp"].copy()  # z0 = 0
    for wd, wu in [(1.0, 1.0), (1.5, 0.4)]:
        value, (metrics,), grad = _run("kto", d, _cfg(beta=0.2, desirable_weight=wd, undesirable_weight=wu))
        w = np.where(d["labels"] == 1, wd, wu)
        np.testing.assert_allclose(value, np.mean(0.5 * w), rtol=1e-12)
        assert float(metrics["kl"]) == 0.0
        # d/dρ (1 - σ(βρ)) = -β/4 at ρ = 0 (desirable); +β/4 for undesirable; /B for the mean
        sign = np.where(d["labels"] == 1, -1.0, 1.0)
        np.testing.assert_allclose(grad, (sign * w * 0.2 / 4 / len(w))[:, None] * d["mask"], rtol=1e-12)
    all_des = dict(d, labels=np.ones_like(d["labels"]))
    np.testing.assert_allclose(_run("kto", all_des, _cfg())[0], 0.5, rtol=1e-12)  # one kind absent: still the mean


# ------------------------------------------------------------------------------------------------- (a) BCO


@pytest.mark.parametrize("beta,wd,wu,m0,c0", [(0.1, 1.0, 1.0, 0.0, 0), (0.5, 1.3, 0.6, 0.25, 5)])
def test_bco_matches_numpy(beta, wd, wu, m0, c0):
    d = _random(3)
    state = {"mean": jnp.asarray(m0, jnp.float32), "count": jnp.asarray(c0, jnp.int32)}
    value, (metrics, new_state), grad = _run("bco", d, _cfg(beta=beta, desirable_weight=wd, undesirable_weight=wu),
                                             state)
    r = _bco_rewards(d["lp"], d, beta)
    delta = (m0 * c0 + r.sum()) / (c0 + len(r))  # running mean INCLUDING this batch (TRL: update, then use)
    np.testing.assert_allclose(value, _ref_bco(d["lp"], d, beta, wd, wu, delta), rtol=1e-6, atol=1e-8)
    # δ carries no gradient: differentiate the reference with δ held fixed
    np.testing.assert_allclose(grad, fd_grad(lambda p: _ref_bco(p, d, beta, wd, wu, delta), d["lp"]),
                               rtol=1e-6, atol=1e-8)
    assert np.all(grad[d["mask"] == 0] == 0.0)
    np.testing.assert_allclose(float(metrics["delta"]), delta, rtol=1e-9)
    np.testing.assert_allclose(float(new_state["mean"]), delta, rtol=1e-6)
    assert int(new_state["count"]) == c0 + len(r)
    assert new_state["mean"].dtype == jnp.float32 and new_state["count"].dtype == jnp.int32


def test_bco_state_is_running_mean_over_batches():
    obj = REGISTRY["bco"]
    cfg = _cfg(beta=0.3)
    state = obj.init_state(cfg)
    assert set(state) == {"mean", "count"} and float(state["mean"]) == 0.0 and int(state["count"]) == 0
    step = jax.jit(lambda inp: obj.fn(inp, cfg))
    seen = []
    for i, B in enumerate([3, 5, 2, 6]):  # unequal batch sizes: the mean is over rows, not batches
        d = _random(10 + i, B=B, kl_shift=float(i))
        d["lp"] = d["lp"] + 0.5 * i  # drift the rewards so the running mean moves
        seen.extend(_bco_rewards(d["lp"], d, 0.3))
        _, metrics, state = step(_inputs(d, jnp.asarray(d["lp"]), state, with_kl=False))
        np.testing.assert_allclose(float(metrics["delta"]), np.mean(seen), rtol=1e-6)
        np.testing.assert_allclose(float(state["mean"]), np.mean(seen), rtol=1e-6)
        assert int(state["count"]) == len(seen)
        assert state["mean"].dtype == jnp.float32 and state["count"].dtype == jnp.int32


def test_bco_at_reference_with_fresh_state_is_log2():
    d = _random(4)
    d["ref"] = d["lp"].copy()
    value, (metrics, _), _ = _run("bco", d, _cfg(desirable_weight=2.0, undesirable_weight=0.5),
                                  REGISTRY["bco"].init_state(None))
    w = np.where(d["labels"] == 1, 2.0, 0.5)
    np.testing.assert_allclose(value, np.log(2.0) * w.mean(), rtol=1e-12)
    assert float(metrics["delta"]) == 0.0


def test_registry_entries():
    for name in ("kto", "bco"):
        assert REGISTRY[name].data_shape == "UNP [B,T]" and REGISTRY[name].needs_reference
    assert REGISTRY["kto"].init_state is None and REGISTRY["bco"].init_state is not None


# ------------------------------------------------------------------------------------------------- (c) errors


def test_input_errors():
    d = _random(5)
    p, m = jnp.asarray(d["lp"]), jnp.asarray(d["mask"])
    ref, labels = jnp.asarray(d["ref"]), jnp.asarray(d["labels"])
    kl = dict(kl_policy_logps=jnp.asarray(d["klp"]), kl_ref_logps=jnp.asarray(d["klr"]), kl_mask=jnp.asarray(d["klm"]))
    state = REGISTRY["bco"].init_state(None)
    with pytest.raises(ValueError, match="labels"):
        REGISTRY["kto"].fn(LossInputs(p, m, ref, **kl), _cfg())
    with pytest.raises(ValueError, match="kl_policy_logps, kl_ref_logps, kl_mask"):
        REGISTRY["kto"].fn(LossInputs(p, m, ref, labels=labels), _cfg())
    with pytest.raises(ValueError, match="kl_mask"):
        REGISTRY["kto"].fn(LossInputs(p, m, ref, labels=labels, **dict(kl, kl_mask=None)), _cfg())
    with pytest.raises(ValueError, match="ref_logps"):
        REGISTRY["kto"].fn(LossInputs(p, m, labels=labels, **kl), _cfg())
    with pytest.raises(ValueError, match="labels"):
        REGISTRY["bco"].fn(LossInputs(p, m, ref, state=state), _cfg())
    with pytest.raises(ValueError, match="state"):
        REGISTRY["bco"].fn(LossInputs(p, m, ref, labels=labels), _cfg())
    with pytest.raises(ValueError, match="labels has shape"):
        REGISTRY["bco"].fn(LossInputs(p, m, ref, labels=labels[:3], state=state), _cfg())
    with pytest.raises(ValueError, match=r"UNP data \[B, T\]"):
        REGISTRY["bco"].fn(LossInputs(p[:, None], m[:, None], ref[:, None], labels=labels, state=state), _cfg())
