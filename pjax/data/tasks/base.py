"""What the built-in tasks share: the cache directory, the config fields every task has and their
validation, seeded RNG streams, the tokenizer cache path and held-out prompt draws.

A task module (`pjax.data.tasks.synthetic`, `pjax.data.tasks.arithmetic`) subclasses `TaskConfig`
with its own fields and checks, names its RNG streams with `Streams`, keys its tokenizer with
`tokenizer_path` and trains it with `pjax.data.tokenizer.cached_sentencepiece` on a seed-independent
corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def default_cache_dir() -> str:
    """``$PJAX_CACHE/synthetic`` (``PJAX_CACHE`` defaults to ``~/.cache/pjax``), read when called."""
    return str(Path(os.environ.get("PJAX_CACHE", "~/.cache/pjax")).expanduser() / "synthetic")


@dataclass(kw_only=True)
class TaskConfig:
    """The fields of every task: the seed, the sizes of the SFT and held-out prompt splits, the
    tokenizer's vocabulary size and its cache directory (`default_cache_dir`)."""

    seed: int = 0
    num_sft: int = 4000
    num_heldout_prompts: int = 256
    sp_vocab_size: int = 512
    cache_dir: str = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        self._require_nonnegative("seed", "num_sft", "num_heldout_prompts")

    def _require(self, name: str, ok: bool, why: str) -> None:
        """Raise ``ValueError("<Config>.<name> <why>, got <value>")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{type(self).__name__}.{name} {why}, got {getattr(self, name)!r}")

    def _require_nonnegative(self, *names: str) -> None:
        for name in names:
            self._require(name, getattr(self, name) >= 0, "must be >= 0")


class Streams:
    """Independent RNG streams of a task, numbered in the order named: ``rng(seed, name)`` is
    ``np.random.default_rng([seed, number])``. The numbers fix the generated data: append new names,
    never reorder them."""

    def __init__(self, *names: str) -> None:
        self.ids = {name: i for i, name in enumerate(names)}

    def __call__(self, seed: int, stream: str) -> np.random.Generator:
        return np.random.default_rng([seed, self.ids[stream]])


def tokenizer_path(cache_dir: str, prefix: str, version: str, vocab_size: int, *key: Any) -> Path:
    """``<cache_dir>/<prefix>sp<vocab_size>-<digest>.model``, the digest a hash of the generator
    version, the vocabulary size and whatever else (`key`, JSON-serialisable) shapes the corpus."""
    digest = hashlib.sha256(json.dumps([version, vocab_size, *key]).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{prefix}sp{vocab_size}-{digest}.model"


def fresh(draw: Callable[[], str], avoid: Collection[str], max_tries: int | None = None) -> str:
    """A draw not in `avoid`: redrawn up to `max_tries` times (None: until one is found), the last
    draw returned if none was found."""
    item, tries = draw(), 0
    while item in avoid and (max_tries is None or tries < max_tries):
        item, tries = draw(), tries + 1
    return item


def heldout_prompts(draw: Callable[[], str], n: int, avoid: Collection[str] = (),
                    max_tries: int | None = None) -> list[str]:
    """`n` held-out prompts, each `fresh` against `avoid` and the ones before it (so distinct, unless
    `max_tries` runs out). With ``max_tries=None`` there must be at least ``n`` prompts outside `avoid`."""
    chosen: list[str] = []
    seen = set(avoid)
    for _ in range(n):
        chosen.append(fresh(draw, seen, max_tries))
        seen.add(chosen[-1])
    return chosen
