"""Models: functional entry points over NNX modules (split once; merge inside jitted code)."""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh

from pjax.models.heads import token_logprobs
from pjax.models.llama import Llama, LlamaConfig, init_cache, preset

Params = Any


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: usable as a static jit argument
class ModelDef:
    """What the train step needs to know about a model: its config, graph and parameter layout."""

    cfg: LlamaConfig
    graphdef: Any
    shapes: Params  # ShapeDtypeStruct tree (plain nested dicts)
    logical_specs: Params  # PartitionSpec tree of logical axis names, same structure

    def init(self, rng: jax.Array) -> Params:
        """Fresh parameters as a plain nested dict (call inside jit with out_shardings)."""
        with nnx.use_eager_sharding(False):
            model = Llama(self.cfg, rngs=nnx.Rngs(params=rng))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def module(self, params: Params) -> Llama:
        return nnx.merge(self.graphdef, params)


def build(cfg: LlamaConfig) -> ModelDef:
    """Trace the model abstractly (no memory) to get its graph, shapes and logical axis names.

    Traced with no mesh in scope: the logical names stay names; `pjax.sharding` maps them to the mesh.
    """
    with nnx.use_eager_sharding(False), jax.sharding.use_abstract_mesh(AbstractMesh((), ())):
        abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    shapes = nnx.to_pure_dict(state)
    specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    return ModelDef(cfg, graphdef, shapes, specs)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions that count only real tokens (left padding gets position 0)."""
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def _forward(model_def: ModelDef, params: Params, tokens: jax.Array, mask: jax.Array,
             positions: jax.Array | None = None, segment_ids: jax.Array | None = None):
    """(model, tokens `[N, T]`, final hidden states `[N, T, D]`) of `tokens`, `mask` `[..., T]`, the
    leading dims flattened. All T positions go through the model (the last one's output is unused
    by the log-probs): a power-of-two T keeps the sequence divisible by a sequence-parallel mesh axis,
    and causal attention leaves the other positions as they would be without it.

    `positions` default to `positions_from_mask(mask)`; packed rows pass their own (restarting at 0 in
    each document) with `segment_ids` (attention stays within a segment)."""
    T = tokens.shape[-1]
    tok, msk = tokens.reshape(-1, T), mask.reshape(-1, T)
    pos = positions_from_mask(msk) if positions is None else positions.reshape(-1, T).astype(jnp.int32)
    seg = None if segment_ids is None else segment_ids.reshape(-1, T)
    model = model_def.module(params)
    hidden, _ = model(tok, pos, msk, segment_ids=seg)
    return model, tok, hidden


def sequence_token_logprobs(model_def: ModelDef, params: Params, tokens: jax.Array, mask: jax.Array, *,
                            chunk_size: int = 128, temperature: float = 1.0,
                            with_log_sum_p2: bool = False, positions: jax.Array | None = None,
                            segment_ids: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Log-probs of tokens[..., 1:] given their prefixes: `[..., T-1]` float32 (leading dims flattened).

    `tokens`, `mask` (and `positions`, `segment_ids` if given, see `_forward`): `[..., T]`; any leading
    shape (e.g. `[B, 2, T]` preference pairs) is kept. With `with_log_sum_p2`, also `log sum_v p(v)^2`
    per position (see `token_logprobs`). In a packed row the entry at a document's first token is
    predicted from the previous document's last token: mask it out.
    """
    model, tok, hidden = _forward(model_def, params, tokens, mask, positions, segment_ids)
    out = token_logprobs(hidden[:, :-1], model.head_kernel(), tok[:, 1:], chunk_size=chunk_size,
                         temperature=temperature, with_log_sum_p2=with_log_sum_p2)
    return jax.tree.map(lambda x: x.reshape(*tokens.shape[:-1], tokens.shape[-1] - 1), out)


def packed_token_logprobs(model_def: ModelDef, params: Params, batch: dict[str, jax.Array], *,
                          chunk_size: int = 128, temperature: float = 1.0,
                          with_log_sum_p2: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """`sequence_token_logprobs(batch["tokens"], batch["mask"])`, `[..., T-1]`, computed on the batch's
    padding-free layout (`pjax.data.layout`: `packed_*` rows `[R, L]`, `unpack_index`): the model runs
    on the packed rows, each token is scored from its source's hidden state, and the entries go back to
    the padded positions (0 where `mask` is 0)."""
    tokens, segments = batch["packed_tokens"], batch["packed_segments"]
    chex.assert_rank([tokens, segments, batch["packed_sources"]], 2)
    model = model_def.module(params)
    hidden, _ = model(tokens, batch["packed_positions"], (segments > 0).astype(jnp.int32),
                      segment_ids=segments, branch_ids=batch["packed_branches"])
    hidden = jnp.take_along_axis(hidden, batch["packed_sources"][..., None], axis=1)
    out = token_logprobs(hidden, model.head_kernel(), tokens, chunk_size=chunk_size, temperature=temperature,
                         with_log_sum_p2=with_log_sum_p2)
    scored = batch["mask"][..., 1:] > 0
    chex.assert_equal_shape([scored, batch["unpack_index"]])
    return jax.tree.map(lambda x: jnp.where(scored, x.reshape(-1)[batch["unpack_index"]], 0.0), out)


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row of `mask` `[N, T]`, for right and left padding alike."""
    T = mask.shape[-1]
    return (T - 1 - jnp.argmax(jnp.flip(mask > 0, axis=-1), axis=-1)).astype(jnp.int32)


def sequence_rewards(model_def: ModelDef, params: Params, tokens: jax.Array, mask: jax.Array, *,
                     positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
    """Scalar-head outputs (`model.head='scalar'`) read at the last real token: `[...]` float32 for
    `tokens`, `mask` `[..., T]` (e.g. `[B, 2]` rewards of preference pairs); `[..., E]` for an ensemble
    of `model.reward_heads=E` heads. `positions`, `segment_ids`:
    see `_forward` (with packing, the last real token of the row is that of its last document)."""
    model, _, hidden = _forward(model_def, params, tokens, mask, positions, segment_ids)
    last_index = last_token_index(mask.reshape(-1, mask.shape[-1]))
    last = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)[:, 0]
    rewards = last.astype(jnp.float32) @ model.score[...].astype(jnp.float32)
    return rewards.reshape(tokens.shape[:-1] + rewards.shape[1:])


def sequence_logprobs_and_values(model_def: ModelDef, params: Params, tokens: jax.Array, mask: jax.Array, *,
                                 chunk_size: int = 128, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """A policy with a value head (`model.value_head`): per-token log-probs of tokens[..., 1:] (as
    `sequence_token_logprobs`) and the values `[..., T-1]` float32 of the states that predict them (the
    value at position t-1 is that of the prefix before token t). One forward when the value head shares
    the policy's backbone; a second one through the value model's (`model.value_backbone='separate'`)."""
    model, tok, hidden = _forward(model_def, params, tokens, mask)
    logps = token_logprobs(hidden[:, :-1], model.head_kernel(), tok[:, 1:], chunk_size=chunk_size,
                           temperature=temperature)
    critic = model
    if model_def.cfg.value_backbone == "separate":
        critic = model.critic
        msk = mask.reshape(tok.shape)
        hidden, _ = critic(tok, positions_from_mask(msk), msk)
    values = hidden[:, :-1].astype(jnp.float32) @ critic.value[...].astype(jnp.float32)
    shape = (*tokens.shape[:-1], tokens.shape[-1] - 1)
    return logps.reshape(shape), values.reshape(shape)


__all__ = ["Llama", "LlamaConfig", "ModelDef", "build", "init_cache", "packed_token_logprobs", "positions_from_mask", "preset",
           "sequence_logprobs_and_values", "sequence_rewards", "sequence_token_logprobs", "token_logprobs"]
