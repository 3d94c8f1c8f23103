"""Anthropic HH transcripts -> conversational preference records, on the real harmless-base test file."""

import gzip
import json
import re
from pathlib import Path

import pytest

from pjax.data.formats import hh_to_preference, is_hh
from pjax.data.sources import load_records

HH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
pytestmark = pytest.mark.skipif(not HH.is_file(), reason=f"{HH} absent (shared data not checked out)")


@pytest.fixture(scope="module")
def raw():
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def loaded():
    return load_records(HH, "PAIR", bad_rows="skip")


def _speakers(text):
    return re.findall(r"\n\n(Human|Assistant):", text)


def test_every_row_parses_or_is_reported(raw, loaded):
    records, report = loaded
    assert len(raw) == 2312 and all(is_hh(r) for r in raw)
    # Independently: rows whose chosen or rejected transcript ends with an empty Assistant turn.
    empty = [i + 1 for i, r in enumerate(raw) if any(t.rstrip().endswith("Assistant:") for t in r.values())]
    assert empty == [87, 517, 926, 1104]
    assert report.counts == {"empty_completion": 4} and report.first_rows == {"empty_completion": empty}
    assert len(records) == 2308 and report.record_rows == [n for n in range(1, 2313) if n not in empty]


def test_roles_alternate_and_prompt_ends_with_user(loaded):
    for rec in loaded[0]:
        assert rec["prompt"][0]["role"] == "user" and rec["prompt"][-1]["role"] == "user"
        for side in ("chosen", "rejected"):
            roles = [m["role"] for m in rec["prompt"] + rec[side]]
            assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
            assert rec[side][0]["role"] == "assistant" and rec[side][-1]["role"] == "assistant"


def test_messages_rebuild_the_raw_transcripts(raw, loaded):
    records, report = loaded
    merged = []
    for rec, n in zip(records, report.record_rows):
        row = raw[n - 1]
        for side in ("chosen", "rejected"):
            rebuilt = "".join(
                f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                for m in rec["prompt"] + rec[side])
            if rebuilt != row[side]:
                merged.append((n, side))
    # Only transcripts with two turns in a row by one speaker differ (those turns are joined).
    repeated = [
        (i + 1, side) for i, row in enumerate(raw) for side in ("chosen", "rejected")
        if i + 1 not in (87, 517, 926, 1104)
        and any(a == b for a, b in zip(_speakers(row[side]), _speakers(row[side])[1:]))
    ]
    assert merged == repeated and len(repeated) == 13 and len({n for n, _ in repeated}) == 9


def test_spot_check_first_row(raw, loaded):
    rec = loaded[0][0]
    assert [m["role"] for m in rec["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert rec["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert rec["prompt"][1] == {"role": "assistant", "content": "Are you looking for practical joke ideas?"}
    assert rec["prompt"][2] == {"role": "user", "content": "yep"}
    assert rec["prompt"][3]["content"].startswith("Ok, I’ll give you a couple examples")
    assert "\n\n1. Draw a penis" in rec["prompt"][3]["content"]  # blank lines inside a turn stay in it
    assert rec["prompt"][4] == {"role": "user", "content": "okay some of these do not have anything to do with pens"}
    assert rec["chosen"] == [{"role": "assistant", "content": (
        "No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks "
        "with pens.")}]
    assert rec["rejected"] == [{"role": "assistant", "content": raw[0]["rejected"].rsplit("\n\nAssistant: ", 1)[1]}]
    assert rec == hh_to_preference(raw[0])
