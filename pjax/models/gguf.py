"""Llama-architecture GGUF checkpoints (llama.cpp's format) as pjax configs and params.

`read_metadata` parses the header itself (struct reads over a memory map: about 0.1 s for SmolLM2's
49152 tokens and 48900 merges, where `gguf.GGUFReader` builds numpy views per string and takes
seconds). Tensors are dequantised one at a time by `gguf.quants.dequantize`, so any type it supports
loads (F32, F16, BF16, Q4_0/Q4_1/Q5_x/Q8_0, the K-quants, ...).

llama.cpp stores the Q and K projections with their rows permuted for interleaved (GPT-J style)
RoPE; `load_params` undoes that, so the weights suit pjax's half-split `apply_rope`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import struct
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize, quant_shape_to_byte_shape
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from pjax.models import ModelDef
from pjax.models.llama import LlamaConfig, rope_frequencies

Params = Any
_MAGIC = b"GGUF"
_SCALARS = {  # value type -> (struct format, numpy dtype)
    GGUFValueType.UINT8: ("<B", "<u1"), GGUFValueType.INT8: ("<b", "<i1"),
    GGUFValueType.UINT16: ("<H", "<u2"), GGUFValueType.INT16: ("<h", "<i2"),
    GGUFValueType.UINT32: ("<I", "<u4"), GGUFValueType.INT32: ("<i", "<i4"),
    GGUFValueType.UINT64: ("<Q", "<u8"), GGUFValueType.INT64: ("<q", "<i8"),
    GGUFValueType.FLOAT32: ("<f", "<f4"), GGUFValueType.FLOAT64: ("<d", "<f8"),
    GGUFValueType.BOOL: ("<?", "?"),
}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# Llama 3.x RoPE scaling as (low_freq_factor, high_freq_factor, original_max_position): GGUF files keep
# only the resulting per-frequency factors (`rope_freqs.weight`), matched against these.
_LLAMA3_ROPE = (1.0, 4.0, 8192.0)


@dataclasses.dataclass(frozen=True)
class _Tensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order (GGUF lists dimensions innermost first)
    offset: int  # absolute byte offset in the file
    nbytes: int


class _Reader:
    """A GGUF file's metadata and tensor directory, read over a read-only memory map."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.buf = memoryview(self.data)
        if bytes(self.buf[:4]) != _MAGIC:
            raise ValueError(f"{self.path}: not a GGUF file (magic {bytes(self.buf[:4])!r})")
        version = _U32.unpack_from(self.buf, 4)[0]
        if version not in (2, 3):
            hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
            raise ValueError(f"{self.path}: GGUF version {version}{hint} is not supported (2 or 3)")
        n_tensors, n_kv = struct.unpack_from("<QQ", self.buf, 8)
        self.pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(_U32.unpack_from(self.buf, self._advance(4))[0], key)
        infos = [self._tensor_info() for _ in range(n_tensors)]
        align = int(self.metadata.get("general.alignment", 32))
        start = -(-self.pos // align) * align
        self.tensors: dict[str, _Tensor] = {}
        for name, qtype, shape, rel in infos:
            block, size = GGML_QUANT_SIZES[qtype]
            t = _Tensor(name, qtype, shape, start + rel, math.prod(shape) * size // block)
            if t.offset + t.nbytes > len(self.data):
                raise ValueError(f"{self.path}: tensor {name!r} ends past the end of the file (truncated?)")
            if name in self.tensors:
                raise ValueError(f"{self.path}: tensor {name!r} appears twice")
            self.tensors[name] = t

    def _advance(self, n: int) -> int:
        pos, self.pos = self.pos, self.pos + n
        return pos

    def _string(self, what: str = "a string") -> str:
        n = _U64.unpack_from(self.buf, self.pos)[0]
        start = self._advance(8 + n) + 8
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: {what} at byte {start} is not UTF-8: {e}") from e

    def _value(self, vtype: int, key: str) -> Any:
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise ValueError(f"{self.path}: metadata {key!r} has unknown value type {vtype}") from None
        if vtype == GGUFValueType.STRING:
            return self._string(f"metadata {key!r}")
        if vtype in _SCALARS:
            fmt, _ = _SCALARS[vtype]
            return struct.unpack_from(fmt, self.buf, self._advance(struct.calcsize(fmt)))[0]
        # An array: item type, count, items. Numeric items are converted in one numpy call.
        itype, count = _U32.unpack_from(self.buf, self.pos)[0], _U64.unpack_from(self.buf, self.pos + 4)[0]
        self._advance(12)
        if itype in _SCALARS:
            dtype = np.dtype(_SCALARS[itype][1])
            items = np.frombuffer(self.buf, dtype, count, self._advance(count * dtype.itemsize))
            return items.tolist()
        if itype == GGUFValueType.STRING:
            return [self._string(f"metadata {key!r} item {i}") for i in range(count)]
        return [self._value(itype, f"{key}[{i}]") for i in range(count)]

    def _tensor_info(self) -> tuple[str, GGMLQuantizationType, tuple[int, ...], int]:
        name = self._string("a tensor name")
        n_dims = _U32.unpack_from(self.buf, self._advance(4))[0]
        dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self._advance(8 * n_dims))
        raw_type, offset = struct.unpack_from("<IQ", self.buf, self._advance(12))
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise ValueError(f"{self.path}: tensor {name!r} has unknown GGML type {raw_type}") from None
        return name, qtype, tuple(reversed(dims)), offset

    def array(self, name: str) -> np.ndarray:
        """Tensor `name` dequantised to float32, numpy order (a view of the map for F32 tensors)."""
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor {name!r} (the file has {len(self.tensors)} tensors, "
                           f"e.g. {sorted(self.tensors)[:4]})")
        t = self.tensors[name]
        try:
            raw = self.data[t.offset:t.offset + t.nbytes].reshape(quant_shape_to_byte_shape(t.shape, t.qtype))
            out = dequantize(raw, t.qtype)
        except (NotImplementedError, ValueError) as e:
            raise type(e)(f"{self.path}: tensor {name!r} ({t.qtype.name}, shape {t.shape}): {e}") from None
        assert out.shape == t.shape and out.dtype == np.float32, (name, out.shape, out.dtype)
        return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Every metadata key of a GGUF file as plain Python values (str, int, float, bool; arrays as lists),
    e.g. `tokenizer.ggml.tokens`, `tokenizer.ggml.merges`, `tokenizer.chat_template`."""
    return _Reader(path).metadata


def _one(meta: dict[str, Any], key: str, path: str, default: Any = None) -> Any:
    """A metadata value that may be per-layer (a list): all layers must agree."""
    if key not in meta:
        if default is None:
            raise ValueError(f"{path}: metadata {key!r} is missing")
        return default
    value = meta[key]
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise ValueError(f"{path}: metadata {key!r} differs between layers ({value}); pjax layers are uniform")
        value = value[0]
    return value


def _f32(x: float) -> float:
    """The shortest decimal that rounds to the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(x)))


def _config(reader: _Reader) -> dict[str, Any]:
    meta, path = reader.metadata, reader.path
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture={arch!r}; only 'llama' GGUF files are supported")
    if _one(meta, "llama.expert_count", path, 0):
        raise ValueError(f"{path}: a mixture-of-experts Llama (llama.expert_count > 0) is not supported")
    d_model = _one(meta, "llama.embedding_length", path)
    n_heads = _one(meta, "llama.attention.head_count", path)
    head_dim = _one(meta, "llama.attention.key_length", path, d_model // n_heads)
    value_dim = _one(meta, "llama.attention.value_length", path, head_dim)
    rope_dim = _one(meta, "llama.rope.dimension_count", path, head_dim)
    if value_dim != head_dim or rope_dim != head_dim:
        raise ValueError(f"{path}: key_length={head_dim}, value_length={value_dim}, rope.dimension_count="
                         f"{rope_dim}: pjax needs them equal (full-width rotary, same K/V head size)")
    scaling = _one(meta, "llama.rope.scaling.type", path, "none")
    if scaling not in ("none", "") and _one(meta, "llama.rope.scaling.factor", path, 1.0) != 1.0:
        raise ValueError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported (only Llama 3 "
                         "scaling, stored as rope_freqs.weight)")
    embed = reader.tensors.get("token_embd.weight")  # its rows may exceed the token list (padding)
    return {
        "vocab_size": embed.shape[0] if embed is not None else _one(meta, "llama.vocab_size", path,
                                                         len(meta.get("tokenizer.ggml.tokens", ())) or None),
        "d_model": d_model,
        "n_layers": _one(meta, "llama.block_count", path),
        "n_heads": n_heads,
        "n_kv_heads": _one(meta, "llama.attention.head_count_kv", path, n_heads),
        "d_ff": _one(meta, "llama.feed_forward_length", path),
        "head_dim": head_dim,
        "rope_theta": _f32(_one(meta, "llama.rope.freq_base", path, 10_000.0)),
        "rope_scaling": _rope_scaling(reader, head_dim),
        "norm_eps": _f32(_one(meta, "llama.attention.layer_norm_rms_epsilon", path)),
        "tie_embeddings": "output.weight" not in reader.tensors,
        "max_seq_len": _one(meta, "llama.context_length", path),
        "attn_bias": "blk.0.attn_q.bias" in reader.tensors,
        "sliding_window": _one(meta, "llama.attention.sliding_window", path, 0),
    }


def _rope_scaling(reader: _Reader, head_dim: int) -> tuple[float, ...]:
    """pjax's `rope_scaling` from `rope_freqs.weight` (per-frequency divisors), if the file has it."""
    if "rope_freqs.weight" not in reader.tensors:
        return ()
    divisors = reader.array("rope_freqs.weight").astype(np.float64)
    if divisors.shape != (head_dim // 2,):
        raise ValueError(f"{reader.path}: rope_freqs.weight has shape {divisors.shape}, expected ({head_dim // 2},)")
    if np.all(divisors == 1.0):
        return ()
    theta = _one(reader.metadata, "llama.rope.freq_base", reader.path, 10_000.0)
    candidate = (float(divisors.max()), *_LLAMA3_ROPE)
    base = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    probe = LlamaConfig(vocab_size=1, d_model=head_dim, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=1,
                        head_dim=head_dim, rope_theta=theta, rope_scaling=candidate)
    ours = np.asarray(rope_frequencies(probe), np.float64)  # what pjax would use with `candidate`
    if not np.allclose(ours, base / divisors, rtol=1e-4):
        raise ValueError(f"{reader.path}: rope_freqs.weight is not Llama 3 scaling with (low, high, original) = "
                         f"{_LLAMA3_ROPE}; pjax cannot represent these RoPE frequencies")
    return candidate


def config_from_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """`LlamaConfig` fields from a Llama GGUF file's metadata and tensor directory.

    Returns vocab_size (rows of `token_embd.weight`), d_model, n_layers, n_heads, n_kv_heads, d_ff,
    head_dim, rope_theta, rope_scaling, norm_eps, tie_embeddings (no `output.weight`), max_seq_len
    (`llama.context_length`), attn_bias (q/k/v bias tensors present) and sliding_window
    (`llama.attention.sliding_window`, else 0 as llama.cpp runs a Llama); dtype, remat etc. are left to
    the caller: `LlamaConfig(**cfg, ...)`.
    """
    return _config(_Reader(path))


def _unpermute(w: np.ndarray, n: int) -> np.ndarray:
    """llama.cpp's Q/K rows (each head's pairs interleaved) back to the half-split order."""
    rows, d = w.shape
    return w.reshape(n, rows // n // 2, 2, d).swapaxes(1, 2).reshape(rows, d)


def _layout(cfg: LlamaConfig) -> dict[tuple[str, ...], tuple[str, tuple[int, ...], Callable]]:
    """pjax parameter path -> (GGUF tensor name, its numpy shape, conversion to pjax's layout)."""
    V, D, F, H, K, hd = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    same = lambda w: w  # noqa: E731
    t = lambda w: w.T  # noqa: E731
    return {
        ("embed",): ("token_embd.weight", (V, D), same),
        ("final_norm", "scale"): ("output_norm.weight", (D,), same),
        ("lm_head",): ("output.weight", (V, D), t),
        ("layers", "attn_norm", "scale"): ("blk.{i}.attn_norm.weight", (D,), same),
        ("layers", "attn", "wq"): ("blk.{i}.attn_q.weight", (H * hd, D),
                                   lambda w: _unpermute(w, H).T.reshape(D, H, hd)),
        ("layers", "attn", "wk"): ("blk.{i}.attn_k.weight", (K * hd, D),
                                   lambda w: _unpermute(w, K).T.reshape(D, K, hd)),
        ("layers", "attn", "wv"): ("blk.{i}.attn_v.weight", (K * hd, D), lambda w: w.T.reshape(D, K, hd)),
        ("layers", "attn", "bq"): ("blk.{i}.attn_q.bias", (H * hd,),
                                   lambda b: _unpermute(b[:, None], H).reshape(H, hd)),
        ("layers", "attn", "bk"): ("blk.{i}.attn_k.bias", (K * hd,),
                                   lambda b: _unpermute(b[:, None], K).reshape(K, hd)),
        ("layers", "attn", "bv"): ("blk.{i}.attn_v.bias", (K * hd,), lambda b: b.reshape(K, hd)),
        ("layers", "attn", "wo"): ("blk.{i}.attn_output.weight", (D, H * hd), lambda w: w.T.reshape(H, hd, D)),
        ("layers", "mlp_norm", "scale"): ("blk.{i}.ffn_norm.weight", (D,), same),
        ("layers", "mlp", "gate"): ("blk.{i}.ffn_gate.weight", (F, D), t),
        ("layers", "mlp", "up"): ("blk.{i}.ffn_up.weight", (F, D), t),
        ("layers", "mlp", "down"): ("blk.{i}.ffn_down.weight", (D, F), t),
    }


def _check_config(reader: _Reader, cfg: LlamaConfig) -> None:
    """The numerics-affecting fields of the model config must match the file's."""
    theirs = _config(reader)
    diff = []
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "head_dim", "vocab_size", "tie_embeddings",
                "attn_bias", "sliding_window"):
        if theirs[key] != getattr(cfg, key):
            diff.append(f"model.{key}: file {theirs[key]!r} vs config {getattr(cfg, key)!r}")
    for key in ("rope_theta", "norm_eps"):
        if np.float32(theirs[key]) != np.float32(getattr(cfg, key)):
            diff.append(f"model.{key}: file {theirs[key]!r} vs config {getattr(cfg, key)!r}")
    a, b = theirs["rope_scaling"], tuple(cfg.rope_scaling)
    if len(a) != len(b) or not np.allclose(a, b):
        diff.append(f"model.rope_scaling: file {a!r} vs config {b!r}")
    if diff:
        raise ValueError(f"{reader.path} does not match the model config: " + "; ".join(diff))


def _layer_sharding(s: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """The sharding of one layer of a stacked (leading `layers` axis) parameter."""
    if isinstance(s, NamedSharding):
        return NamedSharding(s.mesh, PartitionSpec(*tuple(s.spec)[1:]), memory_kind=s.memory_kind)
    if isinstance(s, SingleDeviceSharding):
        return s
    raise TypeError(f"load_params: unsupported sharding {s!r} (use NamedSharding or SingleDeviceSharding)")


def _read(reader: _Reader, name: str, shape: tuple[int, ...], convert: Callable, dtype, what: str) -> np.ndarray:
    """Tensor `name`, checked to have numpy shape `shape`, converted to pjax's layout and `dtype`."""
    w = reader.array(name)
    if w.shape != shape:
        raise ValueError(f"{reader.path}: tensor {name!r} has shape {w.shape}, expected {shape} for {what}")
    out = np.ascontiguousarray(convert(w), dtype=dtype)
    # An unconverted F32 tensor is still a view of the file's map; JAX may alias host memory on CPU.
    return out.copy() if np.may_share_memory(out, reader.data) else out


@functools.lru_cache(maxsize=32)
def _stacking(shape: tuple[int, ...], dtype, sharding: jax.sharding.Sharding) -> tuple[Callable, Callable]:
    """Jitted (zeros of `shape`, in-place write of layer i) with `sharding`; cached across leaves and loads."""
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    update = jax.jit(lambda x, v, i: jax.lax.dynamic_update_index_in_dim(x, v, i, 0),
                     donate_argnums=0, out_shardings=sharding)
    return zeros, update


def _place(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A (possibly multi-host) array from a host array every process holds; only local shards are copied."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_params(path: str | os.PathLike, model_def: ModelDef, shardings: Params | None = None) -> Params:
    """Parameters of a Llama GGUF file in pjax's layout, cast to `model.param_dtype`.

    `shardings`: a tree like `model_def.shapes` of `NamedSharding`s (e.g. `sharding.tree_shardings`);
    None puts everything on the first device. Each tensor is dequantised, converted and copied to its
    devices on its own; a stacked layer parameter is written one layer at a time into a donated
    (updated in place) device array, so beyond the loaded parameters only the tensor being converted
    exists. Every process of a multi-host job calls this with the same file (each copies its shards).
    """
    reader = _Reader(path)
    cfg = model_def.cfg
    if cfg.head != "lm":
        raise ValueError(f"load_params: model.head={cfg.head!r}; a GGUF file holds an LM (head='lm') only")
    _check_config(reader, cfg)
    layout = _layout(cfg)
    flat, treedef = jax.tree_util.tree_flatten_with_path(model_def.shapes)
    keys = [tuple(k.key for k in path_) for path_, _ in flat]
    names = {key: [layout[key][0].format(i=i) for i in range(cfg.n_layers)] if key[0] == "layers"
             else [layout[key][0]] for key in keys}
    needed = {n for ns in names.values() for n in ns}
    missing = sorted(needed - set(reader.tensors))
    unused = sorted(set(reader.tensors) - needed - {"rope_freqs.weight"})
    if missing or unused:
        raise ValueError(f"{reader.path}: tensors missing {missing[:8]}, unexpected {unused[:8]} for a pjax "
                         f"Llama with n_layers={cfg.n_layers}, tie_embeddings={cfg.tie_embeddings}")
    dtype = jnp.dtype(cfg.param_dtype)
    default = SingleDeviceSharding(jax.devices()[0])
    flat_shardings = [default] * len(flat) if shardings is None else treedef.flatten_up_to(shardings)
    out = []
    for key, (_, sds), sharding in zip(keys, flat, flat_shardings, strict=True):
        _, src_shape, convert = layout[key]
        what = f"{'/'.join(key)} {tuple(sds.shape)}"
        if key[0] != "layers":
            out.append(_place(_read(reader, names[key][0], src_shape, convert, dtype, what), sharding))
            continue
        zeros, update = _stacking(tuple(sds.shape), dtype, sharding)
        stacked, layer_sharding = zeros(), _layer_sharding(sharding)
        for i, name in enumerate(names[key]):
            layer = _read(reader, name, src_shape, convert, dtype, what)
            stacked = update(stacked, _place(layer, layer_sharding), i)
        out.append(stacked)
    return jax.tree.unflatten(treedef, out)
