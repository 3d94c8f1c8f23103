"""Hugging Face checkpoints (Llama 2/3, Mistral, Qwen2; causal LM or one-label sequence classifier)
to and from pjax params.

`config_from_hf` / `hf_config` translate `config.json`; `load_params` builds each (possibly sharded)
parameter straight from memory-mapped safetensors, one device shard at a time from per-layer
slices, so the host never holds an extra copy of the model; `save_hf` writes `config.json` and
(sharded) safetensors one tensor at a time, into a temporary directory renamed into place.

Layouts: HF linear weights are `[out, in]`; pjax keeps `[in, out]` with heads split out
(`wq` `[D, H, hd]` is `q_proj.weight` `[H*hd, D]` transposed) and layers stacked on a leading axis.
Both use the half-split rotary layout, so no permutation of q/k rows is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from pjax.models import build, safetensors
from pjax.models.llama import LlamaConfig

SUPPORTED = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}  # model_type -> class prefix
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Tensors some checkpoints carry that hold no parameters (old transformers saved RoPE buffers).
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(jnp.bfloat16), "float16": np.dtype(np.float16)}

# ----------------------------------------------------------------------------- config.json


def _rope(hf: dict[str, Any]) -> tuple[float, tuple[float, ...]]:
    """(rope_theta, pjax rope_scaling) from the legacy `rope_theta`/`rope_scaling` keys or the
    `rope_parameters` dict of transformers >= 5."""
    params = hf.get("rope_parameters") or {}
    key = "rope_parameters"
    if hf.get("rope_scaling"):
        params, key = {**params, **hf["rope_scaling"]}, "rope_scaling"
    if any(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"config.json {key}: per-layer-type RoPE parameters are not supported")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ValueError("config.json partial_rotary_factor: only full rotary embeddings (1.0) are supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, ()
    if rope_type != "llama3":
        raise ValueError(f"config.json {key}.rope_type={rope_type!r}: only 'default' and 'llama3' RoPE are supported")
    try:
        original = params.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
        return theta, (float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"]),
                       float(original))
    except (KeyError, TypeError) as e:
        raise ValueError(f"config.json {key}: llama3 RoPE needs factor, low_freq_factor, high_freq_factor and "
                         f"original_max_position_embeddings ({e!r} missing)") from e


def _sliding_window(hf: dict[str, Any], model_type: str, n_layers: int) -> int:
    """The window of a model whose layers all use the same attention (transformers' semantics)."""
    if model_type == "mistral":  # every layer; `layer_types` is ignored by MistralModel
        return int(hf.get("sliding_window") or 0)
    if model_type != "qwen2":  # LlamaModel has no sliding window
        return 0
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    types = hf.get("layer_types") or [
        "sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28) else "full_attention"
        for i in range(n_layers)]
    if set(types) == {"full_attention"}:
        return 0
    if set(types) == {"sliding_attention"} and window:
        return int(window)
    raise ValueError("config.json use_sliding_window/max_window_layers/layer_types: sliding-window attention in "
                     f"only some layers ({types}) is not supported")


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """`LlamaConfig` fields of a `config.json` dict (all but the dtypes, remat and scan settings).

    Raises ValueError naming the config.json key of anything pjax cannot compute exactly.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"config.json model_type={model_type!r}: supported are {sorted(SUPPORTED)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    if hf.get("mlp_bias"):
        raise ValueError("config.json mlp_bias=true: MLP biases are not supported")
    if model_type != "qwen2" and hf.get("attention_bias"):
        raise ValueError("config.json attention_bias=true: biases on all four attention projections (o_proj "
                         "included) are not supported; Qwen2's q/k/v biases are")
    if hf.get("quantization_config"):
        raise ValueError("config.json quantization_config: quantized checkpoints are not supported")
    head, reward_heads = "lm", 1
    arch = (hf.get("architectures") or [f"{SUPPORTED[model_type]}ForCausalLM"])[0]
    if arch.endswith("ForSequenceClassification"):
        labels = int(hf.get("num_labels", len(hf.get("id2label") or {}) or 2))
        ensemble = int(hf.get("pjax_reward_heads", 1))  # written by pjax-to-hf for an ensemble of reward heads
        if labels != ensemble or labels < 1:
            raise ValueError(f"config.json id2label/num_labels: a reward model needs exactly 1 label, not {labels} "
                             "(a classifier's labels are not rewards; an ensemble of reward heads exported by pjax "
                             "carries pjax_reward_heads)")
        head, reward_heads = "scalar", labels
    elif not arch.endswith("ForCausalLM"):
        raise ValueError(f"config.json architectures={hf.get('architectures')}: expected *ForCausalLM or "
                         "*ForSequenceClassification")
    try:
        d, n_heads, n_layers = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
        vocab_size, d_ff = int(hf["vocab_size"]), int(hf["intermediate_size"])
    except KeyError as e:
        raise ValueError(f"config.json: missing key {e.args[0]!r}") from e
    theta, scaling = _rope(hf)
    return dict(
        vocab_size=vocab_size, d_model=d, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads), d_ff=d_ff,
        head_dim=int(hf.get("head_dim") or d // n_heads), rope_theta=theta, rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)), head=head, reward_heads=reward_heads,
        attn_bias=model_type == "qwen2", sliding_window=_sliding_window(hf, model_type, n_layers),
    )


def default_model_type(cfg: LlamaConfig) -> str:
    return "qwen2" if cfg.attn_bias else "mistral" if cfg.sliding_window else "llama"


def hf_config(cfg: LlamaConfig, model_type: str | None = None, *, dtype: str = "float32",
              **extra: Any) -> dict[str, Any]:
    """A `config.json` for `cfg` (`model_type` from the variant unless given; `extra` keys added, e.g.
    bos_token_id, eos_token_id, pad_token_id)."""
    model_type = model_type or default_model_type(cfg)
    if model_type not in SUPPORTED:
        raise ValueError(f"model_type={model_type!r}: supported are {sorted(SUPPORTED)}")
    if cfg.attn_bias != (model_type == "qwen2"):
        raise ValueError(f"model_type={model_type!r} cannot express model.attn_bias={cfg.attn_bias} (q/k/v biases "
                         "are exactly Qwen2's)")
    if cfg.sliding_window and model_type == "llama":
        raise ValueError(f"model_type='llama' cannot express model.sliding_window={cfg.sliding_window}")
    kind = "CausalLM" if cfg.head == "lm" else "SequenceClassification"
    out: dict[str, Any] = {
        "architectures": [f"{SUPPORTED[model_type]}For{kind}"], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_scaling": None, "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": dtype,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
    }
    if cfg.rope_scaling:
        factor, low, high, original = cfg.rope_scaling
        out["rope_scaling"] = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                               "high_freq_factor": high, "original_max_position_embeddings": int(original)}
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    elif model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window or None
    else:
        out.update(use_sliding_window=bool(cfg.sliding_window), sliding_window=cfg.sliding_window or None,
                   max_window_layers=0 if cfg.sliding_window else cfg.n_layers)
    if cfg.head == "scalar":
        out.update(id2label={str(i): f"LABEL_{i}" for i in range(cfg.reward_heads)},
                   label2id={f"LABEL_{i}": i for i in range(cfg.reward_heads)}, num_labels=cfg.reward_heads)
        if cfg.reward_heads > 1:
            out["pjax_reward_heads"] = cfg.reward_heads
    return {**out, **extra}


def read_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {hf_dir}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def load_config(hf_dir: str | os.PathLike, **overrides: Any) -> LlamaConfig:
    """The `LlamaConfig` of a Hugging Face model directory (`overrides`: e.g. param_dtype)."""
    path = Path(hf_dir) / "config.json"
    try:
        return LlamaConfig(**{**config_from_hf(read_config(hf_dir)), **overrides})
    except ValueError as e:  # name the file in place of "config.json"
        msg = str(e)
        raise ValueError(f"{path}{msg[len('config.json'):]}" if msg.startswith("config.json") else f"{path}: {msg}") \
            from e

# ----------------------------------------------------------------------------- the name/layout map


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One HF tensor (per layer if `name` holds `{i}`) and the pjax parameter it is (a slice of)."""

    name: str
    path: tuple[str, ...]
    shape: tuple[int, ...]  # the HF shape
    to_pjax: Callable[[np.ndarray], np.ndarray]  # views only (transpose/reshape): slicing stays lazy
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def layered(self) -> bool:
        return "{i}" in self.name


def tensors(cfg: LlamaConfig) -> list[Tensor]:
    """The HF tensors of `cfg`, in the order they are written."""
    D, H, K, hd, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size

    def proj(n):  # [n*hd, D] <-> [D, n, hd]
        return (lambda a: a.reshape(n, hd, D).transpose(2, 0, 1),
                lambda a: a.transpose(1, 2, 0).reshape(n * hd, D))

    T = (lambda a: a.T, lambda a: a.T)
    same = (lambda a: a, lambda a: a)
    attn, mlp, layer = ("layers", "attn"), ("layers", "mlp"), "model.layers.{i}."
    out = [Tensor("model.embed_tokens.weight", ("embed",), (V, D), *same)]
    out += [Tensor(layer + "input_layernorm.weight", ("layers", "attn_norm", "scale"), (D,), *same)]
    for short, n in (("q", H), ("k", K), ("v", K)):
        out.append(Tensor(f"{layer}self_attn.{short}_proj.weight", attn + (f"w{short}",), (n * hd, D), *proj(n)))
        if cfg.attn_bias:
            out.append(Tensor(f"{layer}self_attn.{short}_proj.bias", attn + (f"b{short}",), (n * hd,),
                              lambda a, n=n: a.reshape(n, hd), lambda a, n=n: a.reshape(n * hd)))
    out += [
        Tensor(layer + "self_attn.o_proj.weight", attn + ("wo",), (D, H * hd),
               lambda a: a.reshape(D, H, hd).transpose(1, 2, 0), lambda a: a.transpose(2, 0, 1).reshape(D, H * hd)),
        Tensor(layer + "post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), (D,), *same),
        Tensor(layer + "mlp.gate_proj.weight", mlp + ("gate",), (F, D), *T),
        Tensor(layer + "mlp.up_proj.weight", mlp + ("up",), (F, D), *T),
        Tensor(layer + "mlp.down_proj.weight", mlp + ("down",), (D, F), *T),
        Tensor("model.norm.weight", ("final_norm", "scale"), (D,), *same),
    ]
    if cfg.head == "scalar":
        E = cfg.reward_heads
        if E == 1:
            out.append(Tensor("score.weight", ("score",), (1, D), lambda a: a.reshape(D), lambda a: a.reshape(1, D)))
        else:
            out.append(Tensor("score.weight", ("score",), (E, D), lambda a: a.T, lambda a: a.T))
    elif not cfg.tie_embeddings:
        out.append(Tensor("lm_head.weight", ("lm_head",), (V, D), *T))
    return out


def _names(t: Tensor, n_layers: int) -> list[str]:
    return [t.name.format(i=i) for i in range(n_layers)] if t.layered else [t.name]


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree

# ----------------------------------------------------------------------------- loading


def open_checkpoint(hf_dir: str | os.PathLike) -> dict[str, safetensors.SafeTensorsFile]:
    """Tensor name -> the (lazily read) file that holds it, from `model.safetensors` or the index of a
    sharded checkpoint."""
    hf_dir = Path(hf_dir)
    index = hf_dir / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index (expected a 'weight_map'): {e!r}") from e
        files = {}
        for file in sorted(set(weight_map.values())):
            if not (hf_dir / file).exists():
                raise FileNotFoundError(f"{index} names {file}, which is not in {hf_dir}")
            files[file] = safetensors.SafeTensorsFile(hf_dir / file)
        where = {}
        for name, file in weight_map.items():
            if name not in files[file]:
                raise ValueError(f"{index} places tensor {name!r} in {hf_dir / file}, which does not hold it")
            where[name] = files[file]
        for file, f in files.items():
            for name in f.keys():
                if weight_map.get(name) != file:
                    raise ValueError(f"tensor {name!r} in {f.path} is not in the weight_map of {index}")
        return where
    single = hf_dir / SINGLE_FILE
    if single.exists():
        f = safetensors.SafeTensorsFile(single)
        return {name: f for name in f.keys()}
    others = sorted(p.name for p in hf_dir.glob("*.bin")) if hf_dir.is_dir() else []
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {hf_dir}"
                            + (f" (only {others}: PyTorch pickles are not read; re-save with safetensors)"
                               if others else ""))


def _check_against_config(hf_dir: Path, cfg: LlamaConfig) -> None:
    """Refuse a model definition whose numerics differ from the checkpoint's config.json (shapes are
    checked tensor by tensor)."""
    if not (hf_dir / "config.json").exists():
        return
    theirs = config_from_hf(read_config(hf_dir))
    keys = {"rope_theta": "rope_theta", "rope_scaling": "rope_scaling", "norm_eps": "rms_norm_eps",
            "sliding_window": "sliding_window", "tie_embeddings": "tie_word_embeddings", "head": "architectures"}
    for field, key in keys.items():
        if theirs[field] != getattr(cfg, field):
            raise ValueError(f"{hf_dir / 'config.json'}: {key} gives model.{field}={theirs[field]!r}, but the "
                             f"model definition has {getattr(cfg, field)!r}")


def _slice_len(n: int, s: slice) -> int:
    return len(range(n)[s])


def load_params(hf_dir: str | os.PathLike, model_def: Any, shardings: Any = None) -> Any:
    """Params of `model_def` (a `pjax.models.ModelDef`) from a Hugging Face safetensors checkpoint.

    Each parameter is made with `jax.make_array_from_callback`: every addressable device shard is
    filled from per-layer slices of memory-mapped tensors, cast to `cfg.param_dtype`. `shardings`: a
    tree like `model_def.shapes`, one `Sharding` for all, or None (the first device). A missing,
    unexpected or misshapen tensor raises naming the tensor and the file.
    """
    hf_dir, cfg = Path(hf_dir), model_def.cfg
    _check_against_config(hf_dir, cfg)
    where = open_checkpoint(hf_dir)
    specs = tensors(cfg)
    expected = {name for t in specs for name in _names(t, cfg.n_layers)}
    files = sorted({str(f.path) for f in where.values()})
    missing = sorted(expected - set(where))
    if missing:
        raise ValueError(f"tensor {missing[0]!r} is missing from {files}"
                         + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    tolerated = {"lm_head.weight"} if cfg.head == "lm" and cfg.tie_embeddings else set()
    extra = sorted(n for n in set(where) - expected - tolerated if not _IGNORED.fullmatch(n))
    if extra:
        raise ValueError(f"unexpected tensor {extra[0]!r} in {where[extra[0]].path} (not part of {cfg.n_layers}-layer "
                         "model)" + (f"; {len(extra) - 1} more: {extra[1:6]}" if len(extra) > 1 else ""))
    for t in specs:
        for name in _names(t, cfg.n_layers):
            dtype, shape = where[name].info(name)
            if shape != t.shape:
                raise ValueError(f"tensor {name!r} in {where[name].path} has shape {list(shape)}, expected "
                                 f"{list(t.shape)} for the model config")
            if dtype.kind not in "fV":  # V: bfloat16 / float8 from ml_dtypes
                raise ValueError(f"tensor {name!r} in {where[name].path} has dtype {dtype}, expected floats")

    if shardings is None:
        shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, model_def.shapes)
    params: dict[str, Any] = {}
    for t in specs:
        sds, sharding = _get(model_def.shapes, t.path), _get(shardings, t.path)
        array = jax.make_array_from_callback(sds.shape, sharding, _shard_reader(t, sds, where, cfg.n_layers))
        node = params
        for key in t.path[:-1]:
            node = node.setdefault(key, {})
        node[t.path[-1]] = array
    return params


def _shard_reader(t: Tensor, sds: jax.ShapeDtypeStruct, where: dict, n_layers: int):
    dtype = np.dtype(sds.dtype)

    def read(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(sds.shape) - len(index))
        shape = tuple(_slice_len(n, s) for n, s in zip(sds.shape, index, strict=True))
        out = np.empty(shape, dtype)
        if not t.layered:
            name = t.name
            out[...] = t.to_pjax(where[name].get(name))[index]
            return out
        for j, i in enumerate(range(n_layers)[index[0]]):
            name = t.name.format(i=i)
            out[j] = t.to_pjax(where[name].get(name))[index[1:]]  # reads (and casts) this slice only
        return out

    return read

# ----------------------------------------------------------------------------- saving


def _host_reader(array: jax.Array) -> Callable[[int | None], np.ndarray]:
    """`read(i)`: layer `i` of a stacked parameter (or the whole one for None) on the host."""
    if not getattr(array, "is_fully_addressable", True):
        raise ValueError("save_hf gathers parameters on this host, but they span several processes; "
                         "export from a single-process run (e.g. pjax.convert pjax-to-hf)")
    take = jax.jit(lambda a, i: jax.lax.dynamic_index_in_dim(a, i, keepdims=False))
    return lambda i: np.asarray(jax.device_get(array if i is None else take(array, i)))


def save_hf(params: Any, cfg: LlamaConfig, out_dir: str | os.PathLike, *, dtype: str = "float32",
            max_shard_bytes: float = 5e9, model_type: str | None = None,
            extra_config: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write `params` as a Hugging Face model directory: config.json, generation_config.json (when
    `extra_config` names bos/eos token ids), and model.safetensors, or model-0000i-of-0000N.safetensors
    plus model.safetensors.index.json when larger than `max_shard_bytes`.

    Tensors are gathered one at a time (a layer's slice of a stacked parameter), so the host holds at
    most one tensor at a time besides the params. Everything is written to a temporary directory beside
    `out_dir`, then renamed: `out_dir` is never left half-written.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")
    np_dtype, n_layers = _DTYPES[dtype], cfg.n_layers
    config = hf_config(cfg, model_type, dtype=dtype, **(extra_config or {}))
    shapes = build(cfg).shapes
    items = []  # (name, shape, produce)
    for t in tensors(cfg):
        try:
            array = _get(params, t.path)
        except (KeyError, TypeError) as e:
            raise ValueError(f"params have no {'/'.join(t.path)} (for {t.name})") from e
        want = tuple(_get(shapes, t.path).shape)
        if tuple(array.shape) != want:
            raise ValueError(f"params {'/'.join(t.path)} has shape {tuple(array.shape)}, expected {want}")
        read = _host_reader(array)
        for i, name in enumerate(_names(t, n_layers)):
            items.append((name, t.shape, lambda read=read, t=t, i=(i if t.layered else None):
                          np.ascontiguousarray(t.to_hf(read(i)), dtype=np_dtype)))
    groups: list[list[tuple]] = [[]]
    size = 0
    for item in items:
        nbytes = math.prod(item[1]) * np_dtype.itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += nbytes

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        weight_map, total = {}, 0
        for k, group in enumerate(groups):
            file = SINGLE_FILE if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
            produce = {name: fn for name, _, fn in group}
            safetensors.write(tmp / file, {name: (np_dtype, shape) for name, shape, _ in group},
                              lambda name, produce=produce: produce[name](), metadata={"format": "pt"})
            for name, shape, _ in group:
                weight_map[name] = file
                total += math.prod(shape) * np_dtype.itemsize
        if len(groups) > 1:
            _write_json(tmp / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
        _write_json(tmp / "config.json", config)
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        if "bos_token_id" in generation or "eos_token_id" in generation:
            _write_json(tmp / "generation_config.json", generation)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
