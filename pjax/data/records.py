"""Preference records (one JSON object per line) for every data shape the objectives need, and
their encoding into the arrays the train step consumes.

| shape | fields | arrays |
|---|---|---|
| SEQ  | prompt, completion | tokens/mask/completion_mask [N, T] |
| PAIR | prompt, chosen, rejected | [N, 2, T] (0 chosen, 1 rejected) |
| STEP | prompt, prefix, chosen, rejected | [N, 2, T]: prompt + prefix (the shared earlier steps) is context; only the step is scored |
| UNP  | prompt, completion, label (bool) | [N, T] + labels [N] + kl_tokens/kl_mask/kl_completion_mask [N, T] (prompt i with completion i-1, KTO's mismatched pairs) |
| LIST | prompt, completions (K), scores (K) | [N, K, T] + scores [N, K] |
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pjax.data import batching
from pjax.data.tokenizer import SentencePieceTokenizer

FIELDS = {
    "SEQ": ("prompt", "completion"),
    "PAIR": ("prompt", "chosen", "rejected"),
    "STEP": ("prompt", "prefix", "chosen", "rejected"),
    "UNP": ("prompt", "completion", "label"),
    "LIST": ("prompt", "completions", "scores"),
}


def check_record(row: Any, kind: str, where: str) -> dict:
    """Validate one record; errors name `where` (file and line) and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [f for f in FIELDS[kind] if f not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} for data shape {kind} (needs {list(FIELDS[kind])})")
    for f in FIELDS[kind]:
        value = row[f]
        if f == "label" and not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"{where}: field 'label' must be true/false, got {value!r}")
        if f in ("completions", "scores") and (not isinstance(value, list) or len(value) < 2):
            raise ValueError(f"{where}: field {f!r} must be a list of at least 2 entries")
        if f in ("prompt", "prefix", "completion", "chosen", "rejected") and not isinstance(value, str):
            raise ValueError(f"{where}: field {f!r} must be a string, got {type(value).__name__}")
    if kind == "LIST" and len(row["completions"]) != len(row["scores"]):
        raise ValueError(f"{where}: {len(row['completions'])} completions but {len(row['scores'])} scores")
    return row


def read_jsonl(path: str | Path, kind: str) -> list[dict]:
    """Records of data shape `kind` from a JSONL file (plain or .gz), validated line by line."""
    path = Path(path)
    if kind not in FIELDS:
        raise ValueError(f"unknown data shape {kind!r}; expected one of {sorted(FIELDS)}")
    if not path.is_file():
        raise FileNotFoundError(f"data.path={str(path)!r}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            rows.append(check_record(row, kind, f"{path}:{lineno}"))
    if not rows:
        raise ValueError(f"{path}: no records")
    return rows


def encode(tok: SentencePieceTokenizer, rows: Sequence[dict], kind: str, max_len: int) -> dict[str, np.ndarray]:
    """Encode validated records into the train step's arrays (see the table above)."""
    if kind == "SEQ":
        return batching.encode_sft(tok, [(r["prompt"], r["completion"]) for r in rows], max_len)
    if kind == "PAIR":
        return batching.encode_pairs(tok, [(r["prompt"], r["chosen"], r["rejected"]) for r in rows], max_len)
    if kind == "STEP":
        return batching.encode_pairs(
            tok, [(f"{r['prompt'].strip()} {r['prefix'].strip()}", r["chosen"], r["rejected"]) for r in rows], max_len)
    if kind == "UNP":
        examples = [(r["prompt"], r["completion"]) for r in rows]
        out = batching.encode_sft(tok, examples, max_len)
        mismatched = [(examples[i][0], examples[i - 1][1]) for i in range(len(examples))]
        kl = batching.encode_sft(tok, mismatched, max_len)
        out.update({f"kl_{k}": v for k, v in kl.items()})
        out["labels"] = np.array([bool(r["label"]) for r in rows], np.int32)
        return out
    if kind == "LIST":
        k = len(rows[0]["completions"])
        if any(len(r["completions"]) != k for r in rows):
            raise ValueError("LIST records must all have the same number of completions")
        out = batching.encode_lists(tok, [(r["prompt"], r["completions"]) for r in rows], max_len)
        out["scores"] = np.array([r["scores"] for r in rows], np.float32)
        return out
    raise ValueError(f"unknown data shape {kind!r}")
