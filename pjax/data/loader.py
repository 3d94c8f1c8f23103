"""The input pipeline (grain): encoded rows -> this host's share of every global batch.

* **Order.** `grain.MapDataset.range(N).shuffle(seed).repeat()`: a lazy, index-based permutation of
  the rows, redrawn every epoch. Global batch `s` is items `[s * B, (s + 1) * B)` of it, so batches
  wrap across epoch boundaries and depend only on (seed, step), not on the number of hosts.
* **Per host.** Every host computes the same order and reads only the rows its devices hold
  (`Setup.local_rows`): from memory-mapped arrays (`encoded_cache`), so no host reads another's
  records. Its stream is a grain `IterDataset` over steps with threaded prefetch.
* **State.** The iterator's state (`{"next_index": step}`) is part of every checkpoint; a resumed run
  restores it and reads exactly the batches the interrupted run would have.
* **Packing (SFT).** `pack_sequences` puts several rows into one `[T]` row (best fit, in a seeded
  order): `positions` restart at 0 per document and `segment_ids` (1, 2, ...; 0 = padding) keep
  attention inside each document; a document's first token is never a target (as in an unpacked row,
  where nothing precedes it). A deterministic plan over the whole data set, so it too is the same for
  any number of hosts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import grain
import jax
import numpy as np

from pjax import distributed

log = logging.getLogger("pjax")

Arrays = dict[str, np.ndarray]


def num_rows(arrays: Arrays) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must be non-empty with equal leading sizes, got {sizes}")
    return next(iter(sizes.values()))


def global_order(n: int, seed: int) -> grain.MapDataset:
    """Row index of every global position: a seeded permutation of `range(n)` per epoch, endless."""
    if n <= 0:
        raise ValueError(f"need at least one row, got {n}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed} must be in [0, 2**32)")
    return grain.MapDataset.range(n).shuffle(seed=seed).repeat()


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Row indices of the global batch at `step` (all hosts' rows)."""
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in [1, N={n}], got {batch_size}")
    order = global_order(n, seed)
    return np.array([order[step * batch_size + j] for j in range(batch_size)], np.int64)


class HostBatches:
    """This host's rows of every global batch from `start_step` on, as a checkpointable iterator.

    `next(it)` gives `{key: array[len(rows), ...]}` for the next step; `state()` is the position to
    save with a checkpoint and `HostBatches(..., state=saved)` continues from it.
    """

    def __init__(self, arrays: Arrays, *, batch_size: int, seed: int, rows: np.ndarray | None = None,
                 state: dict[str, Any] | None = None, num_threads: int = 2, prefetch: int = 4):
        n = num_rows(arrays)
        if not 0 < batch_size <= n:
            raise ValueError(f"train.batch_size={batch_size} must be in [1, {n}] (the number of training rows)")
        order = global_order(n, seed)
        rows = np.arange(batch_size) if rows is None else np.asarray(rows)

        def host_batch(step: int) -> Arrays:
            idx = np.array([order[step * batch_size + int(j)] for j in rows], np.int64)
            sort = np.argsort(idx, kind="stable")  # ascending reads from memory-mapped files
            out = {}
            for key, value in arrays.items():
                picked = np.asarray(value[idx[sort]])
                out[key] = np.empty_like(picked)
                out[key][sort] = picked
            return out

        steps = grain.MapDataset.range(0, 2**62).map(host_batch)
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self._it = iter(steps.to_iter_dataset(options))
        if state is not None:
            self._it.set_state(dict(state))

    def __iter__(self) -> Iterator[Arrays]:
        return self

    def __next__(self) -> Arrays:
        return next(self._it)

    def state(self) -> dict[str, Any]:
        return dict(self._it.get_state())


def start_state(step: int) -> dict[str, Any]:
    """The iterator state of a run that is about to take step `step` (a fresh run: 0)."""
    return {"next_index": int(step)}


# --------------------------------------------------------------------------------------------- cache

def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts, files (`Path`s, by content) and dicts of arrays (by name, dtype,
    shape and bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict) and part and all(isinstance(v, np.ndarray) for v in part.values()):
            for key in sorted(part):
                value = np.ascontiguousarray(part[key])
                digest.update(f"{key}:{value.dtype}:{value.shape}".encode())
                digest.update(value.tobytes())
        elif isinstance(part, Path):
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"|")
    return digest.hexdigest()[:24]


def encoded_cache(directory: Path, key: str, build: Callable[[], tuple[Arrays, dict]]) -> tuple[Arrays, dict]:
    """Arrays (and JSON metadata) built once, by process 0, and stored as `.npy` files in
    `directory/key/`; every process then memory-maps them, so each reads only the rows it uses. A
    half-written cache is never used."""
    target = directory / key
    if distributed.is_leader() and not (target / "done").exists():
        arrays, meta = build()
        tmp = directory / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, value in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(value))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / "done").write_text(json.dumps(sorted(arrays)))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        log.info("data: encoded %d rows into %s", len(arrays["tokens"]), target)
    distributed.barrier(f"pjax-data-{key}")
    if not (target / "done").exists():
        raise FileNotFoundError(f"data cache {target} is missing on process {jax.process_index()}: the "
                                "data cache directory must be on a filesystem every host sees")
    names = json.loads((target / "done").read_text())
    meta = json.loads((target / "meta.json").read_text())
    return {name: np.load(target / f"{name}.npy", mmap_mode="r") for name in names}, meta


# ------------------------------------------------------------------------------------------- packing

def pack_sequences(arrays: Arrays, seed: int) -> Arrays:
    """Pack SFT rows (`tokens`, `mask`, `completion_mask` `[N, T]`, right-padded) into fewer `[M, T]`
    rows, adding `positions` (restarting at 0 per document) and `segment_ids` (1.. per document, 0 on
    padding). Best fit in a seeded order: each row goes to the fullest packed row it still fits in."""
    tokens, mask, completion = (np.asarray(arrays[k]) for k in ("tokens", "mask", "completion_mask"))
    n, T = tokens.shape
    lengths = mask.sum(1).astype(np.int64)
    order = np.random.default_rng(seed).permutation(n)
    # bins by remaining room: `room[c]` holds the packed rows with exactly c free positions
    room: list[list[int]] = [[] for _ in range(T + 1)]
    nonempty = np.zeros(T + 1, bool)
    members: list[list[int]] = []
    for i in order:
        need = int(lengths[i])
        fits = np.flatnonzero(nonempty[need:])
        if fits.size:
            c = need + int(fits[0])
            b = room[c].pop()
            nonempty[c] = bool(room[c])
        else:
            b, c = len(members), T
            members.append([])
        members[b].append(int(i))
        left = c - need
        room[left].append(b)
        nonempty[left] = True
    m = len(members)
    out = {k: np.zeros((m, T), np.int32) for k in ("tokens", "mask", "completion_mask", "positions", "segment_ids")}
    for b, docs in enumerate(members):
        at = 0
        for seg, i in enumerate(docs, 1):
            L = int(lengths[i])
            out["tokens"][b, at:at + L] = tokens[i, :L]
            out["mask"][b, at:at + L] = 1
            out["completion_mask"][b, at:at + L] = completion[i, :L]
            out["completion_mask"][b, at] = 0  # predicted from the previous document: never scored
            out["positions"][b, at:at + L] = np.arange(L)
            out["segment_ids"][b, at:at + L] = seg
            at += L
    log.info("data: packed %d rows into %d (%.0f%% of positions used)", n, m, 100 * lengths.sum() / (m * T))
    return out


def global_batch(arrays: Arrays, step: int, batch_size: int, seed: int) -> Arrays:
    """Every row of the global batch at `step` (tests, benchmarks, evaluation on one host)."""
    idx = batch_indices(num_rows(arrays), step, batch_size, seed)
    return {k: np.asarray(v[idx]) for k, v in arrays.items()}
