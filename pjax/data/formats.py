"""TRL dataset types -> pjax record kinds, with per-row validation and a bad-row report.

TRL types (``docs/source/dataset_formats.md``), detected from a row's keys by :func:`detect_type`:

| type | keys |
|---|---|
| language_modeling | text, or messages (ShareGPT: conversations) |
| prompt_only | prompt |
| prompt_completion | prompt, completion |
| preference | chosen, rejected, optional prompt (implicit prompt when absent), optional margin |
| unpaired | prompt, completion, label |
| scored | prompt, completion, score (pjax's own, for regression reward models: HelpSteer2-style ratings) |
| listwise | prompt, completions, scores (pjax's own; not a TRL type) |
| stepwise | prompt, prefix or initial_reason_steps, chosen, rejected (Step-DPO) |
| stepwise_supervision | prompt, completions, labels (TRL's PRM data; rejected here) |

pjax kinds (:data:`KINDS`) and the types :func:`to_kind` converts to them, following TRL's helpers
(``trl/data_utils.py``) and its conversion table:

| kind | from |
|---|---|
| SEQ | prompt_completion; language_modeling (empty prompt, whole text as completion, as SFT trains on every token); preference (chosen); unpaired (label true rows only); scored (the score is ignored) |
| PAIR | preference (implicit prompt: :func:`extract_prompt`); Anthropic HH transcripts (:func:`hh_to_preference`). A numeric ``margin`` (TRL RewardTrainer's optional per-pair margin column) is kept |
| STEP | stepwise |
| UNP | unpaired; preference -> two records, labels true / false (:func:`unpair`) |
| LIST | listwise |
| SCORE | scored; listwise -> one record per completion (:func:`unlist`) |
| PROMPT | every type with a prompt (implicit preference: the extracted prompt) |

Text values are strings (standard) or lists of ``{"role", "content"}`` messages (conversational);
ShareGPT ``{"from", "value"}`` messages are converted first (:func:`to_chatml`). A record is all
standard or all conversational. Bad rows raise :class:`BadRow` with a :data:`REASONS` reason;
:class:`BadRowReport` collects them for a whole source.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

KINDS: dict[str, tuple[str, ...]] = {
    "SEQ": ("prompt", "completion"),
    "PAIR": ("prompt", "chosen", "rejected"),
    "STEP": ("prompt", "prefix", "chosen", "rejected"),
    "UNP": ("prompt", "completion", "label"),
    "LIST": ("prompt", "completions", "scores"),
    "SCORE": ("prompt", "completion", "score"),
    "PROMPT": ("prompt",),
}
# Optional fields kept on a record of a kind when the row has them.
OPTIONAL: dict[str, tuple[str, ...]] = {"PAIR": ("margin",)}
TYPES = (
    "language_modeling",
    "prompt_only",
    "prompt_completion",
    "preference",
    "unpaired",
    "scored",
    "listwise",
    "stepwise",
    "stepwise_supervision",
)
REASONS = (
    "not_json",
    "not_object",
    "too_large",
    "missing_keys",
    "non_string",
    "empty_completion",
    "identical_pair",
    "wrong_type",
    "unsupported",
    "prompt_too_long",
    "template_error",
)
FORMATS = ("auto", "trl", "hh")
POLICIES = ("fail", "skip")
# ShareGPT speaker names -> ChatML roles; other `from` values are kept as they are.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
_TEXT_KEYS = ("prompt", "prefix", "completion", "chosen", "rejected")
_CHATML_KEYS = ("prompt", "prefix", "completion", "chosen", "rejected", "messages", "conversations")
_HH_MARKER = re.compile(r"(?:\A|\n\n)(Human|Assistant): ?")
_EXAMPLES_PER_REASON = 5


class BadRow(ValueError):
    """A row that cannot become a record; `reason` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown bad-row reason {reason!r}; expected one of {REASONS}")
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------
# Formats: standard / conversational, ShareGPT.


def is_messages(value: Any) -> bool:
    """True for a conversational value: a list whose first item has role and content
    (TRL's ``is_conversational`` test; an empty list counts as conversational)."""
    if not isinstance(value, list):
        return False
    return not value or (isinstance(value[0], dict) and "role" in value[0] and "content" in value[0])


def _chatml_messages(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    out = []
    for m in value:
        if isinstance(m, dict) and ("from" in m or "value" in m):
            m = dict(m)
            if "from" in m:
                speaker = m.pop("from")
                m["role"] = SHAREGPT_ROLES.get(speaker, speaker) if isinstance(speaker, str) else speaker
            if "value" in m:
                m["content"] = m.pop("value")
        out.append(m)
    return out


def to_chatml(row: dict) -> dict:
    """TRL's ``maybe_convert_to_chatml`` on a copy: ``from``/``value`` -> ``role``/``content`` in the
    message lists (also in ``prefix`` and each of ``completions``), ``conversations`` -> ``messages``.
    Also maps ShareGPT speakers (human -> user, gpt -> assistant), which TRL leaves as they are."""
    row = dict(row)
    for key in _CHATML_KEYS:
        if key in row:
            row[key] = _chatml_messages(row[key])
    if isinstance(row.get("completions"), list):
        row["completions"] = [_chatml_messages(c) for c in row["completions"]]
    if "conversations" in row and "messages" not in row:
        row["messages"] = row.pop("conversations")
    return row


# ---------------------------------------------------------------------------------------------
# Types.


def detect_type(row: Any) -> str:
    """The TRL dataset type of one row (see the module table), from its keys."""
    if not isinstance(row, dict):
        raise BadRow("not_object", f"expected an object (dict), got {type(row).__name__}")
    keys = set(row)
    if {"completions", "labels"} <= keys:
        return "stepwise_supervision"
    if {"completions", "scores"} <= keys:
        return "listwise"
    if {"chosen", "rejected"} <= keys:
        return "stepwise" if keys & {"prefix", "initial_reason_steps"} else "preference"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if {"prompt", "completion", "score"} <= keys:
        return "scored"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if keys & {"text", "messages", "conversations"}:
        return "language_modeling"
    if "prompt" in keys:
        return "prompt_only"
    raise BadRow(
        "missing_keys",
        f"keys {sorted(keys)} match no dataset type; expected text | messages (language modeling), prompt, "
        "prompt+completion, [prompt+]chosen+rejected, prompt+completion+label, prompt+completion+score, "
        "prompt+completions+scores or "
        "prompt+prefix|initial_reason_steps+chosen+rejected",
    )


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """TRL's ``extract_prompt``: split the shared prefix of chosen and rejected (characters for
    strings, whole messages for conversations) off as the prompt.

    As in TRL, a space just before the first difference stays with the completions, and when one
    is a prefix of the other the last shared element stays with both completions. Unlike TRL,
    a difference at the very first element gives an empty prompt (TRL then looks at ``chosen[-1]``).
    """
    n = min(len(chosen), len(rejected))
    idx = n - 1
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i - 1 if i > 0 and chosen[i - 1] == " " else i
            break
    idx = max(idx, 0)
    return chosen[:idx], chosen[idx:], rejected[idx:]


def number(value: Any, key: str, where: str = "row") -> float:
    """`value` as a float; a bool, a non-number or a non-finite number raises a "wrong_type" :class:`BadRow`."""
    out = None
    if hasattr(value, "__float__") and not isinstance(value, (str, bytes)) and not _is_bool(value):
        try:
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            pass
    if out is None or not math.isfinite(out):
        raise BadRow("wrong_type", f"{where}: {key!r} must be a finite number, got {value!r}")
    return out


def unlist(record: dict) -> list[dict]:
    """A LIST record as SCORE records: one per completion, with its score."""
    return [{"prompt": record["prompt"], "completion": c, "score": s}
            for c, s in zip(record["completions"], record["scores"])]


def unpair(record: dict) -> list[dict]:
    """TRL's ``unpair_preference_dataset`` for one PAIR record: chosen -> label true, rejected -> false."""
    return [
        {"prompt": record["prompt"], "completion": record["chosen"], "label": True},
        {"prompt": record["prompt"], "completion": record["rejected"], "label": False},
    ]


# ---------------------------------------------------------------------------------------------
# Anthropic HH transcripts.


def is_hh(row: dict) -> bool:
    """True for an Anthropic HH row: no prompt, chosen and rejected ``Human:``/``Assistant:`` transcripts."""
    if "prompt" in row or not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
        return False
    return all(
        t.startswith(("\n\nHuman:", "Human:")) and "\n\nAssistant:" in t for t in (row["chosen"], row["rejected"])
    )


def parse_hh(text: str, where: str = "row") -> list[dict]:
    """Messages of one HH transcript: split at ``\\n\\nHuman: `` / ``\\n\\nAssistant: `` (one space
    after the colon is part of the marker, the content is kept exactly); consecutive turns of the
    same speaker are joined with ``\\n\\n`` so that roles alternate."""
    parts = _HH_MARKER.split(text)
    if parts[0] != "" or len(parts) < 3:
        raise BadRow("wrong_type", f"{where}: not a Human:/Assistant: transcript: {text[:60]!r}")
    messages: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def hh_to_preference(row: dict, where: str = "row") -> dict:
    """An Anthropic HH row (``chosen``/``rejected`` transcripts, no prompt) as a conversational
    preference: prompt = the shared messages up to the last shared user turn, chosen/rejected =
    the assistant turn(s) after it. Like TRL's ``examples/datasets/hh-rlhf-helpful-base.py``, but
    the remainder is split into messages rather than kept as one assistant message."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise BadRow("missing_keys", f"{where}: HH row without {key!r}")
        if not isinstance(row[key], str):
            raise BadRow("non_string", f"{where}: HH {key!r} must be a string, got {type(row[key]).__name__}")
    if row["chosen"] == row["rejected"]:
        raise BadRow("identical_pair", f"{where}: chosen and rejected are the same transcript")
    chosen, rejected = parse_hh(row["chosen"], f"{where} chosen"), parse_hh(row["rejected"], f"{where} rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1]["role"] != "user":
        n -= 1
    if n == 0:
        raise BadRow("unsupported", f"{where}: chosen and rejected share no opening Human turn, so there is no prompt")
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


# ---------------------------------------------------------------------------------------------
# Conversion and validation.


def _missing(row: dict, kind: str, typ: str, where: str, need: str) -> BadRow:
    return BadRow("missing_keys", f"{where}: a {typ} row (keys {sorted(row)}) has no {need}, needed for kind {kind}")


def _explicit(row: dict) -> bool:
    """A preference row with its own prompt: present and of the same format as chosen."""
    return "prompt" in row and is_messages(row["prompt"]) == is_messages(row["chosen"])


def _preference(row: dict, where: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected); an absent prompt, or one of the other format, is extracted
    from chosen/rejected (TRL's ``maybe_extract_prompt``)."""
    chosen, rejected = row["chosen"], row["rejected"]
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, (str, list)):
            raise BadRow(
                "non_string", f"{where}: {key!r} must be a string or a message list, got {type(value).__name__}")
    if chosen == rejected:
        raise BadRow("identical_pair", f"{where}: chosen and rejected are identical")
    if _explicit(row):
        return row["prompt"], chosen, rejected
    if not chosen or not rejected:
        which = "chosen" if not chosen else "rejected"
        raise BadRow("empty_completion", f"{where}: {which!r} is empty")
    return extract_prompt(chosen, rejected)


def _convert(row: dict, typ: str, kind: str, where: str) -> list[dict]:
    if typ == "stepwise_supervision":
        raise BadRow(
            "unsupported",
            f"{where}: stepwise supervision rows (prompt, completions, labels) train process reward models, "
            "which pjax does not support yet",
        )
    if kind == "PROMPT":
        if typ == "preference" and not _explicit(row):
            return [{"prompt": _preference(row, where)[0]}]
        if "prompt" not in row:
            raise _missing(row, kind, typ, where, "'prompt'")
        return [{"prompt": row["prompt"]}]
    if kind == "SEQ":
        if typ in ("prompt_completion", "scored"):
            return [{"prompt": row["prompt"], "completion": row["completion"]}]
        if typ == "language_modeling":
            text = row["messages"] if "messages" in row else row["text"]
            return [{"prompt": [] if isinstance(text, list) else "", "completion": text}]
        if typ == "preference":
            prompt, chosen, _ = _preference(row, where)
            return [{"prompt": prompt, "completion": chosen}]
        if typ == "unpaired":
            label = _label(row["label"], where)
            return [{"prompt": row["prompt"], "completion": row["completion"]}] if label else []
        raise _missing(row, kind, typ, where, "'completion'")
    if kind == "PAIR":
        if typ == "preference":
            prompt, chosen, rejected = _preference(row, where)
            margin = {"margin": row["margin"]} if "margin" in row else {}
            return [{"prompt": prompt, "chosen": chosen, "rejected": rejected, **margin}]
        if typ == "stepwise":
            raise BadRow("unsupported", f"{where}: a stepwise (Step-DPO) row has a prefix; read it as kind STEP")
        raise _missing(row, kind, typ, where, "'chosen' and 'rejected'")
    if kind == "STEP":
        if typ == "stepwise":
            if "prompt" not in row:
                raise _missing(row, kind, typ, where, "'prompt'")
            prefix = row["prefix"] if "prefix" in row else row["initial_reason_steps"]
            return [{"prompt": row["prompt"], "prefix": prefix, "chosen": row["chosen"], "rejected": row["rejected"]}]
        raise _missing(row, kind, typ, where, "'prefix' (or 'initial_reason_steps') with 'chosen' and 'rejected'")
    if kind == "UNP":
        if typ == "unpaired":
            return [{"prompt": row["prompt"], "completion": row["completion"], "label": row["label"]}]
        if typ == "preference":
            prompt, chosen, rejected = _preference(row, where)
            return unpair({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        raise _missing(row, kind, typ, where, "'completion' and 'label' (or 'chosen' and 'rejected')")
    if kind == "LIST":
        if typ == "listwise":
            if "prompt" not in row:
                raise _missing(row, kind, typ, where, "'prompt'")
            return [{"prompt": row["prompt"], "completions": row["completions"], "scores": row["scores"]}]
        raise _missing(row, kind, typ, where, "'completions' and 'scores'")
    if kind == "SCORE":
        if {"prompt", "completion", "score"} <= set(row):  # scored, or an unpaired row that also has a score
            return [{"prompt": row["prompt"], "completion": row["completion"], "score": row["score"]}]
        if typ == "listwise":
            if "prompt" not in row:
                raise _missing(row, kind, typ, where, "'prompt'")
            return unlist(validate(row, "LIST", where))
        raise _missing(row, kind, typ, where, "'completion' and 'score' (or 'completions' and 'scores')")
    raise AssertionError(kind)


def _is_bool(value: Any) -> bool:
    """A Python or NumPy bool (``numpy.bool_``, named ``bool`` in NumPy 2)."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def _label(value: Any, where: str) -> bool:
    if _is_bool(value):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadRow("wrong_type", f"{where}: 'label' must be true/false, got {value!r}")


def _text(value: Any, key: str, where: str) -> tuple[Any, bool]:
    """(normalised value, conversational?) of one text value; messages keep only role and content."""
    if isinstance(value, str):
        return value, False
    if not isinstance(value, list):
        raise BadRow("non_string", f"{where}: {key!r} must be a string or a message list, got {type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            got = sorted(m) if isinstance(m, dict) else type(m).__name__
            raise BadRow("non_string", f"{where}: {key}[{j}] must be a message with role and content, got {got}")
        if not isinstance(m["role"], str) or not isinstance(m["content"], str):
            bad = "role" if not isinstance(m["role"], str) else "content"
            raise BadRow(
                "non_string", f"{where}: {key}[{j}].{bad} must be a string, got {type(m[bad]).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out, True


def _blank(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not any(m["content"].strip() for m in value)


def validate(record: dict, kind: str, where: str = "row") -> dict:
    """Check one record of `kind` (see :data:`KINDS`, and :data:`OPTIONAL` for fields kept when
    present) and return it normalised (messages reduced to role and content, label a bool, scores,
    score and margin floats)."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(KINDS)}")
    missing = [k for k in KINDS[kind] if k not in record]
    if missing:
        raise BadRow("missing_keys", f"{where}: missing {missing} for kind {kind} (needs {list(KINDS[kind])})")
    out: dict[str, Any] = {}
    formats: dict[str, bool] = {}
    for key in KINDS[kind]:
        if key in _TEXT_KEYS:
            out[key], formats[key] = _text(record[key], key, where)
    if kind == "LIST":
        completions, scores = record["completions"], record["scores"]
        if not isinstance(completions, list) or not isinstance(scores, list):
            raise BadRow("wrong_type", f"{where}: 'completions' and 'scores' must be lists")
        if len(completions) < 2 or len(completions) != len(scores):
            raise BadRow(
                "wrong_type",
                f"{where}: need at least 2 completions and one score each, got {len(completions)} completions "
                f"and {len(scores)} scores",
            )
        out["completions"] = []
        for j, c in enumerate(completions):
            value, formats[f"completions[{j}]"] = _text(c, f"completions[{j}]", where)
            out["completions"].append(value)
        for j, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise BadRow("wrong_type", f"{where}: scores[{j}] must be a finite number, got {s!r}")
        out["scores"] = [float(s) for s in scores]
    if kind == "UNP":
        out["label"] = _label(record["label"], where)
    if kind == "SCORE":
        out["score"] = number(record["score"], "score", where)
    for key in OPTIONAL.get(kind, ()):
        if key in record:
            out[key] = number(record[key], key, where)
    if len(set(formats.values())) > 1:
        conv = [k for k, v in formats.items() if v]
        std = [k for k, v in formats.items() if not v]
        raise BadRow("wrong_type", f"{where}: mixes message lists ({conv}) with plain strings ({std})")
    scored = [k for k in ("completion", "chosen", "rejected") if k in out]
    scored += [f"completions[{j}]" for j in range(len(out.get("completions", [])))]
    for key in scored:
        value = out["completions"][int(key[12:-1])] if key.startswith("completions[") else out[key]
        if _blank(value):
            raise BadRow("empty_completion", f"{where}: {key!r} is empty")
    if "chosen" in out and out["chosen"] == out["rejected"]:
        raise BadRow("identical_pair", f"{where}: chosen and rejected are identical")
    return out


def to_kind(row: Any, kind: str, where: str = "row", *, format: str = "auto") -> list[dict]:
    """Records of `kind` from one row of any TRL type (module table); a list, as unpairing a
    preference gives two records, a listwise row gives K SCORE records and an unpaired row with a
    false label gives none for SEQ.

    `format`: "auto" reads Anthropic HH transcripts with :func:`hh_to_preference` (other rows as
    TRL does), "hh" requires them, "trl" treats HH rows like any implicit-prompt preference.
    Raises :class:`BadRow` naming `where`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(KINDS)}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    if not isinstance(row, dict):
        raise BadRow("not_object", f"{where}: expected an object, got {type(row).__name__}")
    if format == "hh" or (format == "auto" and is_hh(row)):
        pref = hh_to_preference(row, where)
        if "margin" in row:  # HH data has no margin column, but a row that adds one keeps it
            pref["margin"] = row["margin"]
        row, typ = pref, "preference"
    else:
        row = to_chatml(row)
        try:
            typ = detect_type(row)
        except BadRow as e:
            raise BadRow(e.reason, f"{where}: {e.message}") from None
    return [validate(r, kind, where) for r in _convert(row, typ, kind, where)]


# ---------------------------------------------------------------------------------------------
# Bad-row report.


@dataclass
class BadRowReport:
    """Bad rows of one source, by reason. `numbering` says what row numbers are: "line"
    (1-based JSONL line numbers) or "index" (0-based row indices)."""

    source: str
    numbering: str = "line"
    rows_seen: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_rows: dict[str, list[int]] = field(default_factory=dict)
    first_detail: dict[str, str] = field(default_factory=dict)
    no_records: int = 0  # good rows that give no record of the kind (unpaired false labels for SEQ)
    record_rows: list[int] = field(default_factory=list)  # source row number of each loaded record
    duplicates: int = 0  # records equal to an earlier one (kept, or dropped with data.drop_duplicates)
    first_duplicates: list[tuple[int, int]] = field(default_factory=list)  # (row, the earlier row it repeats)

    def add(self, reason: str, row_number: int, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-row reason {reason!r}; expected one of {REASONS}")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        rows = self.first_rows.setdefault(reason, [])
        if len(rows) < _EXAMPLES_PER_REASON:
            rows.append(int(row_number))
        self.first_detail.setdefault(reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def _what(self) -> str:
        return "line" if self.numbering == "line" else "row"

    def summary(self) -> str:
        noun = "1-based line numbers" if self.numbering == "line" else "0-based row indices"
        if not self.total:
            head = f"{self.source}: no bad rows in {self.rows_seen} rows"
        else:
            head = f"{self.source}: {self.total} bad row(s) of {self.rows_seen} ({noun})"
        lines = [head]
        for reason in REASONS:
            if reason not in self.counts:
                continue
            rows = ", ".join(map(str, self.first_rows[reason]))
            more = ", ..." if self.counts[reason] > len(self.first_rows[reason]) else ""
            lines.append(
                f"  {reason}: {self.counts[reason]} ({self._what()}s {rows}{more}); "
                f"first: {self.first_detail[reason]}")
        if self.no_records:
            lines.append(f"  {self.no_records} good row(s) give no record of this kind (unpaired rows labelled false)")
        if self.duplicates:
            pairs = ", ".join(f"{a} = {b}" for a, b in self.first_duplicates)
            lines.append(f"  {self.duplicates} duplicate record(s) ({self._what()}s {pairs}"
                         f"{', ...' if self.duplicates > len(self.first_duplicates) else ''})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "numbering": self.numbering,
            "rows_seen": self.rows_seen,
            "bad_rows": self.total,
            "counts": dict(self.counts),
            "first_rows": {k: list(v) for k, v in self.first_rows.items()},
            "first_detail": dict(self.first_detail),
            "no_records": self.no_records,
            "duplicates": self.duplicates,
            "first_duplicates": [list(p) for p in self.first_duplicates],
        }

    def check(self, policy: str) -> BadRowReport:
        """Apply a bad-row policy: "fail" raises ValueError with the summary if there is any bad
        row; "skip" logs the summary as a WARNING (the bad rows are left out). Returns the report."""
        if policy not in POLICIES:
            raise ValueError(f"bad_rows policy must be one of {POLICIES}, got {policy!r}")
        if self.total and policy == "fail":
            raise ValueError(f"{self.summary()}\n(bad_rows='skip' leaves them out instead)")
        if self.total:
            logger.warning("skipping bad rows: %s", self.summary())
        elif self.duplicates:
            logger.warning("duplicate records: %s", self.summary())
        return self
