"""The attention kernels (`model.attention`) against a float64 NumPy attention, values and gradients.

The cuDNN kernel needs a GPU: on this CPU only its selection by `auto` is checked here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjax.models import attention
from pjax.models.llama import LlamaConfig, attention_mask


def np_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(hd)) v per head, query head h reading key/value head h // (H / K)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, H, hd = q.shape
    K = k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            kh = h // (H // K)
            s = q[b, :, h] @ k[b, :, kh].T / np.sqrt(hd)
            s = np.where(allowed[b], s, -1e300)  # a query that sees no key: uniform (unused, not compared)
            p = np.exp(s - s.max(-1, keepdims=True)) * allowed[b]
            p = p + (p.sum(-1, keepdims=True) == 0)
            out[b, :, h] = (p / p.sum(-1, keepdims=True)) @ v[b, :, kh]
    return out


def _inputs(B=3, T=9, H=4, K=2, hd=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(B, T, n, hd)).astype(np.float32) for n in (H, K, K))
    key_mask = np.ones((B, T), np.int32)
    key_mask[1, 6:] = 0  # right padding
    key_mask[2, :3] = 0  # left padding
    segments = np.array([[1] * 5 + [2] * 4, [1] * 9, [0] * 3 + [1] * 3 + [2] * 3], np.int32)
    return q, k, v, key_mask, segments


MASKS = {
    "causal": dict(),
    "window": dict(sliding_window=3),
    "segments": dict(by_segment=True),
}


def _allowed(key_mask, segments, T, sliding_window=0, by_segment=False):
    seg = jnp.asarray(segments) if by_segment else None
    return np.asarray(attention_mask(jnp.asarray(key_mask), T, 0, sliding_window, seg))


@pytest.mark.parametrize("implementation", ["einsum", "xla"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha", "mqa"])
def test_kernels_match_numpy(implementation, mask, heads):
    q, k, v, key_mask, segments = _inputs(H=heads[0], K=heads[1])
    allowed = _allowed(key_mask, segments, q.shape[1], **MASKS[mask])
    got = np.asarray(attention.attend(q, k, v, allowed, implementation, causal=True))
    want = np_attention(q, k, v, allowed)
    seen = allowed.any(-1)  # queries with at least one visible key (padding queries may see none)
    np.testing.assert_allclose(got[seen], want[seen], atol=2e-5, rtol=0)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("mask", list(MASKS))
def test_xla_kernel_gradients_equal_einsum(mask):
    q, k, v, key_mask, segments = _inputs(seed=1)
    allowed = _allowed(key_mask, segments, q.shape[1], **MASKS[mask])
    weights = np.random.default_rng(2).normal(size=q.shape).astype(np.float32) * allowed.any(-1)[..., None, None]

    def loss(impl):
        return jax.jit(jax.grad(lambda q, k, v: (attention.attend(q, k, v, allowed, impl, True) * weights).sum(),
                                argnums=(0, 1, 2)))(q, k, v)

    for g_xla, g_einsum in zip(loss("xla"), loss("einsum")):
        assert np.abs(g_einsum).max() > 1e-2
        np.testing.assert_allclose(g_xla, g_einsum, atol=1e-5, rtol=1e-4)


def test_auto_picks_cudnn_only_on_gpu_in_16_bit():
    assert attention.resolve("auto", "bfloat16", platform="gpu") == "cudnn"
    assert attention.resolve("auto", "float16", platform="gpu") == "cudnn"
    assert attention.resolve("auto", "float32", platform="gpu") == "einsum"
    assert attention.resolve("auto", "bfloat16", platform="cpu") == "einsum"
    assert attention.resolve("auto", "bfloat16", platform="tpu") == "einsum"
    assert attention.resolve("xla", "float32", platform="cpu") == "xla"


def test_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="model.attention='flash'"):
        LlamaConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=8, attention="flash")
