"""A phase's data from its config: the built-in task's records or `data.path` (any source and TRL
format), tokenised, encoded once into a memory-mapped cache, split into training and held-out rows;
and the data position a checkpoint records, so that a resumed run reads what the interrupted one would
have read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from pjax import distributed, losses
from pjax.data import chat, loader, records, sources, tasks, tokenizer
from pjax.data.tasks import synthetic
from pjax.models.config import model_config


@dataclasses.dataclass
class Data:
    """A phase's data: the tokenizer, the encoded training rows (memory-mapped when read from a file),
    the held-out rows (`data.num_heldout`), what identifies them, and the bad rows left out."""

    tokenizer: Any
    arrays: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray] | None
    fingerprint: str
    bad_rows: dict[str, Any] | None = None
    task: Any = None  # the synthetic task (gold reward, held-out prompts), when training on it


def load_data(config: ConfigDict) -> Data:
    """This phase's training rows in the data shape the configured objectives need.

    From `data.path` (any source of `pjax.data.sources`, any TRL format, tokenised with
    `data.tokenizer` and, for conversations, `data.chat_template`) when set, else from the synthetic
    task. File data is encoded once into a cache of memory-mapped arrays (`data.cache_dir`), keyed by
    the source, the tokenizer and every encoding option; each host then reads only its own rows.
    """
    d = config.data
    kind = losses.data_kind(config.loss)
    task = tasks.build_task(config) if not (d.path and d.tokenizer) else None
    tok = load_tokenizer(config) if d.tokenizer else task.tokenizer
    vocab = model_config(config).vocab_size
    if tok.vocab_size > vocab:
        raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size} "
                         f"(data.tokenizer={d.tokenizer or 'the synthetic task'!r})")
    if not d.path:
        if kind == "SEQ":
            rows = [{"prompt": p, "completion": c} for p, c in task.sft]
        elif d.task != "synthetic":
            raise ValueError(f"data.task={d.task!r} has SFT data and prompts only; {kind} data needs data.path "
                             "or data.task='synthetic'")
        else:
            rows = synthetic.preference_records(tasks.synthetic_config(config), kind, list_size=d.list_size)
        arrays, heldout = _encode_split(config, tok, rows, list(range(len(rows))), kind, None), None
        if d.packing:
            arrays = loader.pack_sequences(arrays, config.seed)
        return Data(tok, arrays, heldout, loader.fingerprint(arrays), None, task)
    key = loader.fingerprint("v1", source_identity(d.path), d.split, d.format, d.tfds_data_dir, kind, d.max_len,
                               d.max_prompt_tokens, d.num_heldout, d.bad_rows, d.packing, config.seed,
                               tokenizer_identity(config), d.chat_template, d.max_row_bytes, d.drop_duplicates)
    key = distributed.broadcast_string(key)  # process 0's: hosts may see other mount points or times
    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        rows, bad = sources.load_records(d.path, kind, split=d.split, bad_rows=d.bad_rows,
                                         data_dir=d.tfds_data_dir or None, format=d.format,
                                         max_row_bytes=d.max_row_bytes, drop_duplicates=d.drop_duplicates)
        numbers = list(bad.record_rows)  # the source row (line) each record came from
        found_on_reading = bad.total
        order = np.random.default_rng(config.seed).permutation(len(rows))
        if d.num_heldout >= len(rows):
            raise ValueError(f"data.num_heldout={d.num_heldout} leaves no training rows of the {len(rows)} in "
                             f"{d.path}")
        held, train_idx = sorted(order[:d.num_heldout]), sorted(order[d.num_heldout:])
        arrays = _encode_split(config, tok, [rows[i] for i in train_idx], [numbers[i] for i in train_idx], kind,
                               bad)
        if d.packing:
            arrays = loader.pack_sequences(arrays, config.seed)
        if held:
            arrays.update({f"heldout.{k}": v for k, v in _encode_split(
                config, tok, [rows[i] for i in held], [numbers[i] for i in held], kind, bad).items()})
        if bad.total > found_on_reading:  # rows bad only once tokenised: fail raises, skip logs the report
            bad.check(d.bad_rows)
        return arrays, {"bad_rows": bad.to_dict() if bad.total or bad.duplicates else None}

    stored, meta = loader.encoded_cache(data_cache_dir(config) / "encoded", key, build)
    arrays = {k: v for k, v in stored.items() if not k.startswith("heldout.")}
    heldout = {k.split(".", 1)[1]: v for k, v in stored.items() if k.startswith("heldout.")} or None
    return Data(tok, arrays, heldout, key, meta["bad_rows"], task)


def data_cache_dir(config: ConfigDict) -> Path:
    """Where encoded data and precomputed reference log-probs are cached: `data.cache_dir`, else (every
    host reads them) beside the workdir when there are several processes (a filesystem they share),
    else the task cache (`$PJAX_CACHE` or `~/.cache/pjax/synthetic`)."""
    if config.data.cache_dir:
        return Path(config.data.cache_dir).expanduser()
    if jax.process_count() > 1:
        return Path(config.workdir).expanduser().resolve().parent / ".pjax-data"
    return tasks.cache_dir(config)


def _encode_split(config: ConfigDict, tok: Any, rows: list[dict], numbers: list[int], kind: str,
                  report: Any) -> dict[str, np.ndarray]:
    d = config.data
    template = chat.resolve_template(tok, d.chat_template) if (d.chat_template or tok.chat_template) else None
    return records.encode(tok, rows, kind, d.max_len, template=template, report=report, row_numbers=numbers,
                          max_prompt_tokens=d.max_prompt_tokens)


def load_tokenizer(config: ConfigDict) -> Any:
    """The tokenizer of `data.tokenizer` (errors name the key)."""
    try:
        return tokenizer.load_tokenizer(config.data.tokenizer)
    except (OSError, ValueError) as e:
        raise ValueError(f"data.tokenizer={config.data.tokenizer!r}: {e}") from e


def source_identity(spec: str) -> list[Any]:
    """What identifies a data source for the encoding cache: a local file's or directory's path, size
    and modification time; a TFDS or hub name as given."""
    path = Path(spec).expanduser()
    if not path.exists():
        return [spec]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [path.name] + [(str(p.relative_to(path)) if p != path else "", p.stat().st_size,
                           p.stat().st_mtime_ns) for p in files]


def tokenizer_identity(config: ConfigDict) -> list[Any]:
    """The tokenizer's files (with a `tokenizer.json`, the configuration files read beside it)."""
    path = Path(config.data.tokenizer).expanduser()
    if not config.data.tokenizer:
        return ["synthetic", config.data.sp_vocab_size]
    folder = path.parent if path.suffix == ".json" else path
    files = [path] if path.is_file() and path.suffix != ".json" else sorted(
        p for p in folder.glob("*") if p.is_file() and p.suffix in (".json", ".model", ".jinja"))
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def data_position(config: ConfigDict, data: Data) -> dict[str, Any]:
    """What a checkpoint records of the data (with the step and the input iterator's state): the
    encoded rows whose fingerprint this is, read in the order of `pjax.data.loader`."""
    return {"seed": int(config.seed), "batch_size": int(config.train.batch_size),
            "num_rows": int(len(data.arrays["tokens"])), "fingerprint": data.fingerprint}


def check_data_position(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """A resumed run must read the batches the interrupted one would have read."""
    changed = {k: (saved.get(k), v) for k, v in current.items()
               if k not in ("step", "iterator") and saved.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(changed.items()))
        keys = {"seed": "seed", "batch_size": "train.batch_size"}
        named = ", ".join(keys.get(k, "data.*") for k in sorted(changed))
        raise ValueError(f"the data changed since the checkpoint in {where} ({detail}); resuming would not "
                         f"continue the interrupted run. Restore {named} or use a new workdir")
