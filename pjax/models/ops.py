"""Dense projections with a backward pass of plain contractions.

Autodiff of a projection fused into its neighbours (the SwiGLU product, RoPE) lets XLA:CPU fuse the
weight gradient with a transpose and write it in strided order, which made the backward pass of a
train step 2-3x its forward (experiments/RESULTS.md). `dense` computes the same einsum forward, and
its backward is two einsums the compiler lowers to plain GEMMs: dx = dy . w over the output axes,
dw = x . dy over the leading (batch, sequence) axes. Numerically it is the same gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense(spec: str, x: Array, w: Array) -> Array:
    """`jnp.einsum(spec, x, w)` for a projection `spec` like "btd,df->btf": every index of `w` is either
    contracted with `x` or appears in the output, every index of `x` either contracted or kept."""
    return jnp.einsum(spec, x, w)


def _forward(spec: str, x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return jnp.einsum(spec, x, w), (x, w)


def _backward(spec: str, residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, w = residuals
    inputs, out = spec.split("->")
    xs, ws = inputs.split(",")
    dx = jnp.einsum(f"{out},{ws}->{xs}", dy, w).astype(x.dtype)
    dw = jnp.einsum(f"{xs},{out}->{ws}", x, dy).astype(w.dtype)
    return dx, dw


dense.defvjp(_forward, _backward)
