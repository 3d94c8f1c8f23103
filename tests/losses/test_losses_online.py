"""Online policy-optimisation building blocks (`pjax.losses.online`) against independent references.

The references are float64 NumPy loops written from the formulas (GAE over each row's real tokens,
TRL's masked whitening, Schulman's KL estimators, PPO/GRPO/RLOO clipped surrogates and aggregations,
group baselines); they never call pjax. The GAE example is also written out by hand.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjax.losses import online

RTOL, ATOL = 1e-5, 1e-6


def f32(x):
    return jnp.asarray(np.asarray(x, np.float32))


def prefix_mask(lengths, t):
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# NumPy references (float64)
# ------------------------------------------------------------------------------------------------

def np_gae(rewards, values, mask, gamma, lam):
    """GAE on each row's real tokens only (V and A are 0 after the last real token)."""
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[b])
        last_adv, next_v = 0.0, 0.0
        for t in idx[::-1]:
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            last_adv = delta + gamma * lam * last_adv
            adv[b, t] = last_adv
            next_v = values[b, t]
    ret = np.where(mask > 0, adv + values, 0.0)
    return adv, ret


def np_whiten(x, mask, shift_mean=True):
    vals = x[mask > 0]
    mean, var = vals.mean(), vals.var(ddof=1)
    out = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return np.where(mask > 0, out, 0.0)


def np_kl(logp, ref, kind):
    d = logp - ref
    return {"k1": d, "k2": 0.5 * d ** 2, "k3": np.exp(ref - logp) - (ref - logp) - 1.0}[kind]


def np_policy_loss(logp, old, adv, mask, el, eh, aggregation):
    b, t = logp.shape
    if adv.ndim == 1:
        adv = np.repeat(adv[:, None], t, axis=1)
    loss_tok = np.zeros((b, t))
    low = high = ratio_sum = kl2 = 0.0
    n = 0
    for i in range(b):
        for j in range(t):
            r = np.exp(logp[i, j] - old[i, j])
            a = adv[i, j]
            loss_tok[i, j] = -min(r * a, min(max(r, 1 - el), 1 + eh) * a)
            if mask[i, j]:
                n += 1
                low += float(r < 1 - el and a < 0)
                high += float(r > 1 + eh and a > 0)
                ratio_sum += r
                kl2 += 0.5 * (logp[i, j] - old[i, j]) ** 2
    if aggregation == "grpo":
        loss = np.mean([(loss_tok[i] * mask[i]).sum() / max(mask[i].sum(), 1) for i in range(b)])
    elif aggregation == "dr_grpo":
        loss = np.mean([(loss_tok[i] * mask[i]).sum() / t for i in range(b)])
    else:
        loss = (loss_tok * mask).sum() / mask.sum()
    metrics = {"clip_ratio/low_mean": low / n, "clip_ratio/high_mean": high / n,
               "clip_ratio/region_mean": (low + high) / n, "ratio_mean": ratio_sum / n, "approx_kl": kl2 / n}
    return loss, metrics


def random_policy_batch(rng, b=5, t=7, lengths=(7, 3, 5, 1, 6)):
    old = rng.normal(-1.5, 0.5, (b, t))
    logp = old + rng.normal(0.0, 0.5, (b, t))  # ratios from ~0.2 to ~4.5: both clips are hit
    adv_tok = rng.normal(0.0, 1.0, (b, t))
    adv_seq = np.abs(rng.normal(0.0, 1.0, (b,))) * np.resize([1.0, 1.0, -1.0, 1.0, -1.0], b)  # both signs
    return logp, old, adv_tok, adv_seq, prefix_mask(lengths, t)


# ------------------------------------------------------------------------------------------------
# GAE
# ------------------------------------------------------------------------------------------------

def test_gae_hand_computed_three_tokens():
    # gamma = 0.9, lam = 0.5, so gamma * lam = 0.45.
    # Row 0, all 3 tokens real: r = [0, 0, 1], V = [0.5, 0.4, 0.8]
    #   t=2: delta = 1 + 0.9*0 - 0.8 = 0.2                 A_2 = 0.2
    #   t=1: delta = 0 + 0.9*0.8 - 0.4 = 0.32              A_1 = 0.32 + 0.45*0.2  = 0.41
    #   t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14             A_0 = -0.14 + 0.45*0.41 = 0.0445
    #   returns = A + V = [0.5445, 0.81, 1.0]
    # Row 1, mask [1, 1, 0] (the padded r = 9, V = 7 must be ignored): r = [0, 2], V = [1.0, 0.5]
    #   t=1: delta = 2 + 0.9*0 - 0.5 = 1.5                 A_1 = 1.5
    #   t=0: delta = 0 + 0.9*0.5 - 1.0 = -0.55             A_0 = -0.55 + 0.45*1.5 = 0.125
    #   returns = [1.125, 2.0, 0]; the padded token gets A = R = 0
    rewards = f32([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = f32([[0.5, 0.4, 0.8], [1.0, 0.5, 7.0]])
    mask = f32([[1, 1, 1], [1, 1, 0]])
    adv, ret = online.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    np.testing.assert_allclose(adv, [[0.0445, 0.41, 0.2], [0.125, 1.5, 0.0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, [[0.5445, 0.81, 1.0], [1.125, 2.0, 0.0]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7), (0.99, 1.0)])
def test_gae_matches_numpy_loop_on_random_masks(gamma, lam):
    rng = np.random.default_rng(0)
    b, t = 6, 9
    rewards, values = rng.normal(size=(b, t)), rng.normal(size=(b, t))
    mask = prefix_mask([9, 1, 4, 0, 7, 2], t)
    mask[0, [2, 5]] = 0.0  # holes inside a row (e.g. environment tokens) are skipped
    adv, ret = jax.jit(online.gae)(f32(rewards), f32(values), f32(mask), gamma, lam)
    ref_adv, ref_ret = np_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=RTOL, atol=1e-5)
    assert np.all(np.asarray(adv)[mask == 0] == 0.0)


# ------------------------------------------------------------------------------------------------
# Masked statistics
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_numpy(shift_mean):
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, (4, 6))
    mask = prefix_mask([6, 2, 5, 3], 6)
    x[mask == 0] = 1e3  # padding must not leak into the statistics
    out = online.masked_whiten(f32(x), f32(mask), shift_mean=shift_mean)
    np.testing.assert_allclose(out, np_whiten(x, mask, shift_mean), rtol=1e-4, atol=1e-5)


def test_masked_mean_axes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5))
    mask = prefix_mask([5, 2, 0], 5)
    np.testing.assert_allclose(online.masked_mean(f32(x), f32(mask)), x[mask > 0].mean(), rtol=RTOL)
    rows = online.masked_mean(f32(x), f32(mask), axis=1)
    np.testing.assert_allclose(rows, [x[0].mean(), x[1, :2].mean(), 0.0], rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------------
# KL estimators
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_match_formulas(kind):
    rng = np.random.default_rng(3)
    logp, ref = rng.normal(-2, 1, (3, 8)), rng.normal(-2, 1, (3, 8))
    np.testing.assert_allclose(online.kl_estimate(f32(logp), f32(ref), kind), np_kl(logp, ref, kind),
                               rtol=1e-4, atol=1e-5)
    if kind != "k1":
        assert np.all(np.asarray(online.kl_estimate(f32(logp), f32(ref), kind)) >= 0.0)


def test_kl_estimators_are_monte_carlo_kl():
    """On samples y ~ p, mean k1 and mean k3 estimate KL(p || q) = sum p log(p / q) (both unbiased)."""
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(6))
    q = rng.dirichlet(np.ones(6))
    exact = float(np.sum(p * np.log(p / q)))
    y = rng.choice(6, size=200_000, p=p)
    logp, ref = f32(np.log(p)[y]), f32(np.log(q)[y])
    for kind in ("k1", "k3"):
        est = np.asarray(online.kl_estimate(logp, ref, kind), np.float64)
        se = est.std() / np.sqrt(est.size)
        assert abs(est.mean() - exact) < 5 * se + 1e-4, (kind, est.mean(), exact, se)


def test_unknown_kl_estimator_names_the_config_key():
    with pytest.raises(ValueError, match="online.kl_estimator"):
        online.kl_estimate(f32([0.0]), f32([0.0]), "k4")


# ------------------------------------------------------------------------------------------------
# PPO reward shaping and the adaptive KL controller
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_ppo_token_rewards_put_the_score_on_the_last_real_token(kind):
    rng = np.random.default_rng(5)
    b, t, coef = 4, 6, 0.05
    logp, ref = rng.normal(-2, 1, (b, t)), rng.normal(-2, 1, (b, t))
    score = np.array([1.5, -2.0, 0.7, 3.0])
    mask = prefix_mask([6, 3, 1, 0], t)
    mask[0, 4] = 0.0  # a hole: row 0's last real token is still t = 5
    rewards, kl = online.ppo_token_rewards(f32(score), f32(logp), f32(ref), f32(mask), coef, kind)
    ref_kl = np_kl(logp, ref, kind) * mask
    expected = -coef * ref_kl
    for i, last in enumerate([5, 2, 0, None]):
        if last is not None:
            expected[i, last] += score[i]
    np.testing.assert_allclose(kl, ref_kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rewards, expected, rtol=1e-4, atol=1e-5)


def test_sequence_kl_rewards():
    r, lp, lr = np.array([1.0, -0.5, 2.0]), np.array([-10.0, -4.0, -7.0]), np.array([-11.0, -3.0, -7.5])
    new_r, kl = online.sequence_kl_rewards(f32(r), f32(lp), f32(lr), 0.05)
    np.testing.assert_allclose(kl, lp - lr, rtol=RTOL)
    np.testing.assert_allclose(new_r, r - 0.05 * (lp - lr), rtol=RTOL)


@pytest.mark.parametrize("observed", [0.5, 5.5, 6.0, 20.0])
def test_adaptive_kl_update_formula(observed):
    coef, target, horizon, n = 0.1, 6.0, 10000.0, 64
    error = min(max(observed / target - 1.0, -0.2), 0.2)  # clipped proportional error
    expected = coef * (1.0 + error * n / horizon)
    np.testing.assert_allclose(online.adaptive_kl_update(coef, observed, target, horizon, n), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Policy and value losses
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregation", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("adv_kind", ["token", "sequence"])
def test_ppo_policy_loss_matches_numpy(aggregation, adv_kind):
    rng = np.random.default_rng(6)
    logp, old, adv_tok, adv_seq, mask = random_policy_batch(rng)
    adv = adv_tok if adv_kind == "token" else adv_seq
    el, eh = 0.2, 0.28
    fn = jax.jit(functools.partial(online.ppo_policy_loss, aggregation=aggregation))
    loss, metrics = fn(f32(logp), f32(old), f32(adv), f32(mask), el, eh)
    ref_loss, ref_metrics = np_policy_loss(logp, old, adv, mask, el, eh, aggregation)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert 0.0 < ref_metrics["clip_ratio/low_mean"] and 0.0 < ref_metrics["clip_ratio/high_mean"]
    for k, v in ref_metrics.items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_ppo_policy_loss_gradient_is_the_unclipped_term():
    """d loss / d logp_t = -A_t r_t m_t / N where the unclipped term is the min, else 0 (dapo)."""
    rng = np.random.default_rng(7)
    logp, old, adv, _, mask = random_policy_batch(rng)
    el = eh = 0.2

    def loss_fn(lp):
        return online.ppo_policy_loss(lp, f32(old), f32(adv), f32(mask), el, eh, "dapo")[0]

    grad = jax.grad(loss_fn)(f32(logp))
    r = np.exp(logp - old)
    active = r * adv <= np.clip(r, 1 - el, 1 + eh) * adv
    expected = np.where(active, -adv * r, 0.0) * mask / mask.sum()
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_dr_grpo_differs_from_grpo_only_with_unequal_lengths():
    rng = np.random.default_rng(8)
    logp, old, _, adv, mask = random_policy_batch(rng)
    args = (f32(logp), f32(old), f32(adv))
    full = f32(np.ones_like(mask))
    grpo_full = online.ppo_policy_loss(*args, full, aggregation="grpo")[0]
    dr_full = online.ppo_policy_loss(*args, full, aggregation="dr_grpo")[0]
    np.testing.assert_allclose(grpo_full, dr_full, rtol=1e-5)  # every row has length T
    grpo = online.ppo_policy_loss(*args, f32(mask), aggregation="grpo")[0]
    dr = online.ppo_policy_loss(*args, f32(mask), aggregation="dr_grpo")[0]
    assert abs(float(grpo) - float(dr)) > 1e-3
    # max_len: Dr. GRPO's constant when the arrays are wider than the completion limit
    dr10 = online.ppo_policy_loss(*args, f32(mask), aggregation="dr_grpo", max_len=10)[0]
    np.testing.assert_allclose(dr10, float(dr) * mask.shape[1] / 10, rtol=1e-5)


def test_ppo_policy_loss_grpo_kl_term():
    """GRPO adds beta * k3 per token before aggregation; `kl` is its token mean."""
    rng = np.random.default_rng(9)
    logp, old, _, adv, mask = random_policy_batch(rng)
    ref = old + rng.normal(0, 0.2, old.shape)
    beta = 0.04
    base, _ = np_policy_loss(logp, old, adv, mask, 0.2, 0.2, "grpo")
    k3 = np_kl(logp, ref, "k3")
    kl_term = np.mean([(k3[i] * mask[i]).sum() / mask[i].sum() for i in range(len(mask))])
    loss, metrics = online.ppo_policy_loss(f32(logp), f32(old), f32(adv), f32(mask), 0.2, None, "grpo",
                                           ref_logp=f32(ref), kl_coef=beta)
    np.testing.assert_allclose(loss, base + beta * kl_term, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["kl"], (k3 * mask).sum() / mask.sum(), rtol=1e-4)


def test_aggregate_tokens_matches_numpy():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(4, 6))
    mask = prefix_mask([6, 2, 0, 4], 6)
    per_seq = [(x[i] * mask[i]).sum() / max(mask[i].sum(), 1) for i in range(4)]
    expected = {"grpo": np.mean(per_seq), "dr_grpo": (x * mask).sum() / (4 * 8),
                "dapo": (x * mask).sum() / mask.sum()}
    for agg, want in expected.items():
        np.testing.assert_allclose(online.aggregate_tokens(f32(x), f32(mask), agg, max_len=8), want,
                                   rtol=1e-5, err_msg=agg)


def test_ppo_policy_loss_unknown_aggregation():
    with pytest.raises(ValueError, match="online.loss_aggregation"):
        online.ppo_policy_loss(f32([[0.0]]), f32([[0.0]]), f32([1.0]), f32([[1.0]]), aggregation="bnpo_x")


def test_ppo_value_loss_matches_numpy():
    rng = np.random.default_rng(10)
    b, t, eps = 4, 6, 0.2
    old = rng.normal(size=(b, t))
    v = old + rng.normal(0, 0.4, (b, t))
    ret = rng.normal(size=(b, t))
    mask = prefix_mask([6, 2, 4, 5], t)
    per, clipped_larger, n = 0.0, 0.0, 0
    for i in range(b):
        for j in range(t):
            if mask[i, j]:
                l1 = (v[i, j] - ret[i, j]) ** 2
                l2 = (min(max(v[i, j], old[i, j] - eps), old[i, j] + eps) - ret[i, j]) ** 2
                per += max(l1, l2)
                clipped_larger += float(l2 > l1)
                n += 1
    loss, metrics = online.ppo_value_loss(f32(v), f32(old), f32(ret), f32(mask), eps)
    np.testing.assert_allclose(loss, 0.5 * per / n, rtol=1e-5)
    assert 0 < clipped_larger < n
    np.testing.assert_allclose(metrics["val/clipfrac"], clipped_larger / n, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Group baselines and RLOO
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["std", "none"])
def test_group_advantages_match_numpy_loop(scale):
    rng = np.random.default_rng(11)
    p, g = 3, 4
    r = rng.normal(size=p * g)
    r[4:8] = 1.0  # a group with zero spread: A = 0, not NaN
    expected = np.zeros_like(r)
    for k in range(p):
        grp = r[k * g:(k + 1) * g]
        mean = sum(grp) / g
        std = np.sqrt(sum((x - mean) ** 2 for x in grp) / (g - 1))  # Bessel, as torch.std
        for j in range(g):
            expected[k * g + j] = (grp[j] - mean) / (std + 1e-4) if scale == "std" else grp[j] - mean
    np.testing.assert_allclose(online.group_advantages(f32(r), g, scale), expected, rtol=1e-4, atol=1e-5)


def test_rloo_advantages_leave_one_out_loop():
    rng = np.random.default_rng(12)
    p, g = 3, 4
    r = rng.normal(size=p * g)
    expected = np.zeros_like(r)
    for k in range(p):
        for j in range(g):
            others = [r[k * g + i] for i in range(g) if i != j]
            expected[k * g + j] = r[k * g + j] - np.mean(others)
    np.testing.assert_allclose(online.rloo_advantages(f32(r), g), expected, rtol=1e-5, atol=1e-6)


def test_group_errors():
    with pytest.raises(ValueError, match="group_size"):
        online.group_advantages(f32(np.zeros(6)), 4)
    with pytest.raises(ValueError, match="group_size"):
        online.rloo_advantages(f32(np.zeros(6)), 1)
    with pytest.raises(ValueError, match="online.scale_rewards"):
        online.group_advantages(f32(np.zeros(4)), 2, scale="batch_x")


def test_rloo_loss_matches_numpy():
    rng = np.random.default_rng(13)
    b, el, eh = 8, 0.2, 0.28
    old = rng.normal(-20, 3, b)
    lp = old + rng.normal(0, 0.4, b)
    adv = rng.normal(size=b)
    r = np.exp(lp - old)
    per = -np.minimum(r * adv, np.clip(r, 1 - el, 1 + eh) * adv)
    low = np.mean((r < 1 - el) & (adv < 0))
    high = np.mean((r > 1 + eh) & (adv > 0))
    loss, metrics = jax.jit(online.rloo_loss)(f32(lp), f32(old), f32(adv), el, eh)
    np.testing.assert_allclose(loss, per.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_ratio/low_mean"], low, atol=1e-7)
    np.testing.assert_allclose(metrics["clip_ratio/high_mean"], high, atol=1e-7)
    np.testing.assert_allclose(metrics["clip_ratio/region_mean"], low + high, atol=1e-7)
    np.testing.assert_allclose(metrics["ratio_mean"], r.mean(), rtol=1e-5)
    # At r = 1 the gradient is REINFORCE: d loss / d l_b = -A_b / B.
    grad = jax.grad(lambda x: online.rloo_loss(x, f32(old), f32(adv))[0])(f32(old))
    np.testing.assert_allclose(grad, -adv / b, rtol=1e-5, atol=1e-7)


def test_bradley_terry_preference_is_the_logistic_of_the_reward_gap():
    a, b = np.array([0.0, 2.0, -1.0]), np.array([0.0, -1.0, 3.0])
    np.testing.assert_allclose(online.bradley_terry_preference(a, b), 1 / (1 + np.exp(-(a - b))), rtol=1e-6)


def test_nash_md_loss_value_and_gradient_match_the_reinforce_formula():
    """Value: mean_b [c sum_t (lp - lq) lp - (P - 1/2) sum_t lp]; gradient w.r.t. each token's log-prob:
    (c (lp - lq)_t - (P_b - 1/2)) / B on real tokens (the KL weight and the preference are constants)."""
    rng = np.random.default_rng(3)
    B, T, c = 4, 5, 0.3
    lp, lq = -rng.uniform(0.1, 3, (B, T)), -rng.uniform(0.1, 3, (B, T))
    mask = (np.arange(T)[None] < np.array([5, 3, 1, 4])[:, None]).astype(np.float32)
    pref = rng.uniform(0, 1, B)
    expected = np.mean([c * ((lp[b] - lq[b]) * lp[b] * mask[b]).sum() - (pref[b] - 0.5) * (lp[b] * mask[b]).sum()
                        for b in range(B)])
    f = lambda x: online.nash_md_loss(x, jnp.asarray(lq, jnp.float32), jnp.asarray(mask), jnp.asarray(pref, jnp.float32),
                                      c)[0]  # noqa: E731
    np.testing.assert_allclose(f(jnp.asarray(lp, jnp.float32)), expected, rtol=1e-5)
    grad = jax.grad(f)(jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(grad, (c * (lp - lq) - (pref[:, None] - 0.5)) * mask / B, rtol=1e-5, atol=1e-7)
    _, m = online.nash_md_loss(jnp.asarray(lp, jnp.float32), jnp.asarray(lq, jnp.float32), jnp.asarray(mask),
                               jnp.asarray(pref, jnp.float32), c)
    np.testing.assert_allclose(m["nash_md/kl"], ((lp - lq) * mask).sum(-1).mean(), rtol=1e-5)
