"""Output heads. The LM head is fused into a chunked log-prob computation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def token_logprobs(hidden: Array, kernel: Array, targets: Array, *, chunk_size: int = 128,
                   temperature: float = 1.0, with_log_sum_p2: bool = False) -> Array | tuple[Array, Array]:
    """Per-token log-probs `log softmax(hidden @ kernel / temperature)[targets]`, float32 `[B, T]`.

    The sequence is processed in chunks of `chunk_size` positions inside a `lax.map`, and each chunk
    is rematerialised in the backward pass, so at most a `[B, chunk_size, V]` block of logits exists
    at any time (forward and backward) instead of the full `[B, T, V]`.

    With `with_log_sum_p2`, also returns `log sum_v p(v)^2` per position (detached), which WPO needs.
    """
    chex.assert_rank(hidden, 3)
    chex.assert_equal_shape_prefix((hidden, targets), 2)
    B, T, D = hidden.shape
    c = min(chunk_size, T)
    n = -(-T // c)
    pad = n * c - T
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(B, n, c, D).swapaxes(0, 1)
    t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, c).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(args):
        hc, tc = args
        # Inputs in the compute dtype, result (and accumulation) in float32: no bf16 rounding of the logits.
        logits = jnp.einsum("bcd,dv->bcv", hc, kernel.astype(hc.dtype), preferred_element_type=jnp.float32)
        logits = logits / temperature
        picked = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        lse = jax.nn.logsumexp(logits, axis=-1)
        if not with_log_sum_p2:
            return picked - lse
        log_sum_p2 = jax.lax.stop_gradient(jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * lse)
        return picked - lse, log_sum_p2

    unchunk = lambda x: x.swapaxes(0, 1).reshape(B, n * c)[:, :T]  # noqa: E731
    out = jax.lax.map(chunk, (h, t))  # [n, B, c] (or a pair of them)
    return jax.tree.map(unchunk, out)


def naive_token_logprobs(hidden: Array, kernel: Array, targets: Array, temperature: float = 1.0) -> Array:
    """Reference implementation that materialises the full `[B, T, V]` logits (tests, benchmarks)."""
    logits = jnp.einsum("btd,dv->btv", hidden, kernel.astype(hidden.dtype),
                        preferred_element_type=jnp.float32) / temperature
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
