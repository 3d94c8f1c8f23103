"""The Llama 2/3 family as Flax NNX modules.

RMSNorm, rotary embeddings (with Llama 3 frequency scaling), grouped-query attention with an optional
KV cache, SwiGLU, tied or untied embeddings; the variants Mistral (sliding-window attention) and Qwen2
(q/k/v projection biases) are config switches, and rows may pack several documents (`segment_ids`).
Layers are created stacked (`nnx.vmap`) and run with `jax.lax.scan`, so compile time does not grow
with depth; each layer can be rematerialised.

Every parameter carries logical axis names (`out_sharding` metadata); the rules table in the config
maps them to mesh axes (see `pjax.sharding`). The model returns final hidden states: the LM head is
applied by `pjax.models.heads.token_logprobs` in chunks, so no `[B, T, V]` float32 array is built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from pjax import sharding
from pjax.models import attention
from pjax.models.ops import dense

Array = jax.Array
Cache = dict[str, Array]

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    head_dim: int = 0  # 0: d_model // n_heads
    rope_theta: float = 10_000.0
    # Llama 3 scaling: (factor, low_freq_factor, high_freq_factor, original_max_position); () = off.
    rope_scaling: tuple[float, ...] = ()
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True
    head: str = "lm"  # lm: next-token logits | scalar: one reward/value per sequence (read at its last token)
    reward_heads: int = 1  # scalar head: E > 1 is an ensemble of E reward heads on one backbone ([D, E])
    value_head: bool = False  # lm head: also a per-token value head (PPO) ...
    value_backbone: str = "shared"  # ... on the policy's backbone | "separate": on its own copy (a value model)
    attn_bias: bool = False  # Qwen2: biases on the q/k/v projections (not on the output projection)
    # Mistral: query index i sees key index j iff i - window < j <= i (Hugging Face's convention); 0 = off.
    sliding_window: int = 0
    attention: str = "auto"  # the attention kernel: auto | einsum | xla | cudnn (pjax.models.attention)

    def __post_init__(self):
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key}={getattr(self, key)} must be positive")
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.n_kv_heads}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}: expected one of {sorted(REMAT_POLICIES)}")
        if self.rope_scaling and (len(self.rope_scaling) != 4 or not self.rope_scaling[1] < self.rope_scaling[2]):
            raise ValueError(f"model.rope_scaling={self.rope_scaling}: expected () or (factor, low_freq_factor, "
                             "high_freq_factor, original_max_position) with low_freq_factor < high_freq_factor")
        attention.resolve(self.attention, self.dtype, platform="cpu")  # validates the name
        if self.sliding_window < 0:
            raise ValueError(f"model.sliding_window={self.sliding_window} must be >= 0 (0 = full attention)")
        if self.reward_heads < 1 or (self.reward_heads > 1 and self.head != "scalar"):
            raise ValueError(f"model.reward_heads={self.reward_heads}: must be >= 1, and > 1 only with "
                             f"model.head='scalar' (it is {self.head!r})")
        if self.value_head and self.head != "lm":
            raise ValueError(f"model.value_head=True: a value head shares an LM policy's backbone (model.head='lm', "
                             f"not {self.head!r})")
        if self.value_backbone not in ("shared", "separate"):
            raise ValueError(f"model.value_backbone={self.value_backbone!r}: expected 'shared' or 'separate'")
        if self.value_backbone == "separate" and not self.value_head:
            raise ValueError("model.value_backbone='separate' places a value head on its own backbone: set "
                             "model.value_head=True")
        if not isinstance(self.attn_bias, bool):
            raise ValueError(f"model.attn_bias={self.attn_bias!r}: expected True or False")
        if self.head not in ("lm", "scalar"):
            raise ValueError(f"model.head={self.head!r}: expected 'lm' or 'scalar'")
        for key in ("param_dtype", "dtype"):
            if getattr(self, key) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"model.{key}={getattr(self, key)!r}: expected float32, bfloat16 or float16")

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied; a scalar head has `d_model` weights per
        reward head in place of the LM head)."""
        d, f, hd = self.d_model, self.d_ff, self.head_dim
        attn = d * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        if self.attn_bias:
            attn += hd * (self.n_heads + 2 * self.n_kv_heads)
        layer = attn + 3 * d * f + 2 * d
        separate_lm_head = self.head == "lm" and not self.tie_embeddings
        emb = self.vocab_size * d * (2 if separate_lm_head else 1) + (d * self.reward_heads if self.head == "scalar" else 0) \
            + (d if self.value_head and self.value_backbone == "shared" else 0)
        total = self.n_layers * layer + emb + d
        return total + (self.critic_config().num_params if self.value_backbone == "separate" else 0)

    def critic_config(self) -> "LlamaConfig":
        """The separate value model (`value_backbone='separate'`): the policy's backbone shape with a value
        head and no LM head of its own."""
        return dataclasses.replace(self, value_backbone="shared", tie_embeddings=True)


PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and the demo (vocab 512 = the synthetic task's SentencePiece model).
    "tiny": dict(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=352,
                 max_seq_len=256, tie_embeddings=True),
    "smollm2_135m": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_ff=1536, rope_theta=100_000.0, tie_embeddings=True, max_seq_len=8192),
    "llama3_1b": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                      d_ff=8192, rope_theta=500_000.0, rope_scaling=(32.0, 1.0, 4.0, 8192.0),
                      tie_embeddings=True, max_seq_len=131072),
    "llama3_8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      d_ff=14336, rope_theta=500_000.0, rope_scaling=(8.0, 1.0, 4.0, 8192.0),
                      max_seq_len=131072),
    "llama2_7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                      d_ff=11008, max_seq_len=4096),
    # mistralai/Mistral-7B-v0.1 config.json (v0.2+ drop the window and use rope_theta 1e6).
    "mistral_7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       d_ff=14336, max_seq_len=32768, sliding_window=4096),
    # Qwen/Qwen2-0.5B config.json (use_sliding_window false: full attention in every layer).
    "qwen2_0_5b": dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
                       d_ff=4864, rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True,
                       attn_bias=True, max_seq_len=131072),
}


def resolved(name: str) -> dict[str, Any]:
    """Every LlamaConfig field for preset `name` (the preset's values over the defaults)."""
    if name not in PRESETS:
        raise ValueError(f"model.preset={name!r}: expected one of {sorted(PRESETS)}")
    defaults = {f.name: f.default for f in dataclasses.fields(LlamaConfig)
                if f.default is not dataclasses.MISSING}
    values = {**defaults, **PRESETS[name]}
    values["rope_scaling"] = tuple(values["rope_scaling"])
    return values


def preset(name: str, **overrides: Any) -> LlamaConfig:
    return LlamaConfig(**{**resolved(name), **overrides})


def _dtype(name: str):
    return jnp.dtype(name)


def rope_frequencies(cfg: LlamaConfig) -> Array:
    """Inverse frequencies [head_dim // 2], with Llama 3 scaling when `cfg.rope_scaling` is set."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    if not cfg.rope_scaling:
        return inv
    factor, low, high, original = cfg.rope_scaling
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = original / low, original / high
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


Rope = tuple[Array, Array]


def rope_tables(positions: Array, inv_freq: Array) -> Rope:
    """(sin, cos) `[B, T, 1, hd/2]` float32 of the positions: computed once per forward, shared by every layer."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
    return jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]


def apply_rope(x: Array, rope: Rope) -> Array:
    """Rotary embedding, half-split layout (as Hugging Face checkpoints). x: [B, T, N, hd]."""
    sin, cos = rope
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _param(rngs: nnx.Rngs, shape, axes, dtype, scale: float | None = None) -> nnx.Param:
    """A normally initialised parameter (std = 1/sqrt(fan_in) unless given) with logical axis names."""
    std = scale if scale is not None else 1.0 / math.sqrt(shape[0])
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), out_sharding=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query attention; `cache` holds this layer's K/V `[B, S, n_kv, hd]`."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, k, hd, pd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, _dtype(cfg.param_dtype)
        self.wq = _param(rngs, (d, h, hd), ("embed", "q_heads", "head_dim"), pd)
        self.wk = _param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.wv = _param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.wo = _param(rngs, (h, hd, d), ("q_heads", "head_dim", "embed"), pd,
                         scale=1.0 / math.sqrt(h * hd * 2 * cfg.n_layers))
        if cfg.attn_bias:
            self.bq = nnx.Param(jnp.zeros((h, hd), pd), out_sharding=("q_heads", "head_dim"))
            self.bk = nnx.Param(jnp.zeros((k, hd), pd), out_sharding=("kv_heads", "head_dim"))
            self.bv = nnx.Param(jnp.zeros((k, hd), pd), out_sharding=("kv_heads", "head_dim"))

    def __call__(self, x, rope: Rope, allowed: Array, cache: Cache | None, cache_index):
        """allowed: [B, T, S] bool, which keys each query sees (`attention_mask`)."""
        cfg = self.cfg
        dt = _dtype(cfg.dtype)
        q = dense("btd,dhk->bthk", x, self.wq[...].astype(dt))
        k = dense("btd,dhk->bthk", x, self.wk[...].astype(dt))
        v = dense("btd,dhk->bthk", x, self.wv[...].astype(dt))
        if cfg.attn_bias:
            q, k, v = q + self.bq[...].astype(dt), k + self.bk[...].astype(dt), v + self.bv[...].astype(dt)
        q = sharding.constrain(apply_rope(q, rope), ("act_batch", "act_seq", "act_heads", None))
        k = apply_rope(k, rope)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
            cache = {"k": k, "v": v}
        kernel = attention.resolve(cfg.attention, cfg.dtype)
        out = attention.attend(q, k.astype(dt), v.astype(dt), allowed, kernel, causal=cache is None)
        out = dense("bthk,hkd->btd", out, self.wo[...].astype(dt))
        return out, cache


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        d, f, pd = cfg.d_model, cfg.d_ff, _dtype(cfg.param_dtype)
        self.dtype = _dtype(cfg.dtype)
        self.gate = _param(rngs, (d, f), ("embed", "mlp"), pd)
        self.up = _param(rngs, (d, f), ("embed", "mlp"), pd)
        self.down = _param(rngs, (f, d), ("mlp", "embed"), pd, scale=1.0 / math.sqrt(f * 2 * cfg.n_layers))

    def __call__(self, x: Array) -> Array:
        dt = self.dtype
        h = jax.nn.silu(dense("btd,df->btf", x, self.gate[...].astype(dt))) * \
            dense("btd,df->btf", x, self.up[...].astype(dt))
        h = sharding.constrain(h, ("act_batch", "act_seq", "act_mlp"))
        return dense("btf,fd->btd", h, self.down[...].astype(dt))


class Block(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        pd = _dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, rope, allowed, cache, cache_index):
        h, cache = self.attn(self.attn_norm(x), rope, allowed, cache, cache_index)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return sharding.constrain(x, ("act_batch", "act_seq", "act_embed")), cache


class Llama(nnx.Module):
    """Decoder-only Llama. `__call__` returns final hidden states `[B, T, D]` and the updated cache."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = _dtype(cfg.param_dtype)
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pd,
                            scale=1.0 / math.sqrt(cfg.d_model))

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        if cfg.head == "scalar":
            shape, axes = ((cfg.d_model,), ("embed",)) if cfg.reward_heads == 1 else \
                ((cfg.d_model, cfg.reward_heads), ("embed", None))
            self.score = _param(rngs, shape, axes, pd, scale=1.0 / math.sqrt(cfg.d_model))
        elif not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pd)
        if cfg.value_head and cfg.value_backbone == "separate":
            self.critic = Llama(cfg.critic_config(), rngs=rngs)
        elif cfg.value_head:
            self.value = _param(rngs, (cfg.d_model,), ("embed",), pd, scale=1.0 / math.sqrt(cfg.d_model))

    def head_kernel(self) -> Array:
        """The LM head as a `[D, V]` matrix (the transposed embedding when tied)."""
        if self.cfg.head != "lm":
            raise ValueError(f"model.head={self.cfg.head!r} has no LM head")
        return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

    def __call__(self, tokens: Array, positions: Array, key_mask: Array,
                 cache: Cache | None = None, cache_index: Array | int = 0,
                 segment_ids: Array | None = None, branch_ids: Array | None = None) -> tuple[Array, Cache | None]:
        """tokens, positions: [B, T]; key_mask: [B, S] (1 = attendable key; S = T, or the cache length).

        With a cache (`{"k", "v"}: [L, B, S, n_kv, hd]`) the new keys are written at `cache_index`.
        Query t sits at sequence index `cache_index + t` and sees keys at indices <= its own (and, with
        `cfg.sliding_window`, > its own minus the window). `segment_ids` [B, T] (packed rows, no cache)
        further restricts each query to keys of its own segment; positions then restart per segment.
        `branch_ids` [B, T] (with `segment_ids`; `pjax.data.layout`'s shared-prompt pairs): a query sees
        a key only if the key's branch is 0 (shared) or its own, and the window counts positions.
        """
        cfg = self.cfg
        chex.assert_rank([tokens, positions, key_mask], 2)
        chex.assert_equal_shape([tokens, positions])
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed rows) cannot be combined with a KV cache")
            chex.assert_equal_shape([tokens, segment_ids])
        if branch_ids is not None and segment_ids is None:
            raise ValueError("branch_ids (shared-prompt pairs) need segment_ids")
        x = jnp.take(self.embed[...], tokens, axis=0).astype(_dtype(cfg.dtype))
        x = sharding.constrain(x, ("act_batch", "act_seq", "act_embed"))
        rope = rope_tables(positions, rope_frequencies(cfg))
        allowed = attention_mask(key_mask, tokens.shape[1], cache_index, cfg.sliding_window, segment_ids,
                                 branch_ids, positions)
        graphdef, state = nnx.split(self.layers)

        def layer(x, xs):
            layer_state, layer_cache = xs
            block = nnx.merge(graphdef, layer_state)
            return block(x, rope, allowed, layer_cache, cache_index)

        policy = REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x, cache = jax.lax.scan(layer, x, (state, cache))
        else:
            outs = []
            for i in range(cfg.n_layers):
                x, c = layer(x, jax.tree.map(lambda a: a[i], (state, cache)))
                outs.append(c)
            cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)
        return self.final_norm(x), cache


def attention_mask(key_mask: Array, num_queries: int, cache_index: Array | int = 0, sliding_window: int = 0,
                   segment_ids: Array | None = None, branch_ids: Array | None = None,
                   positions: Array | None = None) -> Array:
    """Which keys each query may attend to: `[B, T, S]` bool for `key_mask` `[B, S]` and T queries at
    sequence indices `cache_index + t`.

    Query index i sees key index j iff j <= i (causal), `key_mask[j]` is set, i - j < `sliding_window`
    when it is positive (as `transformers`' `sliding_window_overlay`: kv_idx > q_idx - window), and,
    with `segment_ids` `[B, T]` (S = T), both carry the same segment id. With `branch_ids` `[B, T]`
    (and `positions`), also the key's branch is 0 or the query's, and the window is over positions.
    """
    query_idx = cache_index + jnp.arange(num_queries)
    key_idx = jnp.arange(key_mask.shape[1])
    allowed = (key_idx[None, :] <= query_idx[:, None])[None]
    if sliding_window and branch_ids is None:
        allowed &= (key_idx[None, :] > query_idx[:, None] - sliding_window)[None]
    allowed = allowed & (key_mask[:, None, :] > 0)
    if segment_ids is not None:
        allowed &= segment_ids[:, :, None] == segment_ids[:, None, :]
    if branch_ids is not None:
        allowed &= (branch_ids[:, None, :] == 0) | (branch_ids[:, None, :] == branch_ids[:, :, None])
        if sliding_window:
            allowed &= positions[:, None, :] > positions[:, :, None] - sliding_window
    return allowed


def init_cache(cfg: LlamaConfig, batch: int, length: int) -> Cache:
    shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, _dtype(cfg.dtype)), "v": jnp.zeros(shape, _dtype(cfg.dtype))}
