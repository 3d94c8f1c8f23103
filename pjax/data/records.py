"""Records of every data shape the objectives need, and their encoding into the train step's arrays.

Records come from `pjax.data.sources.load_records` (any TRL dataset format, converted by
`pjax.data.formats`) or from the synthetic task. Text values are strings (standard) or message
lists (conversational, rendered with the chat template).

| shape | fields | arrays |
|---|---|---|
| SEQ  | prompt, completion | tokens/mask/completion_mask [N, T] |
| PAIR | prompt, chosen, rejected, optional margin | [N, 2, T] (0 chosen, 1 rejected) + margins float32 [N] when the records carry a margin |
| STEP | prompt, prefix, chosen, rejected | [N, 2, T]: prompt + prefix (the shared earlier steps) is context; only the step is scored |
| UNP  | prompt, completion, label (bool) | [N, T] + labels [N] + kl_tokens/kl_mask/kl_completion_mask [N, T] (prompt i with completion i-1, KTO's mismatched pairs) |
| LIST | prompt, completions (K), scores (K) | [N, K, T] + scores [N, K] |
| SCORE | prompt, completion, score | [N, T] + scores float32 [N] |

Token arrays are int32. A margin (TRL RewardTrainer's per-pair margin) is all or nothing: when some
PAIR records carry one, those without are bad rows ("missing_keys").
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from pjax.data import batching
from pjax.data.chat import ChatTemplateError
from pjax.data.formats import KINDS, BadRow, number

log = logging.getLogger("pjax")

FIELDS = {kind: fields for kind, fields in KINDS.items() if kind != "PROMPT"}


def _example(row: dict, kind: str):
    """(prompt, completions) of a record: the text(s) scored and the context they follow."""
    if kind in ("SEQ", "UNP", "SCORE"):
        return row["prompt"], (row["completion"],)
    if kind == "PAIR":
        return row["prompt"], (row["chosen"], row["rejected"])
    if kind == "STEP":
        if not (isinstance(row["prompt"], str) and isinstance(row["prefix"], str)):
            raise BadRow("wrong_type", "STEP records need string prompt and prefix")
        return row["prompt"] + row["prefix"], (row["chosen"], row["rejected"])  # as Step-DPO concatenates
    if kind == "LIST":
        return row["prompt"], tuple(row["completions"])
    raise ValueError(f"unknown data shape {kind!r}; expected one of {sorted(FIELDS)}")


def encode(tok, rows: Sequence[dict], kind: str, max_len: int, *, template: str | None = None,
           report=None, row_numbers: Sequence[int] | None = None, max_prompt_tokens: int = 0) -> dict[str, np.ndarray]:
    """Encode records into the train step's arrays (see the table above).

    A row that cannot be encoded (an empty completion, a prompt over `max_prompt_tokens`) raises,
    naming its row number, unless a `report` (`pjax.data.formats.BadRowReport`) collects it: then the
    row is left out and counted there. Rows whose prompt and completion tokens merge across the
    boundary are logged (see `pjax.data.batching`).
    """
    batching.check_max_len(max_len)
    numbers = list(row_numbers) if row_numbers is not None else list(range(len(rows)))
    stats = batching.EncodeStats()
    parts, kept = [], []
    k = len(rows[0]["completions"]) if kind == "LIST" and rows else None
    margins = kind == "PAIR" and any("margin" in row for row in rows)
    values = []  # per kept row: its score (SCORE) or margin (PAIR with margins)
    for n, row in zip(numbers, rows):
        try:
            prompt, completions = _example(row, kind)
            value = _value(row, kind, margins, n)
            if k is not None and len(completions) != k:
                raise BadRow("wrong_type", f"row {n}: {len(completions)} completions; every LIST "
                                           f"record must have the same number ({k})")
            try:
                parts.append(batching.encode_list(tok, prompt, completions, max_len, n, template=template,
                                                  stats=stats, max_prompt_tokens=max_prompt_tokens))
            except ChatTemplateError as e:  # e.g. "roles must alternate": this row's conversation
                raise BadRow("template_error", f"row {n}: {e}") from e
            kept.append(row)
            values.append(value)
        except BadRow as e:
            if report is None:
                raise
            report.add(e.reason, n, str(e))
    if stats.inconsistent:
        log.warning("data: %d of %d rows tokenise differently as prompt + completion than the prompt alone "
                    "(first rows %s); their prompt keeps its own tokens and the completion is tokenised "
                    "alone", len(stats.inconsistent), len(rows), stats.inconsistent[:5])
    if not kept:
        raise ValueError(f"no {kind} rows left to train on ({len(rows)} read, all bad)")
    out = batching.stack(parts, (0, 0, max_len))
    if kind in ("SEQ", "UNP", "SCORE"):
        out = {key: v[:, 0] for key, v in out.items()}
    if kind == "UNP":  # KTO's mismatched pairs: prompt i with completion i - 1
        mismatched = [(kept[i]["prompt"], kept[i - 1]["completion"]) for i in range(len(kept))]
        kl = batching.encode_sft(tok, mismatched, max_len, template=template)
        out.update({f"kl_{key}": v for key, v in kl.items()})
        out["labels"] = np.array([bool(r["label"]) for r in kept], np.int32)
    if kind == "LIST":
        out["scores"] = np.array([r["scores"] for r in kept], np.float32)
    if kind == "SCORE":
        out["scores"] = np.array(values, np.float32)
    if margins:
        out["margins"] = np.array(values, np.float32)
    return out


def _value(row: dict, kind: str, margins: bool, n: int) -> float | None:
    """A SCORE record's score, or a PAIR record's margin when the records carry margins (else None)."""
    if kind == "SCORE":
        return number(row["score"], "score", f"row {n}")
    if not margins:
        return None
    if "margin" not in row:
        raise BadRow("missing_keys", f"row {n}: no 'margin', while other PAIR records have one (a margin is "
                                     "needed for every pair or none)")
    return number(row["margin"], "margin", f"row {n}")
