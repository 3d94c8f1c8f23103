"""Chunked LM-head log-probs (`pjax.models.heads`) against a float64 NumPy log-softmax reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjax.models.heads import naive_token_logprobs, token_logprobs


def np_token_logprobs(hidden, kernel, targets, temperature=1.0):
    """log softmax(hidden @ kernel / temperature)[targets], float64, written from the definition."""
    logits = np.asarray(hidden, np.float64) @ np.asarray(kernel, np.float64) / temperature
    m = logits.max(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    return picked - lse


def _inputs(B=2, T=12, D=16, V=40, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(B, T, D)).astype(np.float32)
    kernel = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    return hidden, kernel, targets


# chunk_size is static; the temperature is traced, so each chunk size compiles once.
_jit_token_logprobs = jax.jit(token_logprobs, static_argnames=("chunk_size",))


@pytest.mark.parametrize("chunk_size", [4, 5, 100])  # divides T=12, does not, > T
def test_token_logprobs_matches_numpy(chunk_size):
    hidden, kernel, targets = _inputs()
    for temperature in (1.0, 0.7, 2.5):
        got = _jit_token_logprobs(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(targets),
                                  chunk_size=chunk_size, temperature=jnp.float32(temperature))
        want = np_token_logprobs(hidden, kernel, targets, temperature)
        assert got.shape == targets.shape
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0, err_msg=f"T={temperature}")
        assert np.all(np.asarray(got) <= 0)


def test_token_logprobs_normalised():
    """Summing exp(log p) over every possible target gives 1 (checks the logsumexp, not just a pick)."""
    B, T, D, V = 1, 3, 8, 10
    hidden, kernel, _ = _inputs(B, T, D, V, seed=3)
    h = jnp.repeat(jnp.asarray(hidden), V, axis=0)  # [V, T, D]
    targets = jnp.broadcast_to(jnp.arange(V)[:, None], (V, T))
    lp = token_logprobs(h, jnp.asarray(kernel), targets, chunk_size=2, temperature=1.3)
    np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64)).sum(0), np.ones(T), atol=1e-5)


@pytest.mark.parametrize("chunk_size", [4, 5])
def test_token_logprobs_gradients_match_naive(chunk_size):
    hidden, kernel, targets = _inputs(seed=1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=targets.shape).astype(np.float32))
    h, k, t = jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(targets)

    @jax.jit
    def grads(h, k, temperature):
        chunked = lambda h, k: jnp.sum(
            token_logprobs(h, k, t, chunk_size=chunk_size, temperature=temperature) * weights)
        naive = lambda h, k: jnp.sum(naive_token_logprobs(h, k, t, temperature=temperature) * weights)
        return (jax.grad(chunked, argnums=(0, 1))(h, k), jax.grad(naive, argnums=(0, 1))(h, k),
                naive_token_logprobs(h, k, t, temperature=temperature))

    for temperature in (1.0, 0.6):
        gc, gn, naive_lp = grads(h, k, jnp.float32(temperature))
        for a, b in zip(gc, gn):
            assert a.shape == b.shape
            assert np.abs(np.asarray(b)).max() > 1e-3  # a non-trivial gradient
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
        # The naive reference itself agrees with NumPy in the forward pass.
        np.testing.assert_allclose(np.asarray(naive_lp), np_token_logprobs(hidden, kernel, targets, temperature),
                                   atol=1e-5)


def _backward_temp_bytes(fn, B, T, D, V):
    h = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    k = jax.ShapeDtypeStruct((D, V), jnp.float32)
    t = jax.ShapeDtypeStruct((B, T), jnp.int32)
    grad = jax.jit(jax.grad(lambda h, k, t: jnp.sum(fn(h, k, t)), argnums=(0, 1)))
    stats = grad.lower(h, k, t).compile().memory_analysis()
    if stats is None:
        pytest.skip("backend gives no memory analysis")
    return stats.temp_size_in_bytes


def test_chunked_backward_never_builds_full_logits():
    B, T, D, V, chunk = 2, 256, 32, 16384, 32
    full = B * T * V * 4  # one float32 [B, T, V] array: 32 MiB
    chunked = _backward_temp_bytes(lambda h, k, t: token_logprobs(h, k, t, chunk_size=chunk), B, T, D, V)
    naive = _backward_temp_bytes(naive_token_logprobs, B, T, D, V)
    assert naive >= full, (naive, full)
    assert chunked < full, (chunked, full)
