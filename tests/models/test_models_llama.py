"""The Llama model against an independent float64 NumPy forward written from the published architecture.

Nothing here calls pjax code to produce an expected value: RMSNorm, RoPE (Hugging Face half-split
layout, with `rotate_half`), grouped-query attention, SwiGLU and the Llama 3.1 RoPE frequency scaling
are re-implemented below in NumPy.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs.base import RULES
from pjax.models import build, positions_from_mask, sequence_rewards, sequence_token_logprobs
from pjax.models.llama import LlamaConfig, init_cache, preset, rope_frequencies

# ----------------------------------------------------------------------------- NumPy reference


def np_inv_freq(head_dim, theta, rope_scaling=()):
    """RoPE inverse frequencies; Llama 3.1 scaling as in Meta's `apply_scaling` (reference code)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if not rope_scaling:
        return freqs
    factor, low_freq_factor, high_freq_factor, old_context_len = rope_scaling
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.asarray(out)


def np_rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def np_rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def np_rope(x, positions, inv_freq):
    """x: [B, T, N, hd]; HF layout: cos/sin of (pos * inv_freq) repeated over the two halves."""
    angles = positions[:, :, None].astype(np.float64) * inv_freq  # [B, T, hd/2]
    emb = np.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, hd]
    return x * np.cos(emb) + np_rotate_half(x) * np.sin(emb)


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_llama_logits(params, cfg, tokens, positions, mask, segment_ids=None):
    """Logits [B, T, V] (float64) of a Llama decoder; `mask` [B, T]: 1 = real token (key padding mask)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    head = p["embed"].T if cfg.tie_embeddings else p["lm_head"]
    return np_llama_hidden(params, cfg, tokens, positions, mask, segment_ids) @ head


def np_llama_hidden(params, cfg, tokens, positions, mask, segment_ids=None):
    """Final hidden states [B, T, D] (float64, after the last norm). Qwen2 q/k/v biases when the params
    hold them; a Mistral sliding window (query i sees key j iff i - window < j <= i); with `segment_ids`,
    keys of the query's own segment only."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    B, T = tokens.shape
    H, K, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    group = H // K
    inv_freq = np_inv_freq(hd, cfg.rope_theta, cfg.rope_scaling)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    causal = (j <= i) & ((i - j < cfg.sliding_window) if cfg.sliding_window else True)
    x = p["embed"][tokens]  # [B, T, D]
    for layer in range(cfg.n_layers):
        lp = jax.tree.map(lambda a: a[layer], p["layers"])
        h = np_rms_norm(x, lp["attn_norm"]["scale"], cfg.norm_eps)
        q = np.einsum("btd,dnk->btnk", h, lp["attn"]["wq"]) + lp["attn"].get("bq", 0.0)
        k = np.einsum("btd,dnk->btnk", h, lp["attn"]["wk"]) + lp["attn"].get("bk", 0.0)
        v = np.einsum("btd,dnk->btnk", h, lp["attn"]["wv"]) + lp["attn"].get("bv", 0.0)
        q, k = np_rope(q, positions, inv_freq), np_rope(k, positions, inv_freq)
        attn = np.zeros((B, T, H, hd))
        for b in range(B):
            allowed = causal & (mask[b][None, :] > 0)
            if segment_ids is not None:
                allowed = allowed & (segment_ids[b][:, None] == segment_ids[b][None, :])
            for head in range(H):
                kv = head // group
                scores = q[b, :, head] @ k[b, :, kv].T / math.sqrt(hd)
                scores = np.where(allowed, scores, -1e30)  # finite: fully masked (pad) rows stay finite
                attn[b, :, head] = np_softmax(scores) @ v[b, :, kv]
        x = x + np.einsum("btnk,nkd->btd", attn, lp["attn"]["wo"])
        h = np_rms_norm(x, lp["mlp_norm"]["scale"], cfg.norm_eps)
        x = x + (np_silu(h @ lp["mlp"]["gate"]) * (h @ lp["mlp"]["up"])) @ lp["mlp"]["down"]
    return np_rms_norm(x, p["final_norm"]["scale"], cfg.norm_eps)


def np_positions(mask):
    """Real tokens are numbered 0, 1, ...; left padding sits at position 0."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- helpers


def tiny_cfg(**kw):
    base = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40, max_seq_len=64)
    return LlamaConfig(**{**base, **kw})


@functools.lru_cache(maxsize=None)
def _init(cfg, seed):
    model_def = build(cfg)
    key = jax.random.key(seed)
    return compiled(model_def.init, key)(key)  # as in training: init runs inside jit


def perturbed_params(model_def, seed=0):
    """`ModelDef.init` parameters, with norm scales moved away from 1 (and q/k/v biases from 0) so that
    they are exercised."""
    params = _init(model_def.cfg, seed)
    rng = np.random.default_rng(seed)

    def move(path, a):
        if jax.tree_util.keystr(path).endswith(("['scale']", "['bq']", "['bk']", "['bv']")):
            return a + jnp.asarray(0.2 * rng.normal(size=a.shape), a.dtype)
        return a

    return jax.tree_util.tree_map_with_path(move, params)


# Tiny programs: LLVM's optimisation passes dominate CPU compile time and buy nothing here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compiled(fn, *args):
    """`jax.jit(fn)` compiled for `args` with `FAST_COMPILE` (same numerics, about half the compile time)."""
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


def jax_logits(model_def, params, tokens, positions, mask):
    def f(params, tokens, positions, mask):
        model = model_def.module(params)
        hidden, _ = model(tokens, positions, mask)
        return hidden @ model.head_kernel()

    args = (params, tokens, positions, mask)
    return np.asarray(compiled(f, *args)(*args))


PADDINGS = {
    "none": np.array([[1] * 7, [1] * 7]),
    "right": np.array([[1] * 5 + [0] * 2, [1] * 7]),
    "left": np.array([[0] * 3 + [1] * 4, [0] + [1] * 6]),
}

# ----------------------------------------------------------------------------- forward vs NumPy


@pytest.mark.parametrize("attention", ["einsum", "xla"])
@pytest.mark.parametrize("heads", [(4, 2), (4, 4)], ids=["gqa", "mha"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_forward_matches_numpy_reference(tied, heads, attention):
    cfg = tiny_cfg(n_heads=heads[0], n_kv_heads=heads[1], tie_embeddings=tied, attention=attention)
    md = build(cfg)
    params = perturbed_params(md)
    assert ("lm_head" in params) == (not tied)
    mask = np.concatenate([PADDINGS["right"][:1], PADDINGS["left"][:1], PADDINGS["none"][:1]])  # one row each
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=mask.shape).astype(np.int32)
    positions = np.asarray(positions_from_mask(jnp.asarray(mask)))
    np.testing.assert_array_equal(positions, np_positions(mask))
    got = jax_logits(md, params, tokens, positions, mask)
    want = np_llama_logits(params, cfg, tokens, positions, mask)
    real = mask > 0  # padded query rows are not compared
    assert np.abs(want[real]).max() > 0.1  # the comparison is not between near-zero numbers
    for row, name in enumerate(["right padding", "left padding", "no padding"]):
        np.testing.assert_allclose(got[row][real[row]], want[row][real[row]], atol=1e-4, rtol=0, err_msg=name)


def test_forward_matches_numpy_with_rope_scaling_and_head_dim():
    """Llama 3 frequency scaling (all three wavelength regimes hit) and head_dim != d_model / n_heads."""
    cfg = tiny_cfg(head_dim=8, n_heads=2, n_kv_heads=1, rope_theta=500.0, rope_scaling=(4.0, 1.0, 4.0, 48.0),
                   norm_eps=1e-3)
    inv = np_inv_freq(cfg.head_dim, cfg.rope_theta)
    wl = 2 * np.pi / inv
    assert (wl < 12).any() and (wl > 48).any() and ((wl >= 12) & (wl <= 48)).any()
    md = build(cfg)
    params = perturbed_params(md, seed=4)
    mask = np.ones((2, 12), np.int32)
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, size=mask.shape).astype(np.int32)
    positions = np.broadcast_to(np.arange(12) * 5, mask.shape).astype(np.int32)  # angles well past 2*pi
    got = jax_logits(md, params, tokens, positions, mask)
    want = np_llama_logits(params, cfg, tokens, positions, mask)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", [dict(attn_bias=True), dict(sliding_window=3),
                                     dict(attn_bias=True, sliding_window=2, tie_embeddings=True)],
                         ids=["qwen2-biases", "mistral-window", "both"])
@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_variants_match_numpy_reference(variant, attention):
    """Qwen2's q/k/v biases and Mistral's sliding window (shorter than the rows), with padding."""
    cfg = tiny_cfg(**variant, attention=attention)
    md = build(cfg)
    params = perturbed_params(md, seed=2)
    if cfg.attn_bias:
        H, K, hd, L = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.n_layers
        assert {k: v.shape for k, v in params["layers"]["attn"].items() if k.startswith("b")} == \
            {"bq": (L, H, hd), "bk": (L, K, hd), "bv": (L, K, hd)}
    assert cfg.num_params == sum(a.size for a in jax.tree.leaves(params))
    mask = np.concatenate([PADDINGS["right"][:1], PADDINGS["left"][:1], PADDINGS["none"][:1]])
    tokens = np.random.default_rng(8).integers(0, cfg.vocab_size, size=mask.shape).astype(np.int32)
    positions = np_positions(mask).astype(np.int32)
    got = jax_logits(md, params, tokens, positions, mask)
    want = np_llama_logits(params, cfg, tokens, positions, mask)
    real = mask > 0
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    if cfg.sliding_window:  # the window changes the result: the comparison above is not vacuous
        full = np_llama_logits(params, dataclasses.replace(cfg, sliding_window=0), tokens, positions, mask)
        assert np.abs(full[real] - want[real]).max() > 1e-2


def test_left_padding_is_invisible():
    """A left-padded sequence gives the same logits at its real tokens as the sequence on its own."""
    cfg = tiny_cfg()
    md = build(cfg)
    params = perturbed_params(md)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, size=(1, 7)).astype(np.int32)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1]])
    padded = jax_logits(md, params, tokens, np.asarray(positions_from_mask(jnp.asarray(mask))), mask)
    alone = jax_logits(md, params, tokens[:, 3:], np.arange(4)[None].astype(np.int32), np.ones((1, 4), np.int32))
    np.testing.assert_allclose(padded[:, 3:], alone, atol=1e-5, rtol=0)


def test_sequence_token_logprobs_matches_numpy():
    """Leading dims ([B, 2, T] pairs) are kept; log p(token[t+1] | prefix) from the NumPy logits."""
    cfg = tiny_cfg(tie_embeddings=True)
    md = build(cfg)
    params = perturbed_params(md)
    mask = np.array([[[1] * 6 + [0] * 2, [1] * 8], [[0, 0] + [1] * 6, [1] * 4 + [0] * 4]])  # [2, 2, 8]
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, size=mask.shape).astype(np.int32)
    got = np.asarray(compiled(lambda p, t, m: sequence_token_logprobs(md, p, t, m, chunk_size=3),
                              params, tokens, mask)(params, tokens, mask))
    assert got.shape == (2, 2, 7)
    tok, msk = tokens.reshape(4, 8), mask.reshape(4, 8)
    logits = np_llama_logits(params, cfg, tok[:, :-1], np_positions(msk)[:, :-1], msk[:, :-1])
    want = np.take_along_axis(np_log_softmax(logits), tok[:, 1:, None], -1)[..., 0].reshape(2, 2, 7)
    scored = (mask[..., :-1] > 0) & (mask[..., 1:] > 0)  # both the context token and the target are real
    np.testing.assert_allclose(got[scored], want[scored], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- RoPE frequencies


def test_rope_frequencies_llama3_scaling():
    cfg = tiny_cfg(d_model=128 * 4, head_dim=128, rope_theta=500_000.0, rope_scaling=(8.0, 1.0, 4.0, 8192.0))
    got = np.asarray(rope_frequencies(cfg), np.float64)
    unscaled = np_inv_freq(128, 500_000.0)
    want = np_inv_freq(128, 500_000.0, (8.0, 1.0, 4.0, 8192.0))
    assert got.shape == (64,)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=0)
    # Hand-checked regimes. Wavelength 2*pi/f: < 8192/4 = 2048 unchanged; > 8192/1 divided by 8.
    wavelen = 2 * np.pi / unscaled
    high, low = wavelen < 2048, wavelen > 8192
    medium = ~high & ~low
    assert high.sum() > 10 and low.sum() > 10 and medium.sum() >= 3
    assert got[0] == pytest.approx(1.0)  # the highest frequency is exactly 1 / theta**0
    np.testing.assert_allclose(got[high], unscaled[high], rtol=2e-5)
    np.testing.assert_allclose(got[low], unscaled[low] / 8.0, rtol=2e-5)
    np.testing.assert_allclose(got[-1], unscaled[-1] / 8.0, rtol=2e-5)  # the lowest frequency
    # In between, the scaled frequency lies strictly between f/8 and f, and grows towards f with f.
    ratio = got[medium] / unscaled[medium]
    assert np.all((ratio > 1 / 8) & (ratio < 1)), ratio
    assert np.all(np.diff(ratio) < 0)  # index up = frequency down = ratio down
    # Without scaling: plain 1 / theta**(2i/d).
    np.testing.assert_allclose(np.asarray(rope_frequencies(tiny_cfg(head_dim=16, rope_theta=1e4))),
                               1.0 / 1e4 ** (np.arange(8) / 8), rtol=1e-5)


# ----------------------------------------------------------------------------- invariances


def test_scan_and_remat_do_not_change_loss_or_gradients():
    base = tiny_cfg()
    params = perturbed_params(build(base))
    mask = np.array([[1] * 9 + [0] * 3, [0] * 2 + [1] * 10])
    tokens = np.random.default_rng(6).integers(0, base.vocab_size, size=mask.shape).astype(np.int32)

    def loss_and_grad(cfg):
        md = build(cfg)
        loss = lambda p: jnp.sum(sequence_token_logprobs(md, p, tokens, mask, chunk_size=5) * mask[:, 1:])
        return compiled(jax.value_and_grad(loss), params)(params)

    ref_loss, ref_grad = loss_and_grad(base)  # scan_layers=True, remat="none"
    assert np.isfinite(ref_loss)
    for scan in (True, False):
        for remat in ("none", "full", "dots"):
            if scan and remat == "none":
                continue
            cfg = tiny_cfg(scan_layers=scan, remat=remat)
            loss, grad = loss_and_grad(cfg)
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5, err_msg=f"{scan=} {remat=}")
            jax.tree.map_with_path(
                lambda path, a, b: np.testing.assert_allclose(
                    a, b, rtol=0, atol=1e-5, err_msg=f"{scan=} {remat=} {jax.tree_util.keystr(path)}"),
                grad, ref_grad)
    # The gradient reaches every parameter.
    jax.tree.map_with_path(lambda path, g: np.testing.assert_(np.abs(np.asarray(g)).max() > 0,
                                                              jax.tree_util.keystr(path)), ref_grad)


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("scan_layers, variant", [(True, {}), (False, {}),
                                                  (True, dict(sliding_window=3, attn_bias=True))],
                         ids=["scan", "unrolled", "window-biases"])
@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_kv_cache_decoding_matches_full_forward(scan_layers, variant, attention):
    cfg = tiny_cfg(n_heads=4, n_kv_heads=2, scan_layers=scan_layers, attention=attention, **variant)
    md = build(cfg)
    params = perturbed_params(build(tiny_cfg(**variant)))  # same parameter tree either way
    mask = np.array([[1] * 7, [0] * 3 + [1] * 4])  # no padding; left padding
    B, T = mask.shape
    S = T + 3  # cache slots past the end are never written and must stay invisible
    tokens = np.random.default_rng(7).integers(0, cfg.vocab_size, size=mask.shape).astype(np.int32)
    positions = np.asarray(positions_from_mask(jnp.asarray(mask)))
    key_mask = np.concatenate([mask, np.ones((B, S - T), mask.dtype)], axis=1)

    full = compiled(lambda p: md.module(p)(tokens, positions, mask)[0], params)
    want = np.asarray(full(params))
    real = mask > 0

    def step(params, tok, pos, cache, index):
        return md.module(params)(tok, pos, key_mask, cache, index)

    cache = init_cache(cfg, B, S)
    assert cache["k"].shape == (cfg.n_layers, B, S, cfg.n_kv_heads, cfg.head_dim)
    step1 = compiled(step, params, tokens[:, :1], positions[:, :1], cache, jnp.int32(0))
    step4 = compiled(step, params, tokens[:, :4], positions[:, :4], cache, jnp.int32(0))

    # One token at a time.
    outs = []
    for t in range(T):
        h, cache = step1(params, tokens[:, t:t + 1], positions[:, t:t + 1], cache, jnp.int32(t))
        outs.append(np.asarray(h))
    got = np.concatenate(outs, axis=1)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)

    # A 4-token prefill, then the rest one at a time (a [B, 1] query at cache_index 4, 5, ...).
    cache = init_cache(cfg, B, S)
    h0, cache = step4(params, tokens[:, :4], positions[:, :4], cache, jnp.int32(0))
    outs = [np.asarray(h0)]
    for t in range(4, T):
        h, cache = step1(params, tokens[:, t:t + 1], positions[:, t:t + 1], cache, jnp.int32(t))
        outs.append(np.asarray(h))
    got = np.concatenate(outs, axis=1)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)
    assert np.all(np.asarray(cache["k"])[:, :, T:] == 0)  # nothing written past the last token


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("variant", [{}, dict(sliding_window=3, attn_bias=True)], ids=["llama", "window-biases"])
@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_packed_row_matches_separate_documents(variant, attention):
    """Two documents packed in one row (positions restarting at 0, segment ids 1 and 2, one pad) give
    each document's own per-token log-probs, and match the NumPy reference with block-diagonal
    attention."""
    cfg = tiny_cfg(**variant, attention=attention)
    md = build(cfg)
    params = perturbed_params(md, seed=5)
    rng = np.random.default_rng(9)
    doc1, doc2 = rng.integers(0, cfg.vocab_size, size=6), rng.integers(0, cfg.vocab_size, size=4)
    tokens = np.concatenate([doc1, doc2, [0]])[None].astype(np.int32)
    positions = np.concatenate([np.arange(6), np.arange(4), [0]])[None].astype(np.int32)
    segments = np.array([[1] * 6 + [2] * 4 + [0]], np.int32)
    mask = (segments > 0).astype(np.int32)

    def logps(tok, msk, pos, seg):
        fn = lambda p, t, m, po, s: sequence_token_logprobs(md, p, t, m, chunk_size=4, positions=po,  # noqa: E731
                                                            segment_ids=s)
        return np.asarray(compiled(fn, params, tok, msk, pos, seg)(params, tok, msk, pos, seg))

    packed = logps(tokens, mask, positions, segments)[0]  # [10]: entry t scores token t + 1
    apart = np.zeros((2, 6), np.int32)  # the documents as two right-padded rows
    apart[0], apart[1, :4] = doc1, doc2
    apart_mask = (np.arange(6) < np.array([[6], [4]])).astype(np.int32)
    alone = logps(apart, apart_mask, np_positions(apart_mask).astype(np.int32), apart_mask)
    np.testing.assert_allclose(packed[:5], alone[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[6:9], alone[1, :3], atol=1e-5, rtol=0)  # packed[5]: doc2's first token
    logits = np_llama_logits(params, cfg, tokens, positions, mask, segments)
    want = np.take_along_axis(np_log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)[0, :, 0]
    np.testing.assert_allclose(packed[:9], want[:9], atol=1e-4, rtol=0)
    # With one segment the second document would see the first: the comparison is not vacuous.
    unsegmented = logps(tokens, mask, positions, mask)[0]
    assert np.abs(unsegmented[6:9] - alone[1, :3]).max() > 1e-3


def test_packed_rewards_read_the_last_document():
    cfg = tiny_cfg(head="scalar")
    md = build(cfg)
    params = perturbed_params(md, seed=6)
    rng = np.random.default_rng(10)
    doc1, doc2 = rng.integers(0, cfg.vocab_size, size=5), rng.integers(0, cfg.vocab_size, size=3)
    tokens = np.concatenate([doc1, doc2])[None].astype(np.int32)
    positions = np.concatenate([np.arange(5), np.arange(3)])[None].astype(np.int32)
    segments = np.array([[1] * 5 + [2] * 3], np.int32)
    packed = jax.jit(lambda p, t, m, po, s: sequence_rewards(md, p, t, m, positions=po, segment_ids=s))(
        params, tokens, np.ones_like(tokens), positions, segments)
    alone = jax.jit(lambda p, t, m: sequence_rewards(md, p, t, m))(params, doc2[None].astype(np.int32),
                                                                  np.ones((1, 3), np.int32))
    np.testing.assert_allclose(np.asarray(packed), np.asarray(alone), atol=1e-5, rtol=0)


def test_segment_ids_need_no_cache():
    cfg = tiny_cfg()
    md = build(cfg)
    params = _init(cfg, 0)
    tok = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match="segment_ids"):
        md.module(params)(tok, tok, np.ones((1, 4), np.int32), init_cache(cfg, 1, 4), 0, segment_ids=tok)


# ----------------------------------------------------------------------------- parameter layout


def test_logical_axis_names_match_shapes_and_rules():
    rule_names = {name for name, _ in RULES}
    for tied in (True, False):
        md = build(tiny_cfg(tie_embeddings=tied))
        shapes = jax.tree_util.tree_flatten_with_path(md.shapes)[0]
        specs, spec_def = jax.tree_util.tree_flatten_with_path(
            md.logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        assert jax.tree.structure(md.shapes) == jax.tree.structure(
            jax.tree.map(lambda s: 0, md.logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)))
        assert len(shapes) == len(specs)
        for (path, sds), (spath, spec) in zip(shapes, specs):
            name = jax.tree_util.keystr(path)
            assert path == spath
            assert isinstance(spec, PartitionSpec), name
            assert len(spec) == len(sds.shape), (name, spec, sds.shape)
            assert all(isinstance(a, str) for a in spec), (name, spec)  # every dimension is named
            assert set(spec) <= rule_names, (name, spec)
            if name.startswith("['layers']"):
                assert spec[0] == "layers" and sds.shape[0] == md.cfg.n_layers, name
        assert ("lm_head" in md.shapes) == (not tied)
    biased = build(tiny_cfg(attn_bias=True)).logical_specs["layers"]["attn"]
    assert biased["bq"] == PartitionSpec("layers", "q_heads", "head_dim")
    assert biased["bk"] == biased["bv"] == PartitionSpec("layers", "kv_heads", "head_dim")

    # Spot checks against the published layout.
    cfg = tiny_cfg()
    md = build(cfg)
    L, D, H, K, hd, F, V = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    assert md.logical_specs["embed"] == PartitionSpec("vocab", "embed")
    assert md.logical_specs["layers"]["attn"]["wk"] == PartitionSpec("layers", "embed", "kv_heads", "head_dim")
    assert md.logical_specs["layers"]["mlp"]["down"] == PartitionSpec("layers", "mlp", "embed")
    expected = {"embed": (V, D), "lm_head": (D, V), "final_norm": {"scale": (D,)},
                "layers": {"attn": {"wq": (L, D, H, hd), "wk": (L, D, K, hd), "wv": (L, D, K, hd),
                                    "wo": (L, H, hd, D)},
                           "mlp": {"gate": (L, D, F), "up": (L, D, F), "down": (L, F, D)},
                           "attn_norm": {"scale": (L, D)}, "mlp_norm": {"scale": (L, D)}}}
    assert jax.tree.map(lambda s: tuple(s.shape), md.shapes) == expected


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name, published", [
    ("llama3_8b", 8.03e9),       # Meta Llama 3 8B
    ("llama2_7b", 6.74e9),       # Llama 2 7B (6,738,415,616)
    ("llama3_1b", 1.236e9),      # Llama 3.2 1B, tied embeddings (1,235,814,400)
    ("smollm2_135m", 134.5e6),   # SmolLM2-135M, tied embeddings (134,515,008)
    ("mistral_7b", 7.24e9),      # Mistral 7B v0.1 (7,241,732,096)
    ("qwen2_0_5b", 494.0e6),     # Qwen2-0.5B, q/k/v biases, tied embeddings (494,032,768)
])
def test_preset_sizes(name, published):
    cfg = preset(name)
    assert abs(cfg.num_params - published) <= 0.005 * published, cfg.num_params
    md = build(cfg)  # abstract: shapes only, nothing allocated
    leaves = jax.tree.leaves(md.shapes)
    assert all(isinstance(s, jax.ShapeDtypeStruct) for s in leaves)
    assert sum(math.prod(s.shape) for s in leaves) == cfg.num_params


def test_exact_published_counts():
    """The exact parameter counts of the released checkpoints (Hugging Face model cards / safetensors)."""
    assert preset("llama3_8b").num_params == 8_030_261_248
    assert preset("llama2_7b").num_params == 6_738_415_616
    assert preset("llama3_1b").num_params == 1_235_814_400
    assert preset("smollm2_135m").num_params == 134_515_008
    assert preset("mistral_7b").num_params == 7_241_732_096
    assert preset("qwen2_0_5b").num_params == 494_032_768


# ----------------------------------------------------------------------------- config errors


def test_variant_fields_are_validated():
    with pytest.raises(ValueError, match=r"model\.sliding_window"):
        tiny_cfg(sliding_window=-1)
    with pytest.raises(ValueError, match=r"model\.attn_bias"):
        tiny_cfg(attn_bias=1)


def test_heads_not_divisible_by_kv_heads():
    with pytest.raises(ValueError, match=r"model\.n_heads"):
        tiny_cfg(n_heads=6, n_kv_heads=4)
    with pytest.raises(ValueError, match=r"model\.n_heads"):
        preset("tiny", n_kv_heads=3)


@pytest.mark.parametrize("tied", [True, False])
def test_scalar_head_reads_the_last_real_token(tied):
    """A reward model's output: the float64 NumPy decoder's final hidden state at the last real token
    of each row, times the score vector; the same sequence right- and left-padded scores the same."""
    cfg = tiny_cfg(head="scalar", tie_embeddings=tied)
    model_def = build(cfg)
    params = perturbed_params(model_def, seed=3)
    assert "score" in params and "lm_head" not in params
    assert cfg.num_params == sum(a.size for a in jax.tree.leaves(params))
    rng = np.random.default_rng(0)
    T, seq = 10, rng.integers(3, cfg.vocab_size, size=6)
    right = np.zeros((2, T), np.int32)
    mask_r = np.zeros((2, T), np.int32)
    right[0, :6], mask_r[0, :6] = seq, 1  # right padding
    right[1, :9], mask_r[1, :9] = rng.integers(3, cfg.vocab_size, size=9), 1
    left, mask_l = np.zeros_like(right), np.zeros_like(mask_r)
    left[0, T - 6:], mask_l[0, T - 6:] = seq, 1  # the same sequence, left-padded
    left[1], mask_l[1] = right[1], mask_r[1]
    got = jax.jit(lambda p, t, m: sequence_rewards(model_def, p, t, m))(params, np.stack([right, left]),
                                                                         np.stack([mask_r, mask_l]))
    assert got.shape == (2, 2)
    score = np.asarray(params["score"], np.float64)
    for which, (tokens, mask) in enumerate(((right, mask_r), (left, mask_l))):
        hidden = np_llama_hidden(params, cfg, tokens, np_positions(mask), mask)
        for b in range(2):
            last = max(np.flatnonzero(mask[b]))
            np.testing.assert_allclose(float(got[which, b]), hidden[b, last] @ score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(got[0, 0]), float(got[1, 0]), rtol=1e-4, atol=1e-5)


def test_value_head_shares_the_backbone():
    """`model.value_head`: one forward gives the LM's log-probs of tokens[1:] and the values of the
    states that predict them (the float64 NumPy decoder's hidden state at t-1 times the value vector)."""
    cfg = tiny_cfg(value_head=True)
    model_def = build(cfg)
    params = perturbed_params(model_def, seed=5)
    assert params["value"].shape == (cfg.d_model,) and cfg.num_params == sum(a.size for a in jax.tree.leaves(params))
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, cfg.vocab_size, size=(2, 7)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :2] = 0  # left padding
    from pjax.models import sequence_logprobs_and_values

    logps, values = jax.jit(lambda p, t, m: sequence_logprobs_and_values(model_def, p, t, m))(params, tokens, mask)
    hidden = np_llama_hidden(params, cfg, tokens, np_positions(mask), mask)
    np.testing.assert_allclose(np.asarray(values), hidden[:, :-1] @ np.asarray(params["value"], np.float64),
                               rtol=1e-4, atol=1e-4)
    plain = {k: v for k, v in params.items() if k != "value"}
    want = sequence_token_logprobs(build(tiny_cfg()), plain, tokens, mask)
    np.testing.assert_allclose(np.asarray(logps), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_separate_value_model_has_its_own_backbone():
    """`model.value_backbone='separate'`: the values come from the value model's own backbone (`critic`:
    embeddings, layers, final norm, value vector), checked with the float64 NumPy decoder on the critic's
    params; the log-probs are the policy's alone, and the critic adds no LM head."""
    cfg = tiny_cfg(value_head=True, value_backbone="separate")
    model_def = build(cfg)
    params = perturbed_params(model_def, seed=6)
    assert "value" not in params and set(params["critic"]) == {"embed", "layers", "final_norm", "value"}
    assert cfg.num_params == sum(a.size for a in jax.tree.leaves(params))
    rng = np.random.default_rng(2)
    tokens = rng.integers(3, cfg.vocab_size, size=(2, 7)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[0, :3] = 0
    from pjax.models import sequence_logprobs_and_values

    logps, values = jax.jit(lambda p, t, m: sequence_logprobs_and_values(model_def, p, t, m))(params, tokens, mask)
    critic = params["critic"]
    hidden = np_llama_hidden(critic, tiny_cfg(), tokens, np_positions(mask), mask)
    np.testing.assert_allclose(np.asarray(values), hidden[:, :-1] @ np.asarray(critic["value"], np.float64),
                               rtol=1e-4, atol=1e-4)
    plain = {k: v for k, v in params.items() if k != "critic"}
    want = sequence_token_logprobs(build(tiny_cfg()), plain, tokens, mask)
    np.testing.assert_allclose(np.asarray(logps), np.asarray(want), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="model.value_backbone='separate'"):
        tiny_cfg(value_backbone="separate")
