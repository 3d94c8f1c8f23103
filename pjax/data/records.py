"""Records of every data shape the objectives need, and their encoding into the train step's arrays.

Records come from `pjax.data.sources.load_records` (any TRL dataset format, converted by
`pjax.data.formats`) or from the synthetic task. Text values are strings (standard) or message
lists (conversational, rendered with the chat template).

| shape | fields | arrays |
|---|---|---|
| SEQ  | prompt, completion | tokens/mask/completion_mask [N, T] |
| PAIR | prompt, chosen, rejected | [N, 2, T] (0 chosen, 1 rejected) |
| STEP | prompt, prefix, chosen, rejected | [N, 2, T]: prompt + prefix (the shared earlier steps) is context; only the step is scored |
| UNP  | prompt, completion, label (bool) | [N, T] + labels [N] + kl_tokens/kl_mask/kl_completion_mask [N, T] (prompt i with completion i-1, KTO's mismatched pairs) |
| LIST | prompt, completions (K), scores (K) | [N, K, T] + scores [N, K] |
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from pjax.data import batching
from pjax.data.chat import ChatTemplateError
from pjax.data.formats import KINDS, BadRow

log = logging.getLogger("pjax")

FIELDS = {kind: fields for kind, fields in KINDS.items() if kind != "PROMPT"}


def _example(row: dict, kind: str):
    """(prompt, completions) of a record: the text(s) scored and the context they follow."""
    if kind in ("SEQ", "UNP"):
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
    for number, row in zip(numbers, rows):
        try:
            prompt, completions = _example(row, kind)
            if k is not None and len(completions) != k:
                raise BadRow("wrong_type", f"row {number}: {len(completions)} completions; every LIST "
                                                      f"record must have the same number ({k})")
            try:
                parts.append(batching.encode_list(tok, prompt, completions, max_len, number, template=template,
                                                  stats=stats, max_prompt_tokens=max_prompt_tokens))
            except ChatTemplateError as e:  # e.g. "roles must alternate": this row's conversation
                raise BadRow("template_error", f"row {number}: {e}") from e
            kept.append(row)
        except BadRow as e:
            if report is None:
                raise
            report.add(e.reason, number, str(e))
    if stats.inconsistent:
        log.warning("data: %d of %d rows tokenise differently as prompt + completion than the prompt alone "
                    "(first rows %s); their prompt keeps its own tokens and the completion is tokenised "
                    "alone", len(stats.inconsistent), len(rows), stats.inconsistent[:5])
    if not kept:
        raise ValueError(f"no {kind} rows left to train on ({len(rows)} read, all bad)")
    out = batching.stack(parts, (0, 0, max_len))
    if kind in ("SEQ", "UNP"):
        out = {key: v[:, 0] for key, v in out.items()}
    if kind == "UNP":  # KTO's mismatched pairs: prompt i with completion i - 1
        mismatched = [(kept[i]["prompt"], kept[i - 1]["completion"]) for i in range(len(kept))]
        kl = batching.encode_sft(tok, mismatched, max_len, template=template)
        out.update({f"kl_{key}": v for key, v in kl.items()})
        out["labels"] = np.array([bool(r["label"]) for r in kept], np.int32)
    if kind == "LIST":
        out["scores"] = np.array([r["scores"] for r in kept], np.float32)
    return out
