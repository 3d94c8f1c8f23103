"""Grouped-query attention kernels, chosen by `model.attention`.

- `einsum`: two einsums with float32 scores, masked by the dense `[B, T, S]` mask (any mask; the
  path every other one is tested against).
- `xla`: `jax.nn.dot_product_attention(implementation="xla")`, the same mask.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention, GPU only,
  bfloat16/float16): causal by construction (`is_causal`), so the non-causal blocks are skipped and no
  `[B, H, T, S]` scores are kept for the backward; padding, segments and windows pass as the mask.
- `auto` (default): `cudnn` on a GPU with a 16-bit compute dtype, else `einsum` (on the CPU the XLA
  kernel is no faster, experiments/RESULTS.md).

Every kernel computes the same function: softmax(q k^T / sqrt(hd), masked) v, with queries grouped
over the key/value heads (GQA). A query that may see no key (a padding query of a left-padded row)
gets a finite, unused output.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn")


def resolve(name: str, dtype: str, platform: str | None = None) -> str:
    """The kernel `auto` stands for on this backend (others are returned as they are)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={name!r}: expected one of {list(IMPLEMENTATIONS)}")
    if name != "auto":
        return name
    platform = platform or jax.default_backend()
    return "cudnn" if platform == "gpu" and dtype in ("bfloat16", "float16") else "einsum"


def attend(q: Array, k: Array, v: Array, allowed: Array, implementation: str, causal: bool) -> Array:
    """q: [B, T, H, hd]; k, v: [B, S, K, hd] (H a multiple of K); allowed: [B, T, S] bool (the complete
    mask, causal part included); `causal`: the mask is at most causal with query t at key index t (no
    cache offset), which `cudnn` uses to skip the upper triangle. Returns [B, T, H, hd] in q's dtype."""
    B, T, H, hd = q.shape
    K = k.shape[2]
    if implementation == "einsum":
        qg = q.reshape(B, T, K, H // K, hd)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / math.sqrt(hd)
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H, hd)
    if implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None], implementation="xla")
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None], is_causal=causal,
                                            implementation="cudnn")
    raise ValueError(f"attention implementation {implementation!r}: expected one of {list(IMPLEMENTATIONS[1:])}")
