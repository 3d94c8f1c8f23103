"""Tokenised numpy arrays for SFT, preference pairs and generation prompts.

Conventions relied on by the train step:

* SFT rows are ``[BOS] prompt completion [EOS]`` right-padded with ``pad_id``;
  ``mask`` is 1 at real tokens and ``completion_mask`` is 1 at the completion
  tokens (including EOS). Token t is predicted from position t-1 (the step
  shifts), so ``completion_mask`` marks the targets themselves.
* Preference arrays are [N, 2, T]; index 0 on axis 1 is chosen, 1 rejected,
  and both rows share identical prompt tokens.
* Truncation keeps the completion: the prompt is cut from the left (BOS stays
  first, at least one prompt token is kept); only if the completion alone does
  not fit is its end cut, and the row then has no EOS.
* Generation prompts are ``[BOS] prompt`` left-padded to P.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from pjax.data.tokenizer import SentencePieceTokenizer


def _encode_text(tok: SentencePieceTokenizer, text: str, what: str, row: int) -> list[int]:
    """Token ids of stripped ``text``; SentencePiece adds the leading-space marker itself,
    so ids(prompt) + ids(completion) matches the text ``prompt + " " + completion``."""
    ids = tok.encode(text.strip())
    if what == "completion" and not ids:
        raise ValueError(f"row {row}: empty completion text")
    return ids


def _prompt_budget(max_len: int, prompt_len: int, completion_len: int) -> int:
    """Prompt tokens kept so that BOS + prompt + completion + EOS fits ``max_len``."""
    return min(prompt_len, max(max_len - 2 - completion_len, min(prompt_len, 1)))


def _pack(tok: SentencePieceTokenizer, prompt: list[int], completion: list[int], max_len: int):
    """One padded row: (tokens, mask, completion_mask), prompt already cut to fit."""
    head = [tok.bos_id] + prompt
    body = (completion + [tok.eos_id])[: max_len - len(head)]
    tokens = np.full(max_len, tok.pad_id, np.int32)
    mask = np.zeros(max_len, np.int32)
    completion_mask = np.zeros(max_len, np.int32)
    n = len(head) + len(body)
    tokens[:n] = head + body
    mask[:n] = 1
    completion_mask[len(head) : n] = 1
    return tokens, mask, completion_mask


def _check_max_len(max_len: int) -> None:
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3 (BOS, a prompt token, a completion token), got {max_len}")


def encode_sft(
    tok: SentencePieceTokenizer, examples: Sequence[tuple[str, str]], max_len: int
) -> dict[str, np.ndarray]:
    """(prompt, completion) pairs -> ``tokens``, ``mask``, ``completion_mask`` int32 [N, T]."""
    _check_max_len(max_len)
    rows = []
    for i, (prompt, completion) in enumerate(examples):
        p = _encode_text(tok, prompt, "prompt", i)
        c = _encode_text(tok, completion, "completion", i)
        keep = _prompt_budget(max_len, len(p), len(c))
        rows.append(_pack(tok, p[len(p) - keep :], c, max_len))
    return _stack(rows, (0, max_len))


def encode_pairs(
    tok: SentencePieceTokenizer, pairs: Sequence[tuple[str, str, str]], max_len: int
) -> dict[str, np.ndarray]:
    """(prompt, chosen, rejected) -> ``tokens``, ``mask``, ``completion_mask`` int32 [N, 2, T]."""
    return encode_lists(tok, [(prompt, (chosen, rejected)) for prompt, chosen, rejected in pairs], max_len)


def encode_lists(
    tok: SentencePieceTokenizer, lists: Sequence[tuple[str, Sequence[str]]], max_len: int
) -> dict[str, np.ndarray]:
    """(prompt, K completions) -> ``tokens``, ``mask``, ``completion_mask`` int32 [N, K, T]; the K rows
    of a list share identical prompt tokens (cut once, to fit the longest completion)."""
    _check_max_len(max_len)
    rows = []
    for i, (prompt, completions) in enumerate(lists):
        p = _encode_text(tok, prompt, "prompt", i)
        cs = [_encode_text(tok, y, "completion", i) for y in completions]
        keep = _prompt_budget(max_len, len(p), max(len(c) for c in cs))
        packed = [_pack(tok, p[len(p) - keep :], c, max_len) for c in cs]
        rows.append(tuple(np.stack(parts) for parts in zip(*packed)))
    k = len(lists[0][1]) if lists else 0
    return _stack(rows, (0, k, max_len))


def encode_prompts(
    tok: SentencePieceTokenizer, prompts: Sequence[str], max_prompt_len: int
) -> dict[str, np.ndarray]:
    """Prompts -> ``tokens``, ``mask`` int32 [N, P]: ``[BOS] prompt`` left-padded,
    with the prompt cut from the left when too long."""
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")
    tokens = np.full((len(prompts), max_prompt_len), tok.pad_id, np.int32)
    mask = np.zeros((len(prompts), max_prompt_len), np.int32)
    for i, prompt in enumerate(prompts):
        p = _encode_text(tok, prompt, "prompt", i)
        row = [tok.bos_id] + p[max(0, len(p) - (max_prompt_len - 1)) :]
        tokens[i, max_prompt_len - len(row) :] = row
        mask[i, max_prompt_len - len(row) :] = 1
    return {"tokens": tokens, "mask": mask}


def _stack(rows: list[tuple[np.ndarray, ...]], empty_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    names = ("tokens", "mask", "completion_mask")
    if not rows:
        return {k: np.zeros(empty_shape, np.int32) for k in names}
    return {k: np.stack(parts) for k, parts in zip(names, zip(*rows))}


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Row indices (into N rows) of the global batch at ``step``: depends only on (seed, step), so
    resuming is exact and the order does not depend on how many hosts read it.

    Global row ``g = step * batch_size + j`` lies in epoch ``g // N`` and is
    ``perm(seed, epoch)[g % N]``, where ``perm`` is a seeded permutation of
    ``range(N)``; batches therefore wrap across epoch boundaries.
    """
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in [1, N={n}], got {batch_size}")
    if step < 0 or seed < 0:
        raise ValueError(f"step and seed must be >= 0, got step={step}, seed={seed}")
    g = step * batch_size + np.arange(batch_size)
    epochs = g // n
    idx = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        perm = _epoch_permutation(n, seed, int(epoch))
        sel = epochs == epoch
        idx[sel] = perm[g[sel] % n]
    return idx


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch, drawn once per epoch rather than at every step (read-only)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.flags.writeable = False
    return perm


def num_rows(arrays: dict[str, np.ndarray]) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must be non-empty with equal leading sizes, got {sizes}")
    return next(iter(sizes.values()))


def batch_at(arrays: dict[str, np.ndarray], step: int, batch_size: int, seed: int,
             rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The batch for global ``step`` (see `batch_indices`); with ``rows``, only those rows of it (a
    host's own share of the global batch: it reads nothing else)."""
    idx = batch_indices(num_rows(arrays), step, batch_size, seed)
    if rows is not None:
        idx = idx[rows]
    return {k: v[idx] for k, v in arrays.items()}
