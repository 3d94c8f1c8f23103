"""The precomputed reference of an offline phase (`data.precompute_ref`): the frozen reference's
(`pjax.core.init.reference_params`) per-token log-probs of every training row, computed once and cached
beside the encoded data."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from pjax import checkpoint, distributed, losses, models
from pjax.core.setup import Setup
from pjax.data import load, loader
from pjax.models.config import model_config

log = logging.getLogger("pjax")


def reference_cache_path(config: ConfigDict, arrays: dict[str, np.ndarray]) -> Path:
    """Where precomputed reference log-probs live: beside the encoded data (`load.data_cache_dir`, which
    every host sees), keyed by a hash of the reference checkpoint and of the encoded data."""
    meta = checkpoint.export_metadata(config.init_from) if config.init_from else None
    reference_id = (meta["export_id"] if meta else json.dumps(load.source_identity(config.import_from))
                    if config.import_from else f"fresh-init:{config.seed}")
    model = json.dumps(dataclasses.asdict(model_config(config)), sort_keys=True)  # dtype included
    digest = loader.fingerprint(reference_id, model, config.train.logprob_chunk, arrays)
    return load.data_cache_dir(config) / "reference" / f"ref-logps-{digest[:20]}.npz"


def precomputed_reference(setup: Setup, ref_params: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-token reference log-probs of every training row (and of KTO's mismatched rows), computed in
    one pass and cached, so that training runs without a reference forward.

    Whether the cache exists is decided once, by process 0, for every process: the computation is a
    collective over the mesh, which all processes enter or none."""
    config = setup.config
    path = reference_cache_path(config, arrays)
    if distributed.broadcast_string("1" if path.exists() else "0") == "1":
        if not path.exists():
            raise FileNotFoundError(f"reference cache {path}: process 0 has it, process {jax.process_index()} does "
                                    "not see it; data.cache_dir must be on a filesystem every host shares")
        log.info("reference: precomputed log-probs from %s", path)
        with np.load(path) as cached:
            return dict(cached)
    chunk = config.train.logprob_chunk
    fn = lambda p, t, m: models.sequence_token_logprobs(setup.model_def, p, t, m, chunk_size=chunk)  # noqa: E731
    out = {}
    kto = any(o.name == "kto" for o, _ in losses.terms(config.loss))
    for prefix in ("", "kl_") if kto else ("",):
        rows = {"tokens": arrays[f"{prefix}tokens"], "mask": arrays[f"{prefix}mask"]}
        out[f"{prefix}ref_logps"] = setup.map_rows("reference_logps", fn, rows, ("tokens", "mask"), ref_params)
    if jax.process_index() == 0:
        _save_npz(path, out)
    distributed.barrier("pjax-reference-cache")  # written before any process may look for it again
    log.info("reference: computed log-probs for %d rows, cached at %s", len(arrays["tokens"]), path)
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
