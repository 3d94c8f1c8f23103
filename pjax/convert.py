"""Checkpoint conversion between Hugging Face model directories and pjax params-only exports.

    python -m pjax.convert hf-to-pjax --hf=DIR --out=DIR [--param_dtype=float32] [--mesh=1,-1,1]
        [--sharding=fsdp] [--cpu_devices=N] [--overwrite]
    python -m pjax.convert gguf-to-pjax --gguf=FILE --out=DIR [--param_dtype=float32] [...]
    python -m pjax.convert pjax-to-hf --export=DIR --out=DIR [--dtype=float32] [--max_shard_gb=5]
        [--model_type=llama|mistral|qwen2] [--tokenizer=PATH] [--mesh=1,-1,1] [--sharding=fsdp]
        [--cpu_devices=N] [--overwrite]

`hf-to-pjax` (and `gguf-to-pjax`, dequantising) loads the weights straight onto a device mesh (`--mesh` over (data, fsdp, tensor),
parameters sharded by the `--sharding` preset's rules, as `pjax.train` does) and writes an export
that `--config.init_from=OUT` starts a phase from (the run's `model.*` must match: the command prints
the flags). `pjax-to-hf` gathers one tensor at a time into config.json and (sharded) safetensors that
transformers loads, written to a temporary directory renamed into place; it needs every parameter on
this host (one process). The import's token ids and model type carry over to the export.
Exit status: 0 on success, 2 for bad input (the message names the path or flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

from configs.base import SHARDING_PRESETS
from pjax import checkpoint, logs, sharding
from pjax.models import ModelDef, build
from pjax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from pjax.models import gguf
from pjax.models import hf as hf_models
from pjax.models.llama import PRESETS, LlamaConfig, preset

log = logging.getLogger("pjax")


def param_shardings(model_def: ModelDef, mesh_shape: Sequence[int], preset: str) -> Any:
    """NamedShardings of `model_def`'s params on a mesh of `mesh_shape` over every device, by the
    parallelism preset's rules (`configs.base.SHARDING_PRESETS`), as `pjax.core.setup.make_setup`."""
    if preset not in SHARDING_PRESETS:
        raise ValueError(f"--sharding={preset!r}: expected one of {sorted(SHARDING_PRESETS)}")
    mesh = sharding.make_mesh(mesh_shape)
    log.info("parameters sharded by the %r rules over the mesh %s", preset, dict(mesh.shape))
    return sharding.tree_shardings(model_def.logical_specs, model_def.shapes, mesh, SHARDING_PRESETS[preset])


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out={out} exists and is not empty (pass --overwrite to replace it)")


def hf_to_pjax(hf_dir: str | Path, out: str | Path, *, param_dtype: str = "float32",
               mesh_shape: Sequence[int] = (1, -1, 1), sharding_preset: str = "fsdp",
               overwrite: bool = False) -> LlamaConfig:
    """Import a Hugging Face model directory as a pjax params-only export at `out`; returns its config."""
    hf_dir, out = Path(hf_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    _check_out(out, overwrite)
    cfg = hf_models.load_config(hf_dir, param_dtype=param_dtype)
    model_def = build(cfg)
    params = hf_models.load_params(hf_dir, model_def, param_shardings(model_def, mesh_shape, sharding_preset))
    raw = hf_models.read_config(hf_dir)
    hf_meta = {k: raw[k] for k in ("model_type", "bos_token_id", "eos_token_id", "pad_token_id")
               if raw.get(k) is not None}
    checkpoint.export_params(out, params, {"phase": "import", "step": 0, "model": dataclasses.asdict(cfg),
                                           "source": str(hf_dir), "hf": hf_meta})
    return cfg


def gguf_to_pjax(path: str | Path, out: str | Path, *, param_dtype: str = "float32",
                 mesh_shape: Sequence[int] = (1, -1, 1), sharding_preset: str = "fsdp",
                 overwrite: bool = False) -> LlamaConfig:
    """Import a GGUF file (Llama architecture, dequantised) as a pjax params-only export at `out`."""
    path, out = Path(path).expanduser().resolve(), Path(out).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"--gguf={path}: no such file")
    _check_out(out, overwrite)
    cfg = LlamaConfig(**gguf.config_from_gguf(path), param_dtype=param_dtype)
    model_def = build(cfg)
    params = gguf.load_params(path, model_def, param_shardings(model_def, mesh_shape, sharding_preset))
    meta = gguf.read_metadata(path)
    ids = {f"{k}_token_id": meta[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "padding")
           if f"tokenizer.ggml.{k}_token_id" in meta}
    ids = {("pad_token_id" if k == "padding_token_id" else k): int(v) for k, v in ids.items()}
    checkpoint.export_params(out, params, {"phase": "import", "step": 0, "model": dataclasses.asdict(cfg),
                                           "source": str(path), "hf": {"model_type": "llama", **ids}})
    return cfg


def save_tokenizer(tokenizer: str | Path, out: Path) -> None:
    """Write the tokenizer at `tokenizer` (anything `pjax.data.tokenizer.load_tokenizer` reads) beside a
    Hugging Face model directory: a `tokenizer.json` vocabulary (from a GGUF file too) with its
    config, or a SentencePiece `tokenizer.model`."""
    tok = load_tokenizer(tokenizer)
    if isinstance(tok, HFTokenizer):
        tok.save_pretrained(out)
    elif isinstance(tok, SentencePieceTokenizer) and Path(tok.model_path).suffix == ".model":
        shutil.copyfile(tok.model_path, out / "tokenizer.model")
        piece = tok._sp.id_to_piece
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": piece(tok.bos_id), "eos_token": piece(tok.eos_id),
                  "pad_token": piece(tok.pad_id), "add_bos_token": tok.add_bos, "add_eos_token": False}
        if tok.chat_template:
            config["chat_template"] = tok.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    else:
        raise ValueError(f"--tokenizer={tokenizer}: cannot write a {type(tok).__name__} for transformers")


def export_config(export: str | Path) -> tuple[LlamaConfig, dict[str, Any]]:
    """(model config, metadata) of a pjax export."""
    meta = checkpoint.export_metadata(export)
    if meta is None:
        raise FileNotFoundError(f"--export={export}: no finished pjax export there "
                                f"(expected {checkpoint.EXPORT_METADATA} and params/)")
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    model = {k: tuple(v) if k == "rope_scaling" else v for k, v in meta.get("model", {}).items() if k in fields}
    try:
        return LlamaConfig(**model), meta
    except (TypeError, ValueError) as e:
        raise ValueError(f"{Path(export) / checkpoint.EXPORT_METADATA}: bad model config: {e}") from e


def pjax_to_hf(export: str | Path, out: str | Path, *, dtype: str = "float32", max_shard_gb: float = 5.0,
               model_type: str | None = None, mesh_shape: Sequence[int] = (1, -1, 1),
               sharding_preset: str = "fsdp", overwrite: bool = False, tokenizer: str = "") -> Path:
    """Write a pjax export as a Hugging Face model directory at `out` (with `tokenizer`'s files)."""
    out = Path(out).expanduser().resolve()
    _check_out(out, overwrite)
    cfg, meta = export_config(export)
    model_def = build(cfg)
    shardings = param_shardings(model_def, mesh_shape, sharding_preset)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            model_def.shapes, shardings)
    params = checkpoint.load_params(export, abstract)
    hf_meta = dict(meta.get("hf") or {})  # token ids and model type of an imported model
    imported_type = hf_meta.pop("model_type", None)
    written = hf_models.save_hf(params, cfg, out, dtype=dtype, max_shard_bytes=max_shard_gb * 1e9,
                                model_type=model_type or imported_type, extra_config=hf_meta, overwrite=overwrite)
    if tokenizer:
        save_tokenizer(tokenizer, Path(written))
    return written


def train_flags(cfg: LlamaConfig) -> str:
    """`pjax.train` flags that give `cfg` (a preset's name when one matches, else every field)."""
    values = dataclasses.asdict(cfg)
    free = ("remat", "scan_layers", "attention", "dtype", "param_dtype")
    for name in PRESETS:
        if all(values[k] == v for k, v in dataclasses.asdict(preset(name)).items() if k not in free):
            return f"--config.model.preset={name} --config.model.param_dtype={cfg.param_dtype}"
    return " ".join(f"--config.model.{k}={str(v).replace(' ', '')}"
                    for k, v in values.items() if k not in free[:3])


def _mesh(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh={text!r}: expected three integers, e.g. 1,-1,1") from None
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"--mesh={text!r}: expected three entries over (data, fsdp, tensor)")
    return shape


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--mesh", type=_mesh, default=(1, -1, 1), help="mesh over (data, fsdp, tensor); one -1")
    p.add_argument("--sharding", default="fsdp", help="parallelism preset of the parameter shardings")
    p.add_argument("--cpu_devices", type=int, default=0, help="simulate this many CPU devices (0 = JAX's default)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def _run_hf_to_pjax(a: argparse.Namespace) -> None:
    cfg = hf_to_pjax(a.hf, a.out, param_dtype=a.param_dtype, mesh_shape=a.mesh, sharding_preset=a.sharding,
                     overwrite=a.overwrite)
    print(f"wrote {a.out}; start a phase from it with --config.init_from={a.out} {train_flags(cfg)}")


def _run_gguf_to_pjax(a: argparse.Namespace) -> None:
    cfg = gguf_to_pjax(a.gguf, a.out, param_dtype=a.param_dtype, mesh_shape=a.mesh, sharding_preset=a.sharding,
                       overwrite=a.overwrite)
    print(f"wrote {a.out}; start a phase from it with --config.init_from={a.out} {train_flags(cfg)} "
          f"--config.data.tokenizer={a.gguf}")


def _run_pjax_to_hf(a: argparse.Namespace) -> None:
    out = pjax_to_hf(a.export, a.out, dtype=a.dtype, max_shard_gb=a.max_shard_gb, model_type=a.model_type,
                     mesh_shape=a.mesh, sharding_preset=a.sharding, overwrite=a.overwrite, tokenizer=a.tokenizer)
    print(f"wrote {out}")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], None]]]:
    """The parser, and the function each subcommand runs (add a subcommand here)."""
    parser = argparse.ArgumentParser(prog="python -m pjax.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hf-to-pjax", help="Hugging Face safetensors directory -> pjax export")
    p.add_argument("--hf", required=True, help="directory with config.json and model*.safetensors")
    p.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    _common(p)
    p = sub.add_parser("gguf-to-pjax", help="GGUF file (Llama architecture) -> pjax export")
    p.add_argument("--gguf", required=True, help="a .gguf file")
    p.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    _common(p)
    p = sub.add_parser("pjax-to-hf", help="pjax export -> Hugging Face safetensors directory")
    p.add_argument("--tokenizer", default="", help="also write this tokenizer (.model, tokenizer.json or .gguf)")
    p.add_argument("--export", required=True, help="a pjax params-only export (pjax.json + params/)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--max_shard_gb", type=float, default=5.0, help="largest safetensors file, in GB")
    p.add_argument("--model_type", default=None, choices=sorted(hf_models.SUPPORTED),
                   help="default: the import's, else from the variant (qwen2 with biases, mistral with a window)")
    _common(p)
    return parser, {"hf-to-pjax": _run_hf_to_pjax, "gguf-to-pjax": _run_gguf_to_pjax, "pjax-to-hf": _run_pjax_to_hf}


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    logs.configure()
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    try:
        commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
