"""Batched sampling with a KV cache: prefill, then decode in one jitted `while_loop`.

Prompts are left-padded (`pjax.data.encode_prompts`), so every row's next token is written at the
same cache index; positions count only real tokens. Sampling at temperature T draws from
`softmax(logits / T)` (optionally restricted by top-k / top-p), and the returned log-probs are
`log softmax(logits / T)` of the drawn tokens: exactly what the training path computes with
`temperature=T`, so online objectives see consistent log-probs. `temperature=0` is greedy decoding
(log-probs then at T=1). Runs on whatever mesh is in scope; parameters are never gathered.
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp

from pjax import sharding
from pjax.models import ModelDef, init_cache, positions_from_mask

Array = jax.Array


def filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
    """Mask (to -inf) tokens outside the top-k and outside the smallest set with mass >= top_p."""
    neg = jnp.finfo(logits.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        sorted_keep = mass_before < top_p  # always keeps the most likely token
        keep = jnp.zeros_like(sorted_keep).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_keep)
        logits = jnp.where(keep, logits, neg)
    return logits


@functools.partial(jax.jit, static_argnames=("model_def", "max_new_tokens", "eos_id", "pad_id",
                                             "temperature", "top_k", "top_p"))
def generate(model_def: ModelDef, params: Any, prompt_tokens: Array, prompt_mask: Array, rng: Array, *,
             max_new_tokens: int, eos_id: int | tuple[int, ...], pad_id: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0) -> dict[str, Array]:
    """Sample continuations of left-padded prompts; a row ends at `eos_id` (or any of several, e.g. a
    tokenizer's `stop_ids`: Llama 3's <|eot_id|> as well as <|end_of_text|>).

    Returns `tokens`/`mask` `[B, P + N]` (prompt then completion), `completion_mask` `[B, P + N]`,
    `completion` `[B, N]`, `logprobs` `[B, N]` (0 after the end), and `lengths` `[B]` (EOS included).
    """
    return _sample((model_def,), (params,), (1.0,), prompt_tokens, prompt_mask, rng, max_new_tokens=max_new_tokens,
                   eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p)


@functools.partial(jax.jit, static_argnames=("model_def", "ref_def", "max_new_tokens", "eos_id", "pad_id",
                                             "temperature", "top_k", "top_p"))
def generate_mixture(model_def: ModelDef, params: Any, ref_def: ModelDef, ref_params: Any, mixture_coef: Array,
                     prompt_tokens: Array, prompt_mask: Array, rng: Array, *, max_new_tokens: int,
                     eos_id: int | tuple[int, ...], pad_id: int, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0) -> dict[str, Array]:
    """Sample from the geometric mixture of a policy and a reference, token by token:
    `pi_mix(y_t | x, y_<t) ∝ pi(y_t | ...)^(1 - beta) * pi_ref(y_t | ...)^beta` with beta = `mixture_coef`
    (Nash-MD, Munos et al. 2024; TRL's `GeometricMixtureWrapper`), both at logits / T. Each model keeps
    its own KV cache. Returns what `generate` returns; `logprobs` are the mixture's."""
    beta = jnp.asarray(mixture_coef, jnp.float32)
    return _sample((model_def, ref_def), (params, ref_params), (1.0 - beta, beta), prompt_tokens, prompt_mask, rng,
                   max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, temperature=temperature,
                   top_k=top_k, top_p=top_p)


def _sample(model_defs: tuple[ModelDef, ...], params: tuple[Any, ...], weights: tuple[Any, ...],
            prompt_tokens: Array, prompt_mask: Array, rng: Array, *, max_new_tokens: int,
            eos_id: int | tuple[int, ...], pad_id: int, temperature: float, top_k: int,
            top_p: float) -> dict[str, Array]:
    """The decode loop over one model or a geometric mixture of several (log-probs at logits / T,
    weighted by `weights`, summing to 1, then renormalised)."""
    if not 0.0 < top_p <= 1.0 or top_k < 0 or temperature < 0:
        raise ValueError(f"sampling: need 0 < top_p <= 1, top_k >= 0, temperature >= 0 "
                         f"(got top_p={top_p}, top_k={top_k}, temperature={temperature})")
    chex.assert_rank(prompt_tokens, 2)
    chex.assert_equal_shape((prompt_tokens, prompt_mask))
    B, P = prompt_tokens.shape
    N = max_new_tokens
    stop = (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)
    modules = [d.module(p) for d, p in zip(model_defs, params)]
    kernels = [m.head_kernel() for m in modules]
    greedy = temperature == 0.0
    scale = 1.0 if greedy else temperature

    prompt_mask = prompt_mask.astype(jnp.int32)
    key_mask = jnp.concatenate([prompt_mask, jnp.zeros((B, N), jnp.int32)], axis=1)
    caches, lasts = [], []
    for d, m in zip(model_defs, modules):
        cache = jax.tree.map(lambda c: sharding.constrain(c, (None, "act_batch", None, "act_kv_heads", None)),
                             init_cache(d.cfg, B, P + N))
        hidden, cache = m(prompt_tokens, positions_from_mask(prompt_mask), key_mask, cache, 0)
        caches.append(cache)
        lasts.append(hidden[:, -1])
    next_position = prompt_mask.sum(-1)

    def head_logits(h, k):  # as `token_logprobs`: compute-dtype inputs, float32 result (no bf16 rounding)
        return jnp.matmul(h, k.astype(h.dtype), preferred_element_type=jnp.float32) / scale

    def next_token_logits(lasts):
        if len(modules) == 1:
            return head_logits(lasts[0], kernels[0])
        return sum(w * jax.nn.log_softmax(head_logits(h, k), axis=-1) for w, h, k in zip(weights, lasts, kernels))

    def cond(carry):
        i, *_, done, _ = carry
        return (i < N) & ~jnp.all(done)

    def body(carry):
        i, caches, lasts, key_mask, out, logps, done, rng = carry
        rng, sub = jax.random.split(rng)
        logits = next_token_logits(lasts)
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        if greedy:
            token = jnp.argmax(logits, axis=-1)
        else:
            token = jax.random.categorical(sub, filter_logits(logits, top_k, top_p), axis=-1)
        token = jnp.where(done, pad_id, token).astype(jnp.int32)
        logp = jnp.where(done, 0.0, jnp.take_along_axis(logp_all, token[:, None], -1)[:, 0])
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], i, axis=1)
        logps = jax.lax.dynamic_update_slice_in_dim(logps, logp[:, None], i, axis=1)
        key_mask = jax.lax.dynamic_update_slice_in_dim(key_mask, (~done).astype(jnp.int32)[:, None], P + i, axis=1)
        stepped = [m(token[:, None], (next_position + i)[:, None], key_mask, c, P + i) for m, c in zip(modules, caches)]
        done = done | jnp.isin(token, jnp.asarray(stop, jnp.int32))
        return (i + 1, [c for _, c in stepped], [h[:, 0] for h, _ in stepped], key_mask, out, logps, done, rng)

    carry = (jnp.int32(0), caches, lasts, key_mask, jnp.full((B, N), pad_id, jnp.int32),
             jnp.zeros((B, N), jnp.float32), jnp.zeros((B,), bool), rng)
    _, _, _, key_mask, completion, logps, _, _ = jax.lax.while_loop(cond, body, carry)
    completion_valid = key_mask[:, P:]
    return {
        "tokens": jnp.concatenate([prompt_tokens, completion], axis=1),
        "mask": key_mask,
        "completion_mask": jnp.concatenate([jnp.zeros_like(prompt_mask), completion_valid], axis=1),
        "completion": completion,
        "logprobs": logps,
        "lengths": completion_valid.sum(-1),
    }
