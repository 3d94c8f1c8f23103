"""Random token batches of an exact shape, in the data shape of the configured objectives: what the
benchmarks (`experiments/bench.py`) time and the memory planner (`pjax.plan`) compiles."""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from pjax import losses
from pjax.models.config import model_config


def random_batch(config: ConfigDict, prompt_len: int, completion_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids below the resolved model's vocab size (`model_config(config).vocab_size`, which
    follows `--config.model.preset`; the raw `config.model.vocab_size` field still holds the base
    preset's value after a preset switch), no padding, in the data shape of the configured
    objectives: `[B, T]` (SEQ; UNP adds labels and KTO's mismatched rows), `[B, 2, T]` (PAIR, STEP)
    or `[B, K, T]` with scores (LIST, K = `data.list_size`); the sequences of a pair or list share
    their prompt, as real preference data does."""
    if prompt_len < 1 or completion_len < 1:
        raise ValueError("--prompt-len and --completion-len must be >= 1")
    T = prompt_len + completion_len
    B = config.train.batch_size
    kind = losses.data_kind(config.loss)
    lead = {"PAIR": (B, 2), "STEP": (B, 2), "LIST": (B, config.data.list_size)}.get(kind, (B,))
    rng = np.random.default_rng(seed)
    vocab = model_config(config).vocab_size

    def rows():
        tokens = rng.integers(0, vocab, size=(*lead, T), dtype=np.int32)
        if len(lead) > 1:  # the sequences of a pair or list share their prompt
            tokens[:, 1:, :prompt_len] = tokens[:, :1, :prompt_len]
        completion = np.zeros((*lead, T), np.int32)
        completion[..., prompt_len:] = 1
        return {"tokens": tokens, "mask": np.ones((*lead, T), np.int32), "completion_mask": completion}

    batch = rows()
    if kind == "UNP":
        batch["labels"] = (np.arange(B) % 2).astype(np.int32)
        batch.update({f"kl_{k}": v for k, v in rows().items()})
    if kind == "LIST":
        batch["scores"] = rng.normal(size=lead).astype(np.float32)
    return batch
