"""Tokenised numpy arrays for SFT, preference pairs, lists and generation prompts.

Conventions relied on by the train step:

* A row is ``prompt completion`` right-padded with ``pad_id``: the prompt's tokens as the prompt
  alone tokenises (with BOS first when the tokenizer adds one, or the chat template writes it), then
  the completion's (ending in EOS for plain text; conversational completions end as the chat template
  ends the turn). ``mask`` is 1 at real tokens and ``completion_mask`` at the completion tokens.
  Token t is predicted from position t-1 (the step shifts), so ``completion_mask`` marks the targets.
* Plain text is joined as TRL joins it, ``prompt + completion`` as given (a completion carries its
  own leading space: ``"The sky is"``, ``" blue."``). When the tokens of the whole text do not start with the prompt's own tokens (a merge across the
  boundary), the prompt keeps its own tokens and the completion is tokenised alone; such rows are
  counted (``EncodeStats.inconsistent``) and reported, as TRL warns.
* Preference arrays are [N, 2, T] (0 chosen, 1 rejected), lists [N, K, T]; the rows of one example
  share identical prompt tokens.
* Truncation keeps the completion: the prompt is cut from the left (BOS stays first, at least one
  prompt token is kept); only if the completion alone does not fit is its end cut (no EOS then).
* Generation prompts are the prompt's tokens left-padded to P (cut from the left, BOS kept).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pjax.data.chat import encode_example, encode_prompt
from pjax.data.formats import BadRow

Text = Any  # a string (standard) or a list of {"role", "content"} messages (conversational)


@dataclasses.dataclass
class EncodeStats:
    """Rows whose prompt tokens were kept apart from the completion's (see the module docstring)."""

    inconsistent: list[int] = dataclasses.field(default_factory=list)


def _is_empty(text: Text) -> bool:
    if isinstance(text, str):
        return not text.strip()
    return not text or all(not str(m.get("content") or "").strip() for m in text)


def tokenize(tok, prompt: Text, completion: Text, row: int, *, template: str | None = None,
             stats: EncodeStats | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one example (see the module docstring)."""
    if _is_empty(completion):
        raise BadRow("empty_completion", f"row {row}: empty completion text")
    try:
        p, c, consistent = encode_example(tok, prompt, completion, template=template)
    except ValueError as e:
        if template is None and not (isinstance(prompt, str) and isinstance(completion, str)):
            raise ValueError(f"row {row} is a conversation (a list of messages) and needs a chat template: {e} "
                             "(data.chat_template)") from e
        raise
    if not consistent and stats is not None:
        stats.inconsistent.append(row)
    if not c:
        raise BadRow("empty_completion", f"row {row}: the completion has no tokens")
    return p, c


def _fit(tok, prompt: list[int], completion_len: int, max_len: int) -> list[int]:
    """The prompt cut from the left so that prompt + completion fits (BOS kept, >= 1 other token)."""
    has_bos = bool(prompt) and tok.add_bos and prompt[0] == tok.bos_id
    head, rest = prompt[:1] if has_bos else [], prompt[1:] if has_bos else prompt
    keep = min(len(rest), max(max_len - len(head) - completion_len, min(len(rest), 1)))
    return head + rest[len(rest) - keep:]


def _row(tok, prompt: list[int], completion: list[int], max_len: int):
    """One padded row: (tokens, mask, completion_mask), the prompt already cut to fit."""
    body = completion[: max(max_len - len(prompt), 0)]
    tokens = np.full(max_len, tok.pad_id, np.int32)
    mask = np.zeros(max_len, np.int32)
    completion_mask = np.zeros(max_len, np.int32)
    n = len(prompt) + len(body)
    tokens[:n] = prompt + body
    mask[:n] = 1
    completion_mask[len(prompt):n] = 1
    return tokens, mask, completion_mask


def check_max_len(max_len: int) -> None:
    if max_len < 3:
        raise ValueError(f"data.max_len must be >= 3 (BOS, a prompt token, a completion token), got {max_len}")


def encode_list(tok, prompt: Text, completions: Sequence[Text], max_len: int, row: int, *,
                template: str | None = None, stats: EncodeStats | None = None, max_prompt_tokens: int = 0):
    """One example with K completions -> (tokens, mask, completion_mask) each `[K, T]`, the K rows
    sharing the prompt's tokens (cut once, to fit the longest completion). Raises `BadRow`."""
    parts = [tokenize(tok, prompt, c, row, template=template, stats=stats) for c in completions]
    p = parts[0][0]
    if max_prompt_tokens and len(p) > max_prompt_tokens:
        raise BadRow("prompt_too_long", f"row {row}: prompt of {len(p)} tokens exceeds "
                                          f"data.max_prompt_tokens={max_prompt_tokens}")
    p = _fit(tok, p, max(len(c) for _, c in parts), max_len)
    packed = [_row(tok, p, c, max_len) for _, c in parts]
    return tuple(np.stack(x) for x in zip(*packed))


def stack(rows: list[tuple[np.ndarray, ...]], empty_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    names = ("tokens", "mask", "completion_mask")
    if not rows:
        return {k: np.zeros(empty_shape, np.int32) for k in names}
    return {k: np.stack(parts) for k, parts in zip(names, zip(*rows))}


def encode_lists(tok, lists: Sequence[tuple[Text, Sequence[Text]]], max_len: int, *,
                 template: str | None = None, stats: EncodeStats | None = None) -> dict[str, np.ndarray]:
    """(prompt, K completions) -> ``tokens``, ``mask``, ``completion_mask`` int32 [N, K, T]."""
    check_max_len(max_len)
    rows = [encode_list(tok, p, cs, max_len, i, template=template, stats=stats) for i, (p, cs) in enumerate(lists)]
    return stack(rows, (0, len(lists[0][1]) if lists else 0, max_len))


def encode_sft(tok, examples: Sequence[tuple[Text, Text]], max_len: int, **kw) -> dict[str, np.ndarray]:
    """(prompt, completion) pairs -> ``tokens``, ``mask``, ``completion_mask`` int32 [N, T]."""
    out = encode_lists(tok, [(p, (c,)) for p, c in examples], max_len, **kw)
    return {k: v[:, 0] for k, v in out.items()}


def encode_pairs(tok, pairs: Sequence[tuple[Text, Text, Text]], max_len: int, **kw) -> dict[str, np.ndarray]:
    """(prompt, chosen, rejected) -> ``tokens``, ``mask``, ``completion_mask`` int32 [N, 2, T]."""
    return encode_lists(tok, [(p, (c, r)) for p, c, r in pairs], max_len, **kw)


def encode_prompts(tok, prompts: Sequence[Text], max_prompt_len: int, *,
                   template: str | None = None) -> dict[str, np.ndarray]:
    """Prompts -> ``tokens``, ``mask`` int32 [N, P]: left-padded, cut from the left (BOS kept)."""
    if max_prompt_len < 1 + bool(tok.add_bos):
        raise ValueError(f"max_prompt_len must be >= {1 + bool(tok.add_bos)} (BOS and a prompt token), "
                         f"got {max_prompt_len}")
    tokens = np.full((len(prompts), max_prompt_len), tok.pad_id, np.int32)
    mask = np.zeros((len(prompts), max_prompt_len), np.int32)
    for i, prompt in enumerate(prompts):
        row = _fit(tok, encode_prompt(tok, prompt, template=template), 0, max_prompt_len)
        tokens[i, max_prompt_len - len(row):] = row
        mask[i, max_prompt_len - len(row):] = 1
    return {"tokens": tokens, "mask": mask}
