"""TRL dataset types -> pjax kinds (pjax.data.formats), against TRL's documented examples
(docs/source/dataset_formats.md) and independent references."""

import itertools
import logging
import os

import pytest

from pjax.data import formats
from pjax.data.formats import BadRow, BadRowReport, detect_type, to_kind


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def bad_reason(row, kind, **kw):
    with pytest.raises(BadRow) as e:
        to_kind(row, kind, "f.jsonl:7", **kw)
    assert e.value.message.startswith("f.jsonl:7"), e.value.message
    return e.value.reason


# --- detection -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, typ",
    [
        ({"text": "The sky is blue."}, "language_modeling"),
        ({"messages": [U("Sky?"), A("Blue.")]}, "language_modeling"),
        ({"conversations": [{"from": "human", "value": "Sky?"}]}, "language_modeling"),
        ({"prompt": "The sky is"}, "prompt_only"),
        ({"prompt": "The sky is", "completion": " blue."}, "prompt_completion"),
        ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, "preference"),
        ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "preference"),
        ({"prompt": "The sky is", "completion": " blue.", "label": True}, "unpaired"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [1.0, 0.0]}, "listwise"),
        ({"prompt": "p", "prefix": "s1", "chosen": "s2", "rejected": "x"}, "stepwise"),
        ({"prompt": "p", "initial_reason_steps": "s1", "chosen": "s2", "rejected": "x"}, "stepwise"),
        ({"prompt": "p", "completions": ["s1", "s2"], "labels": [True, False]}, "stepwise_supervision"),
    ],
)
def test_detect_type(row, typ):
    assert detect_type(row) == typ


def test_detect_type_bad_rows():
    with pytest.raises(BadRow) as e:
        detect_type(["not", "a", "dict"])
    assert e.value.reason == "not_object"
    with pytest.raises(BadRow) as e:
        detect_type({"question": "q"})
    assert e.value.reason == "missing_keys" and "question" in e.value.message


# --- conversions ---------------------------------------------------------------------------------


def test_prompt_completion_to_seq_standard_and_conversational():
    assert to_kind({"prompt": "The sky is", "completion": " blue."}, "SEQ") == [
        {"prompt": "The sky is", "completion": " blue."}]
    row = {"prompt": [U("What color is the sky?")], "completion": [A("It is blue.")], "extra": 1}
    assert to_kind(row, "SEQ") == [{"prompt": [U("What color is the sky?")], "completion": [A("It is blue.")]}]


def test_language_modeling_to_seq_trains_on_everything():
    assert to_kind({"text": "The sky is blue."}, "SEQ") == [{"prompt": "", "completion": "The sky is blue."}]
    msgs = [U("What color is the sky?"), A("It is blue.")]
    assert to_kind({"messages": msgs}, "SEQ") == [{"prompt": [], "completion": msgs}]


def test_sharegpt_to_chatml():
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Sky?"},
                             {"from": "gpt", "value": "Blue."}]}
    want = [{"role": "system", "content": "Be brief."}, U("Sky?"), A("Blue.")]
    assert to_kind(row, "SEQ") == [{"prompt": [], "completion": want}]
    pref = {"prompt": [{"from": "human", "value": "Sky?"}], "chosen": [{"from": "gpt", "value": "Blue."}],
            "rejected": [{"from": "gpt", "value": "Green."}]}
    assert to_kind(pref, "PAIR") == [{"prompt": [U("Sky?")], "chosen": [A("Blue.")], "rejected": [A("Green.")]}]
    assert "from" in pref["prompt"][0], "the input row is not modified"


def test_explicit_preference_to_pair():
    row = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    assert to_kind(row, "PAIR") == [row]
    conv = {"prompt": [U("What color is the sky?")], "chosen": [A("It is blue.")], "rejected": [A("It is green.")]}
    assert to_kind(conv, "PAIR") == [conv]


def test_implicit_preference_to_pair_matches_trl_docs():
    # TRL docs, "Preference with implicit prompt" and `extract_prompt`'s docstring.
    row = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    assert to_kind(row, "PAIR") == [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]
    conv = {"chosen": [U("What color is the sky?"), A("It is blue.")],
            "rejected": [U("What color is the sky?"), A("It is green.")]}
    assert to_kind(conv, "PAIR") == [
        {"prompt": [U("What color is the sky?")], "chosen": [A("It is blue.")], "rejected": [A("It is green.")]}]


def _reference_extract(chosen, rejected):
    """TRL's rule restated: the common prefix is the prompt, except that a trailing space moves to
    the completions and a whole shorter side keeps its last element."""
    if isinstance(chosen, str):
        p = os.path.commonprefix([chosen, rejected])
    else:
        p = list(itertools.takewhile(lambda ab: ab[0] == ab[1], zip(chosen, rejected)))
        p = chosen[: len(p)]
    if len(p) == min(len(chosen), len(rejected)) or isinstance(p, str) and p.endswith(" "):
        p = p[:-1]
    return p, chosen[len(p):], rejected[len(p):]


@pytest.mark.parametrize(
    "chosen, rejected",
    [
        ("The sky is blue.", "The sky is green."),
        ("Answer: yes", "Answer: no"),
        ("abc", "abcdef"),
        ("x", "y"),
        ("Q? A", "Q? B"),
        ([U("a"), A("b")], [U("a"), A("c")]),
        ([U("a"), A("b"), U("c"), A("d")], [U("a"), A("b"), U("c"), A("e")]),
        ([U("a"), A("b")], [U("a"), A("b"), U("c"), A("d")]),
        ([U("a")], [U("z")]),
    ],
)
def test_extract_prompt_matches_reference(chosen, rejected):
    assert formats.extract_prompt(chosen, rejected) == _reference_extract(chosen, rejected)


def test_prompt_of_other_format_is_re_extracted_like_trl():
    # maybe_extract_prompt: a string prompt next to conversational chosen/rejected is ignored.
    row = {"prompt": "What color is the sky?", "chosen": [U("What color is the sky?"), A("It is blue.")],
           "rejected": [U("What color is the sky?"), A("It is green.")]}
    assert to_kind(row, "PAIR")[0]["prompt"] == [U("What color is the sky?")]


def test_preference_to_unp_unpairs_into_two_rows():
    row = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    assert to_kind(row, "UNP") == [
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {"prompt": "The sky is", "completion": " green.", "label": False},
    ]
    conv = {"chosen": [U("Sky?"), A("Blue.")], "rejected": [U("Sky?"), A("Green.")]}
    out = to_kind(conv, "UNP")
    assert [r["label"] for r in out] == [True, False]
    assert [r["completion"] for r in out] == [[A("Blue.")], [A("Green.")]]
    assert all(r["prompt"] == [U("Sky?")] for r in out)


def test_unpaired_to_unp_and_seq():
    row = {"prompt": "The sky is", "completion": " blue.", "label": True}
    assert to_kind(row, "UNP") == [row]
    assert to_kind({**row, "label": 0}, "UNP")[0]["label"] is False  # 0/1 accepted as before
    assert to_kind(row, "SEQ") == [{"prompt": "The sky is", "completion": " blue."}]
    assert to_kind({**row, "label": False}, "SEQ") == []  # TRL: keep only the good completions


def test_preference_to_seq_takes_chosen():
    assert to_kind({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "SEQ") == [
        {"prompt": "The sky is", "completion": " blue."}]


def test_listwise_to_list():
    row = {"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 0.5, -2]}
    out = to_kind(row, "LIST")
    assert out == [{"prompt": "p", "completions": ["a", "b", "c"], "scores": [1.0, 0.5, -2.0]}]
    assert all(isinstance(s, float) for s in out[0]["scores"])
    conv = {"prompt": [U("q")], "completions": [[A("a")], [{"from": "gpt", "value": "b"}]], "scores": [0.0, 1.0]}
    assert to_kind(conv, "LIST")[0]["completions"] == [[A("a")], [A("b")]]


@pytest.mark.parametrize("prefix_key", ["prefix", "initial_reason_steps"])
def test_stepwise_to_step(prefix_key):
    row = {"prompt": "2+3*4?", prefix_key: "Step 1: 3*4=12.", "chosen": "Step 2: 2+12=14.",
           "rejected": "Step 2: 2+12=15.", "answer": "14"}
    assert to_kind(row, "STEP") == [
        {"prompt": "2+3*4?", "prefix": "Step 1: 3*4=12.", "chosen": "Step 2: 2+12=14.", "rejected": "Step 2: 2+12=15."}]
    assert to_kind({**row, prefix_key: ""}, "STEP")[0]["prefix"] == ""  # the first step may be the one chosen
    assert bad_reason(row, "PAIR") == "unsupported"


@pytest.mark.parametrize(
    "row, prompt",
    [
        ({"prompt": "p"}, "p"),
        ({"prompt": "p", "completion": "c"}, "p"),
        ({"prompt": "p", "completion": "c", "label": False}, "p"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "p"),
        ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "The sky is"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [1, 0]}, "p"),
        ({"prompt": "p", "prefix": "s", "chosen": "a", "rejected": "b"}, "p"),
        ({"prompt": [U("q")]}, [U("q")]),
    ],
)
def test_prompt_only_from_every_type_with_a_prompt(row, prompt):
    assert to_kind(row, "PROMPT") == [{"prompt": prompt}]


def test_messages_keep_role_and_content_only():
    row = {"prompt": [{"role": "user", "content": "q", "name": "x"}], "completion": [A("a")]}
    assert to_kind(row, "SEQ")[0]["prompt"] == [U("q")]


def test_hh_format_option():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    assert to_kind(row, "PAIR") == [{"prompt": [U("Hi")], "chosen": [A("Hello!")], "rejected": [A("Go away.")]}]
    assert to_kind(row, "PAIR", format="hh") == to_kind(row, "PAIR")
    trl = to_kind(row, "PAIR", format="trl")[0]  # TRL's extract_prompt on the raw strings
    assert trl == {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}
    assert bad_reason({"chosen": "a", "rejected": "b"}, "PAIR", format="hh") == "wrong_type"
    with pytest.raises(ValueError, match="unknown format"):
        to_kind(row, "PAIR", format="sharegpt")


def test_hh_multi_turn_and_repeated_speaker():
    row = {
        "chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D1\n\nAssistant: D2",
        "rejected": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: E",
    }
    assert formats.hh_to_preference(row) == {
        "prompt": [U("A"), A("B"), U("C")], "chosen": [A("D1\n\nD2")], "rejected": [A("E")]}
    # Diverging at an earlier assistant turn: the prompt still ends with the last shared user turn.
    row = {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",
           "rejected": "\n\nHuman: A\n\nAssistant: X"}
    assert formats.hh_to_preference(row) == {
        "prompt": [U("A")], "chosen": [A("B"), U("C"), A("D")], "rejected": [A("X")]}


# --- bad rows ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, kind, reason",
    [
        ("a string", "PAIR", "not_object"),
        ({"prompt": "p", "completion": "c"}, "PAIR", "missing_keys"),
        ({"prompt": "p", "chosen": "a"}, "PAIR", "missing_keys"),
        ({"text": "t"}, "PROMPT", "missing_keys"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "STEP", "missing_keys"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "LIST", "missing_keys"),
        ({"completions": ["a", "b"], "scores": [1, 0]}, "LIST", "missing_keys"),
        ({"prefix": "s", "chosen": "a", "rejected": "b"}, "STEP", "missing_keys"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "PAIR", "non_string"),
        ({"prompt": "p", "chosen": None, "rejected": "b"}, "PAIR", "non_string"),
        ({"prompt": [U("q")], "chosen": [{"role": "assistant", "content": None}], "rejected": [A("b")]},
         "PAIR", "non_string"),
        ({"prompt": [U("q")], "chosen": [A("a")], "rejected": [{"role": "assistant"}]}, "PAIR", "non_string"),
        ({"prompt": [U("q")], "chosen": [A("a")], "rejected": ["b"]}, "PAIR", "non_string"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "PAIR", "empty_completion"),
        ({"prompt": "p", "chosen": "a", "rejected": "  "}, "PAIR", "empty_completion"),
        ({"prompt": [U("q")], "chosen": [A("")], "rejected": [A("b")]}, "PAIR", "empty_completion"),
        ({"prompt": "p", "completion": ""}, "SEQ", "empty_completion"),
        ({"prompt": "p", "completions": ["a", ""], "scores": [1, 0]}, "LIST", "empty_completion"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "PAIR", "identical_pair"),
        ({"chosen": "same", "rejected": "same"}, "UNP", "identical_pair"),
        ({"prompt": "p", "prefix": "s", "chosen": "x", "rejected": "x"}, "STEP", "identical_pair"),
        ({"prompt": "p", "completion": "c", "label": "yes"}, "UNP", "wrong_type"),
        ({"prompt": "p", "completion": "c", "label": 2}, "UNP", "wrong_type"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [1, "x"]}, "LIST", "wrong_type"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [1, float("nan")]}, "LIST", "wrong_type"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [1.0]}, "LIST", "wrong_type"),
        ({"prompt": "p", "completions": ["a"], "scores": [1.0]}, "LIST", "wrong_type"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [True, False]}, "LIST", "wrong_type"),
        ({"chosen": "same", "rejected": "same"}, "PROMPT", "identical_pair"),
        ({"prompt": "p", "completion": [A("c")]}, "SEQ", "wrong_type"),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True, False]}, "PROMPT", "unsupported"),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True, False]}, "SEQ", "unsupported"),
    ],
)
def test_bad_row_reasons(row, kind, reason):
    assert bad_reason(row, kind) == reason


def test_stepwise_supervision_message_says_why():
    with pytest.raises(BadRow, match="process reward models"):
        to_kind({"prompt": "p", "completions": ["a"], "labels": [True]}, "SEQ")


def test_unknown_kind_and_reason():
    with pytest.raises(ValueError, match="unknown record kind"):
        to_kind({"prompt": "p"}, "PAIRS")
    with pytest.raises(ValueError, match="unknown bad-row reason"):
        BadRow("oops", "m")


# --- report --------------------------------------------------------------------------------------


def _report():
    r = BadRowReport("data/train.jsonl", "line", rows_seen=20)
    for n in (3, 5, 8, 9, 11, 14, 19):
        r.add("missing_keys", n, f"data/train.jsonl:{n}: missing ['rejected']")
    r.add("not_json", 2, "data/train.jsonl:2: not valid JSON")
    r.add("prompt_too_long", 4, "data/train.jsonl:4: prompt of 900 tokens > 512")
    return r


def test_report_counts_rows_and_summary():
    r = _report()
    assert r.total == 9 and bool(r)
    assert r.counts == {"missing_keys": 7, "not_json": 1, "prompt_too_long": 1}
    assert r.first_rows["missing_keys"] == [3, 5, 8, 9, 11]  # the first 5
    s = r.summary()
    assert s.startswith("data/train.jsonl: 9 bad row(s) of 20 (1-based line numbers)")
    assert "missing_keys: 7 (lines 3, 5, 8, 9, 11, ...)" in s and "not_json: 1 (lines 2)" in s
    assert "prompt_too_long: 1 (lines 4)" in s
    d = r.to_dict()
    assert d["bad_rows"] == 9 and d["counts"]["missing_keys"] == 7 and d["first_rows"]["not_json"] == [2]
    assert d["source"] == "data/train.jsonl" and d["numbering"] == "line"
    assert "0-based row indices" in BadRowReport("x.parquet", "index", counts={"not_json": 1},
                                                 first_rows={"not_json": [0]}, first_detail={"not_json": "d"}).summary()


def test_report_policies(caplog):
    r = _report()
    with pytest.raises(ValueError) as e:
        r.check("fail")
    assert "data/train.jsonl: 9 bad row(s)" in str(e.value) and "missing_keys: 7" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="pjax.data.formats"):
        assert r.check("skip") is r
    # bad_rows='skip' reports in the log: the warning is the product
    assert any(rec.levelno == logging.WARNING and "missing_keys: 7" in rec.getMessage() for rec in caplog.records)
    clean = BadRowReport("ok.jsonl", rows_seen=3)
    assert clean.check("fail") is clean and "no bad rows in 3 rows" in clean.summary()
    with pytest.raises(ValueError, match="policy"):
        r.check("drop")
    with pytest.raises(ValueError, match="unknown bad-row reason"):
        r.add("bad", 1, "")


def test_prompt_kind_keeps_an_explicit_prompt_without_checking_the_pair():
    assert to_kind({"prompt": "p", "chosen": "same", "rejected": "same"}, "PROMPT") == [{"prompt": "p"}]
    step = {"prompt": [U("q")], "prefix": [{"from": "gpt", "value": "s1"}], "chosen": [A("s2")], "rejected": [A("s3")]}
    assert to_kind(step, "STEP")[0]["prefix"] == [A("s1")]


# --- per-pair margins (TRL RewardTrainer's optional `margin` column) -------------------------------


@pytest.mark.parametrize(
    "row, want",
    [
        ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2},
         {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2.0}),
        ({"chosen": "The sky is blue.", "rejected": "The sky is green.", "margin": 0.5},
         {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 0.5}),
        ({"prompt": [U("Sky?")], "chosen": [A("Blue.")], "rejected": [A("Green.")], "margin": -1.25},
         {"prompt": [U("Sky?")], "chosen": [A("Blue.")], "rejected": [A("Green.")], "margin": -1.25}),
        ({"chosen": [U("Sky?"), A("Blue.")], "rejected": [U("Sky?"), A("Green.")], "margin": 3.0},
         {"prompt": [U("Sky?")], "chosen": [A("Blue.")], "rejected": [A("Green.")], "margin": 3.0}),
    ],
)
def test_pair_keeps_a_margin(row, want):
    out = to_kind(row, "PAIR")
    assert out == [want]
    assert type(out[0]["margin"]) is float
    # kinds that do not use a margin drop it; the rest of the record is as without it
    plain = {k: v for k, v in row.items() if k != "margin"}
    for kind in ("SEQ", "UNP", "PROMPT"):
        assert to_kind(row, kind) == to_kind(plain, kind)


def test_pair_without_margin_has_none():
    assert "margin" not in to_kind({"prompt": "p", "chosen": "a", "rejected": "b"}, "PAIR")[0]
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    assert to_kind(hh, "PAIR") == [{"prompt": [U("Hi")], "chosen": [A("Hello!")], "rejected": [A("Go away.")]}]
    assert to_kind({**hh, "margin": 1}, "PAIR")[0]["margin"] == 1.0  # an HH row that adds one keeps it


@pytest.mark.parametrize("margin", ["1.0", None, True, [1.0], float("nan"), float("inf"), {"m": 1}])
def test_non_numeric_margin_is_wrong_type(margin):
    assert bad_reason({"prompt": "p", "chosen": "a", "rejected": "b", "margin": margin}, "PAIR") == "wrong_type"
    assert bad_reason({"chosen": [U("q"), A("a")], "rejected": [U("q"), A("b")], "margin": margin},
                      "PAIR") == "wrong_type"


def test_numpy_margin_is_a_number():
    np = pytest.importorskip("numpy", reason="numpy scalars from parquet/datasets rows")
    out = to_kind({"prompt": "p", "chosen": "a", "rejected": "b", "margin": np.float32(0.5)}, "PAIR")
    assert out[0]["margin"] == 0.5 and type(out[0]["margin"]) is float
    assert bad_reason({"prompt": "p", "chosen": "a", "rejected": "b", "margin": np.bool_(True)}, "PAIR") == "wrong_type"


# --- scored rows -> SCORE --------------------------------------------------------------------------


def test_detect_scored():
    assert detect_type({"prompt": "p", "completion": " c", "score": 3.5}) == "scored"
    assert detect_type({"prompt": "p", "completion": " c", "score": 1, "label": True}) == "unpaired"
    assert "scored" in formats.TYPES and formats.KINDS["SCORE"] == ("prompt", "completion", "score")


def test_scored_to_score_standard_and_conversational():
    out = to_kind({"prompt": "The sky is", "completion": " blue.", "score": 4, "id": 7}, "SCORE")
    assert out == [{"prompt": "The sky is", "completion": " blue.", "score": 4.0}]
    assert type(out[0]["score"]) is float
    conv = {"prompt": [{"from": "human", "value": "Sky?"}], "completion": [A("Blue.")], "score": -0.5}
    assert to_kind(conv, "SCORE") == [{"prompt": [U("Sky?")], "completion": [A("Blue.")], "score": -0.5}]
    # an unpaired row that also has a score reads as SCORE too
    assert to_kind({"prompt": "p", "completion": "c", "label": False, "score": 1}, "SCORE") == [
        {"prompt": "p", "completion": "c", "score": 1.0}]


def test_listwise_to_score_one_record_per_completion():
    row = {"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 0.5, -2]}
    assert to_kind(row, "SCORE") == [{"prompt": "p", "completion": "a", "score": 1.0},
                                     {"prompt": "p", "completion": "b", "score": 0.5},
                                     {"prompt": "p", "completion": "c", "score": -2.0}]
    assert bad_reason({"prompt": "p", "completions": ["a", "b"], "scores": [1.0]}, "SCORE") == "wrong_type"


def test_scored_rows_to_other_kinds():
    row = {"prompt": "The sky is", "completion": " blue.", "score": 2.0}
    assert to_kind(row, "SEQ") == [{"prompt": "The sky is", "completion": " blue."}]  # as a prompt_completion row
    assert to_kind(row, "PROMPT") == [{"prompt": "The sky is"}]
    assert bad_reason(row, "PAIR") == "missing_keys"
    assert bad_reason(row, "LIST") == "missing_keys"


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"prompt": "p", "completion": "c"}, "missing_keys"),
        ({"completion": "c", "score": 1.0}, "missing_keys"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "missing_keys"),
        ({"prompt": "p", "completion": "c", "score": "high"}, "wrong_type"),
        ({"prompt": "p", "completion": "c", "score": None}, "wrong_type"),
        ({"prompt": "p", "completion": "c", "score": True}, "wrong_type"),
        ({"prompt": "p", "completion": "c", "score": float("nan")}, "wrong_type"),
        ({"prompt": "p", "completion": "c", "score": float("-inf")}, "wrong_type"),
        ({"prompt": "p", "completion": [A("c")], "score": 1.0}, "wrong_type"),
        ({"prompt": "p", "completion": " ", "score": 1.0}, "empty_completion"),
        ({"prompt": 3, "completion": "c", "score": 1.0}, "non_string"),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True, False]}, "unsupported"),
    ],
)
def test_score_bad_rows(row, reason):
    assert bad_reason(row, "SCORE") == reason
