"""Pairwise (DPO-family) objectives against float64 NumPy references written from the formulas.

The references below never call pjax: sequence log-probs, LD-DPO weighting, f-divergence scores, WPO
weights and each loss are re-derived here, and gradients come from central finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from pjax import losses
from pjax.losses import LossInputs

PAIRWISE = ["sigmoid", "cdpo", "robust", "ipo", "hinge", "sigmoid_norm", "exo_pair", "nca_pair", "bco_pair",
            "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "dpop", "rdpo_length",
            "f_dpo", "ld_dpo", "wpo", "rpo", "step_dpo"]
TRL_METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected"]
DIVERGENCES = ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]


# ------------------------------------------------------------------------------------------------
# Independent NumPy reference (float64)
# ------------------------------------------------------------------------------------------------

def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return np.exp(logsig(x))


def np_token_weights(mask, ld_alpha):
    """[B,2,T]: 1 on a row's first min(n_c, n_r) completion tokens, ld_alpha on its later ones, else 0."""
    w = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        k = int(min(mask[b, 0].sum(), mask[b, 1].sum()))
        for i in range(2):
            idx = np.flatnonzero(mask[b, i])
            w[b, i, idx[:k]] = 1.0
            w[b, i, idx[k:]] = ld_alpha
    return w


def np_score(rho, div, a):
    """TRL 1.16 (`DPOTrainer.dpo_loss`): the f-divergence's f'(t) at t = e^rho, constants included."""
    if div == "reverse_kl":
        return rho
    if div == "forward_kl":
        return 1.0 - np.exp(-rho)
    if div == "js_divergence":
        return np.log(2.0) + logsig(rho)
    assert div == "alpha_divergence"
    if a == 1.0:
        return rho
    return (np.exp(np.minimum((a - 1.0) * rho, 80.0)) - 1.0) / (a - 1.0)


def np_wpo(pol, lsp2, mask):
    n = np.maximum(mask.sum(-1), 1)
    w = np.exp(((pol - lsp2) * mask).sum(-1) / n)
    return w[:, 0] * w[:, 1]


def np_per_pair(name, c, beta, pl, rl, n, nll):
    """Per-pair loss from sequence log-probs pl, rl [B,2], counts n [B,2] and the batch NLL."""
    rho = pl - rl
    s = np_score(rho, c["f_divergence"], c["f_alpha"])
    d = s[:, 0] - s[:, 1]
    z = beta * d
    eps = c["label_smoothing"]
    if name in ("sigmoid", "f_dpo", "ld_dpo", "wpo", "step_dpo"):
        return -logsig(z)
    if name == "cdpo":
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    if name == "robust":
        return (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps)
    if name == "ipo":
        nn = np.maximum(n, 1)
        return (s[:, 0] / nn[:, 0] - s[:, 1] / nn[:, 1] - 1 / (2 * beta)) ** 2
    if name == "hinge":
        return np.maximum(0.0, 1 - z)
    if name == "sigmoid_norm":
        nn = np.maximum(n, 1)
        return -logsig(beta * (s[:, 0] / nn[:, 0] - s[:, 1] / nn[:, 1]))
    if name == "exo_pair":
        return sig(z) * (logsig(z) - np.log(1 - eps)) + sig(-z) * (logsig(-z) - np.log(eps))
    if name == "nca_pair":
        a, b = beta * s[:, 0], beta * s[:, 1]
        return -logsig(a) - 0.5 * logsig(-a) - 0.5 * logsig(-b)
    if name == "bco_pair":
        return -logsig(beta * s[:, 0]) - logsig(-beta * s[:, 1])
    if name == "sppo_hard":
        return (s[:, 0] - 1 / (2 * beta)) ** 2 + (s[:, 1] + 1 / (2 * beta)) ** 2
    if name in ("aot", "aot_unpaired"):
        if name == "aot":
            delta = np.sort(pl[:, 0] - pl[:, 1]) - np.sort(rl[:, 0] - rl[:, 1])
        else:
            delta = np.sort(rho[:, 0]) - np.sort(rho[:, 1])
        return -(1 - eps) * logsig(beta * delta) - eps * logsig(-beta * delta)
    if name == "apo_zero":
        return 1 - sig(beta * rho[:, 0]) + sig(beta * rho[:, 1])
    if name == "apo_down":
        return sig(beta * rho[:, 0]) + 1 - sig(z)
    if name == "discopop":
        m = sig(z / c["discopop_tau"])
        return (1 - m) * -logsig(z) + m * np.exp(-z)
    if name == "dpop":
        return -logsig(beta * (d - c["dpop_lambda"] * np.maximum(0.0, rl[:, 0] - pl[:, 0])))
    if name == "rdpo_length":
        return -logsig(z - c["length_alpha"] * (n[:, 0] - n[:, 1]))
    if name == "rpo":
        return -logsig(z) + c["rpo_alpha"] * nll
    raise KeyError(name)


DEFAULTS = dict(label_smoothing=0.0, f_divergence="reverse_kl", f_alpha=0.5, ld_alpha=1.0, use_weighting=False,
                rpo_alpha=1.0, dpop_lambda=50.0, length_alpha=0.0, discopop_tau=0.05)


def np_loss(name, cfg, beta, pol, ref, mask, lsp2, weight=None, tw=None):
    """Mean over pairs; `weight` (WPO) is held fixed, as the objective detaches it; `tw`: cached
    `np_token_weights`."""
    c = {**DEFAULTS, **cfg}
    m = mask.astype(np.float64)
    tw = np_token_weights(mask, c["ld_alpha"]) if tw is None else tw
    pl, rl = (pol * tw).sum(-1), (ref * tw).sum(-1)
    n = m.sum(-1)
    nll = -(pol[:, 0] * m[:, 0]).sum() / m[:, 0].sum()
    per = np_per_pair(name, c, beta, pl, rl, n, nll)
    if weight is not None:
        per = per * weight
    return per.mean(), pl, rl


def fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def random_batch(seed, B=6, T=9, spread=0.5):
    """Contiguous completion spans of varied start and length; policy near the reference."""
    rng = np.random.default_rng(seed)
    ref = -rng.gamma(2.0, 0.7, size=(B, 2, T))
    pol = ref + spread * rng.standard_normal((B, 2, T))
    mask = np.zeros((B, 2, T), np.int32)
    for b in range(B):
        for i in range(2):
            length = rng.integers(1, T - 1)
            start = rng.integers(0, T - length + 1)
            mask[b, i, start:start + length] = 1
    lsp2 = -rng.gamma(1.5, 0.5, size=(B, 2, T)) + 0.5 * pol  # any per-token values; WPO only reads them
    return pol, ref, mask, lsp2


def run(name, cfg, pol, ref, mask, lsp2=None):
    """pjax loss, metrics and d loss / d policy_logps, in float64."""
    with jax.enable_x64(True):
        conf = ConfigDict(cfg)
        mk = lambda p: LossInputs(p, jnp.asarray(mask), jnp.asarray(ref),  # noqa: E731
                                  policy_log_sum_p2=None if lsp2 is None else jnp.asarray(lsp2))
        (loss, metrics), g = jax.value_and_grad(lambda p: losses.get(name).fn(mk(p), conf), has_aux=True)(
            jnp.asarray(pol, jnp.float64))
        assert loss.dtype == jnp.float64
        return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(g)


CASES = [
    ("sigmoid", {}),
    ("sigmoid", {"f_divergence": "js_divergence"}),
    ("sigmoid", {"ld_alpha": 0.5}),
    ("sigmoid", {"use_weighting": True}),
    ("sigmoid", {"ld_alpha": 0.25, "f_divergence": "alpha_divergence", "f_alpha": 0.3, "use_weighting": True}),
    ("cdpo", {"label_smoothing": 0.2}),
    ("robust", {"label_smoothing": 0.2}),
    ("robust", {"label_smoothing": 0.1, "f_divergence": "forward_kl"}),
    ("ipo", {}),
    ("ipo", {"ld_alpha": 0.5, "f_divergence": "js_divergence"}),
    ("hinge", {}),
    ("sigmoid_norm", {}),
    ("sigmoid_norm", {"f_divergence": "forward_kl"}),
    ("exo_pair", {"label_smoothing": 1e-3}),
    ("exo_pair", {"label_smoothing": 0.2, "use_weighting": True}),
    ("nca_pair", {}),
    ("nca_pair", {"f_divergence": "alpha_divergence", "f_alpha": 2.0}),
    ("bco_pair", {}),
    ("bco_pair", {"f_divergence": "js_divergence", "use_weighting": True}),
    ("sppo_hard", {}),
    ("sppo_hard", {"f_divergence": "forward_kl"}),
    ("aot", {"label_smoothing": 0.1}),
    ("aot", {"ld_alpha": 0.5, "f_divergence": "js_divergence"}),  # AOT ignores the f-divergence
    ("aot_unpaired", {"label_smoothing": 0.1}),
    ("aot_unpaired", {"f_divergence": "forward_kl"}),
    ("apo_zero", {}),
    ("apo_zero", {"f_divergence": "forward_kl"}),  # raw rho: ignores the f-divergence
    ("apo_down", {}),
    ("apo_down", {"f_divergence": "js_divergence"}),
    ("discopop", {}),
    ("discopop", {"discopop_tau": 0.5, "ld_alpha": 0.7}),
    ("dpop", {"dpop_lambda": 5.0}),
    ("dpop", {"f_divergence": "js_divergence"}),
    ("rdpo_length", {"length_alpha": 0.05}),
    ("f_dpo", {"f_divergence": "reverse_kl"}),
    ("f_dpo", {"f_divergence": "forward_kl"}),
    ("f_dpo", {"f_divergence": "js_divergence"}),
    ("f_dpo", {"f_divergence": "alpha_divergence"}),
    ("f_dpo", {"f_divergence": "alpha_divergence", "f_alpha": 1.0}),
    ("f_dpo", {"f_divergence": "alpha_divergence", "f_alpha": 1.7}),
    ("ld_dpo", {"ld_alpha": 0.3}),
    ("ld_dpo", {"ld_alpha": 0.0}),
    ("wpo", {}),
    ("rpo", {"rpo_alpha": 0.7}),
    ("rpo", {"rpo_alpha": 0.7, "use_weighting": True}),
    ("step_dpo", {}),
]


def test_every_objective_has_a_reference_case():
    assert {name for name, _ in CASES} == set(PAIRWISE)


@pytest.mark.parametrize("name,cfg", CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in c.items())}"
                                                 for n, c in CASES])
def test_matches_numpy_reference(name, cfg):
    for seed, beta in enumerate((0.1, 0.5, 2.0)):
        pol, ref, mask, lsp2 = random_batch(seed)
        full = {**cfg, "beta": beta}
        weighting = name == "wpo" or cfg.get("use_weighting", False)
        loss, metrics, grad = run(name, full, pol, ref, mask, lsp2 if weighting else None)

        w = np_wpo(pol, lsp2, mask) if weighting else None
        expected, pl, rl = np_loss(name, cfg, beta, pol, ref, mask, lsp2, w)
        np.testing.assert_allclose(loss, expected, rtol=1e-9, atol=1e-12, err_msg=f"value, beta={beta}")

        tw = np_token_weights(mask, cfg.get("ld_alpha", 1.0))
        fd = fd_grad(lambda p: np_loss(name, cfg, beta, p, ref, mask, lsp2, w, tw)[0], pol)
        scale = max(1.0, np.abs(fd).max())
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * scale, err_msg=f"gradient, beta={beta}")
        assert np.all(grad[mask == 0] == 0.0)  # tokens off the completion mask get no gradient

        rho = pl - rl  # TRL's metrics: beta * raw rho and the (LD-weighted) token sums
        assert set(TRL_METRICS) <= set(metrics)
        np.testing.assert_allclose(metrics["rewards/chosen"], beta * rho[:, 0].mean(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(metrics["rewards/rejected"], beta * rho[:, 1].mean(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(metrics["rewards/margins"], beta * (rho[:, 0] - rho[:, 1]).mean(), rtol=1e-9,
                                   atol=1e-12)
        assert metrics["rewards/accuracies"] == pytest.approx(float((rho[:, 0] > rho[:, 1]).mean()))
        np.testing.assert_allclose(metrics["logps/chosen"], pl[:, 0].mean(), rtol=1e-9)
        np.testing.assert_allclose(metrics["logps/rejected"], pl[:, 1].mean(), rtol=1e-9)
        if name == "rpo":
            m = mask[:, 0]
            np.testing.assert_allclose(metrics["nll"], -(pol[:, 0] * m).sum() / m.sum(), rtol=1e-9)
        if weighting:
            np.testing.assert_allclose(metrics["wpo/weight"], w.mean(), rtol=1e-9)


def test_alpha_divergence_exponent_is_clamped_at_80():
    pol, ref, mask, _ = random_batch(7)
    pol[0, 0] = ref[0, 0] + 60.0 * mask[0, 0] / mask[0, 0].sum()  # rho_c = 60, (a-1) rho = 120 > 80
    cfg = {"f_divergence": "alpha_divergence", "f_alpha": 3.0, "beta": 0.1}
    loss, _, grad = run("f_dpo", cfg, pol, ref, mask)
    expected, _, _ = np_loss("f_dpo", cfg, 0.1, pol, ref, mask, None)
    np.testing.assert_allclose(loss, expected, rtol=1e-9)
    assert np.isfinite(grad).all()
    assert np.all(grad[0, 0] == 0.0)  # clamped: no gradient through the saturated score


# ------------------------------------------------------------------------------------------------
# Analytic identities
# ------------------------------------------------------------------------------------------------

LN2_CASES = [("sigmoid", {}), ("cdpo", {"label_smoothing": 0.0}), ("robust", {"label_smoothing": 0.0}),
             ("rdpo_length", {"length_alpha": 0.0}), ("ld_dpo", {"ld_alpha": 0.4}), ("step_dpo", {}),
             ("wpo", {})] + [("f_dpo", {"f_divergence": d}) for d in DIVERGENCES]


@pytest.mark.parametrize("name,cfg", LN2_CASES)
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_ln2_when_policy_equals_reference(name, cfg, beta):
    pol, _, mask, _ = random_batch(11)
    pol = pol.astype(np.float32)
    inputs = LossInputs(jnp.asarray(pol), jnp.asarray(mask), jnp.asarray(pol), policy_log_sum_p2=jnp.asarray(pol))
    loss, metrics = losses.get(name).fn(inputs, ConfigDict({**cfg, "beta": beta}))
    assert float(loss) == float(np.float32(np.log(2.0)))
    assert float(metrics["rewards/margins"]) == 0.0


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_is_zero_at_its_target_margin(beta):
    _, ref, mask, _ = random_batch(3)
    target = 1.0 / (2.0 * beta)
    pol = ref.copy()
    pol[:, 0] += target * mask[:, 0]  # rho_c / n_c = 1/(2 beta), rho_r = 0
    loss, _, grad = run("ipo", {"beta": beta}, pol, ref, mask)
    assert loss == pytest.approx(0.0, abs=1e-20)
    np.testing.assert_allclose(grad, 0.0, atol=1e-9)
    for sign in (-1.0, 1.0):  # any move of the margin raises the loss
        moved = pol.copy()
        moved[:, 0] += sign * 0.1 * mask[:, 0]
        assert run("ipo", {"beta": beta}, moved, ref, mask)[0] > 1e-6


EQUAL_TO_SIGMOID = [("robust", {"label_smoothing": 0.0}), ("cdpo", {"label_smoothing": 0.0}),
                    ("f_dpo", {"f_divergence": "reverse_kl"}),
                    ("f_dpo", {"f_divergence": "alpha_divergence", "f_alpha": 1.0}),
                    ("ld_dpo", {"ld_alpha": 1.0}), ("step_dpo", {}), ("rdpo_length", {"length_alpha": 0.0}),
                    ("dpop", {"dpop_lambda": 0.0})]


@pytest.mark.parametrize("name,cfg", EQUAL_TO_SIGMOID)
def test_special_cases_equal_sigmoid(name, cfg):
    pol, ref, mask, _ = random_batch(5)
    for beta in (0.1, 1.0):
        loss, metrics, grad = run(name, {**cfg, "beta": beta}, pol, ref, mask)
        loss0, metrics0, grad0 = run("sigmoid", {"beta": beta}, pol, ref, mask)
        np.testing.assert_allclose(loss, loss0, rtol=1e-12)
        np.testing.assert_allclose(grad, grad0, rtol=1e-12, atol=1e-15)
        for k in TRL_METRICS:
            assert metrics[k] == metrics0[k]


def test_wpo_with_unit_weights_equals_sigmoid():
    pol, ref, mask, _ = random_batch(6)
    loss, metrics, grad = run("wpo", {"beta": 0.3}, pol, ref, mask, lsp2=pol)  # log sum p^2 == log p: w = 1
    loss0, _, grad0 = run("sigmoid", {"beta": 0.3}, pol, ref, mask)
    assert metrics["wpo/weight"] == 1.0
    np.testing.assert_allclose(loss, loss0, rtol=1e-12)
    np.testing.assert_allclose(grad, grad0, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 2.0])
def test_rpo_is_sigmoid_plus_alpha_sft(alpha):
    pol, ref, mask, _ = random_batch(8)
    loss, metrics, grad = run("rpo", {"beta": 0.2, "rpo_alpha": alpha}, pol, ref, mask)
    loss0, _, grad0 = run("sigmoid", {"beta": 0.2}, pol, ref, mask)
    sft, _, grad_sft = run("sft", {}, pol, ref, mask)
    assert metrics["nll"] == pytest.approx(sft, rel=1e-12)
    np.testing.assert_allclose(loss, loss0 + alpha * sft, rtol=1e-12)
    np.testing.assert_allclose(grad, grad0 + alpha * grad_sft, rtol=1e-10, atol=1e-14)


def test_aot_is_invariant_to_permuting_the_batch():
    pol, ref, mask, _ = random_batch(9)
    perm = np.random.default_rng(0).permutation(6)
    for name in ("aot", "aot_unpaired"):
        a = run(name, {"beta": 0.5}, pol, ref, mask)[0]
        b = run(name, {"beta": 0.5}, pol[perm], ref[perm], mask[perm])[0]
        np.testing.assert_allclose(a, b, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# Registry, tracing, errors
# ------------------------------------------------------------------------------------------------

def test_registry_entries():
    for name in PAIRWISE:
        obj = losses.get(name)
        assert obj.needs_reference
        assert obj.data_shape == ("STEP [B,2,T]" if name == "step_dpo" else "PAIR [B,2,T]")
        assert "(" in obj.paper and "20" in obj.paper


def test_all_objectives_trace_under_jit_in_float32():
    """Every objective traces (no Python branching on traced values) and keeps float32."""
    pol, ref, mask, lsp2 = (a.astype(np.float32) if a.dtype == np.float64 else a for a in random_batch(1))
    args = (jnp.asarray(pol), jnp.asarray(mask), jnp.asarray(ref), jnp.asarray(lsp2))

    def all_losses(p, m, r, l2):
        out = {}
        for name in PAIRWISE:
            cfg = ConfigDict({"beta": 0.1, "label_smoothing": 0.1, "use_weighting": name in ("rpo", "ipo"),
                              "ld_alpha": 0.5 if name in ("ipo", "aot") else 1.0})
            fn = lambda q, name=name, cfg=cfg: losses.get(name).fn(  # noqa: E731
                LossInputs(q, m, r, policy_log_sum_p2=l2), cfg)[0]
            out[name] = jax.value_and_grad(fn)(p)
        return out

    for name, (loss, grad) in jax.eval_shape(jax.jit(all_losses), *args).items():
        assert loss.dtype == jnp.float32 and loss.shape == (), name
        assert grad.dtype == jnp.float32 and grad.shape == pol.shape, name


def _call(name, cfg, with_lsp2=False):
    pol, ref, mask, lsp2 = random_batch(2)
    inputs = LossInputs(jnp.asarray(pol, jnp.float32), jnp.asarray(mask), jnp.asarray(ref, jnp.float32),
                        policy_log_sum_p2=jnp.asarray(lsp2, jnp.float32) if with_lsp2 else None)
    return losses.get(name).fn(inputs, ConfigDict({"beta": 0.1, **cfg}))


@pytest.mark.parametrize("name,cfg,key", [
    ("exo_pair", {"label_smoothing": 0.0}, "loss.label_smoothing"),
    ("robust", {"label_smoothing": 0.5}, "loss.label_smoothing"),
    ("robust", {"label_smoothing": 0.7}, "loss.label_smoothing"),
    ("robust", {"label_smoothing": -0.1}, "loss.label_smoothing"),
    ("sigmoid", {"use_weighting": True}, "loss.use_weighting"),
    ("ipo", {"use_weighting": True}, "loss.use_weighting"),
    ("wpo", {}, "loss.use_weighting"),
    ("sigmoid", {"f_divergence": "kl"}, "loss.f_divergence"),
    ("f_dpo", {"f_divergence": "hellinger"}, "loss.f_divergence"),
    ("ld_dpo", {"ld_alpha": 1.5}, "loss.ld_alpha"),
])
def test_errors_name_the_key(name, cfg, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _call(name, cfg)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_rejects_weighting(name):
    with pytest.raises(ValueError, match=r"loss\.use_weighting"):
        _call(name, {"use_weighting": True}, with_lsp2=True)
