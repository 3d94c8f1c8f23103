"""Records of every data shape: through a JSONL file and `sources.load_records`, their encoding layout, and
bad rows found while encoding (named by source line, counted or fatal)."""

import gzip
import json

import numpy as np
import pytest

from pjax.data import records, sources
from pjax.data.formats import BadRowReport
from pjax.data.tasks import synthetic


def _write(path, rows, gz=False):
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["PAIR", "STEP", "UNP", "LIST", "SCORE"])
def test_synthetic_records_round_trip_through_jsonl(tmp_path, task, kind):
    cfg = synthetic.SyntheticConfig(num_pairs=12, cache_dir=str(tmp_path))
    rows = synthetic.preference_records(cfg, kind, list_size=3)
    path = _write(tmp_path / f"{kind}.jsonl.gz", rows, gz=True)
    assert sources.load_records(path, kind)[0] == rows
    arrays = records.encode(task.tokenizer, rows, kind, 48)
    lead = {"PAIR": (12, 2), "STEP": (12, 2), "UNP": (12,), "LIST": (12, 3), "SCORE": (12,)}[kind]
    assert arrays["tokens"].shape == lead + (48,)
    assert (arrays["completion_mask"] <= arrays["mask"]).all()
    if kind == "LIST":
        np.testing.assert_allclose(arrays["scores"], [[synthetic.gold_reward(c) for c in r["completions"]] for r in rows],
                                   rtol=1e-6)
        # each of the K rows scores its own completion
        for j in range(3):
            ids = arrays["tokens"][0, j][arrays["completion_mask"][0, j] > 0]
            assert task.tokenizer.decode(ids.tolist()) == rows[0]["completions"][j].strip()
    if kind == "UNP":
        assert arrays["labels"].tolist() == [int(r["label"]) for r in rows]
        # KTO's mismatched rows: prompt i with completion i-1
        ids = arrays["kl_tokens"][1][arrays["kl_completion_mask"][1] > 0]
        assert task.tokenizer.decode(ids.tolist()) == rows[0]["completion"].strip()
    if kind == "STEP":
        # only the step is scored; the shared prefix is context
        ids = arrays["tokens"][0, 0][arrays["completion_mask"][0, 0] > 0]
        assert task.tokenizer.decode(ids.tolist()) == rows[0]["chosen"].strip()
        context = arrays["tokens"][0, 0][(arrays["mask"][0, 0] - arrays["completion_mask"][0, 0]) > 0]
        assert task.tokenizer.decode(context.tolist()).endswith(rows[0]["prefix"].strip())


def test_synthetic_labels_follow_the_gold_reward(tmp_path):
    cfg = synthetic.SyntheticConfig(num_pairs=400, cache_dir=str(tmp_path))
    unp = synthetic.preference_records(cfg, "UNP")
    assert all(r["label"] == (synthetic.gold_reward(r["completion"]) > 0) for r in unp)
    steps = synthetic.preference_records(cfg, "STEP")
    gaps = np.array([synthetic.gold_reward(r["prefix"] + r["chosen"])
                     - synthetic.gold_reward(r["prefix"] + r["rejected"]) for r in steps])
    assert np.mean(gaps[gaps != 0] > 0) > 0.6  # Bradley-Terry labels favour the better step


def test_rows_bad_at_encoding_are_named_or_counted(tmp_path, task):
    """A prompt over data.max_prompt_tokens and a completion of no tokens: fatal with the source line
    named, or counted in the report with the other rows kept."""
    rows = [{"prompt": "review : the movie was", "chosen": "good", "rejected": "bad"},
            {"prompt": " ".join(["review : the old movie about the ship was"] * 4), "chosen": "good", "rejected": "bad"},
            {"prompt": "review : the movie was", "chosen": "fine", "rejected": "dull"}]
    path = _write(tmp_path / "pairs.jsonl", rows)
    loaded, report = sources.load_records(path, "PAIR")
    with pytest.raises(ValueError, match=r"row 2: prompt of \d+ tokens exceeds data.max_prompt_tokens=12"):
        records.encode(task.tokenizer, loaded, "PAIR", 48, row_numbers=report.record_rows, max_prompt_tokens=12)
    out = records.encode(task.tokenizer, loaded, "PAIR", 48, row_numbers=report.record_rows, max_prompt_tokens=12,
                         report=report)
    assert out["tokens"].shape == (2, 2, 48)
    assert report.counts == {"prompt_too_long": 1} and report.first_rows == {"prompt_too_long": [2]}
    assert "prompt_too_long: 1 (lines 2)" in report.summary()
    report = BadRowReport("x.jsonl")
    records.encode(task.tokenizer, [rows[0], {**rows[2], "chosen": "   "}], "PAIR", 48, report=report)
    assert report.first_rows == {"empty_completion": [1]}


def test_list_rows_share_one_prompt_cut(task):
    """A long completion in a list shortens the prompt for every row of that list alike."""
    row = {"prompt": "review : the movie about the old ship was", "scores": [1.0, 0.0, 2.0],
           "completions": ["good", "really bad in the end with a poor premise and dull cast overall", "fine"]}
    arrays = records.encode(task.tokenizer, [row], "LIST", 20)
    prompts = [arrays["tokens"][0, j][(arrays["mask"][0, j] - arrays["completion_mask"][0, j]) > 0].tolist()
               for j in range(3)]
    assert prompts[0] == prompts[1] == prompts[2]
    for j, text in enumerate(row["completions"]):
        ids = arrays["tokens"][0, j][arrays["completion_mask"][0, j] > 0].tolist()
        assert task.tokenizer.decode(ids).startswith(text.split()[0])


# --- PAIR margins and SCORE records -----------------------------------------------------------------


def _reference_ids(tok, prompt, completion):
    """[BOS] + sp(prompt + completion) + [EOS] and the prompt's length, with SentencePiece directly."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tok.model_path)
    head = [sp.bos_id()] + sp.encode(prompt)
    full = [sp.bos_id()] + sp.encode(prompt + completion) + [sp.eos_id()]
    assert full[:len(head)] == head  # these texts do not merge across the boundary
    return full, len(head)


_PAIRS = [{"prompt": "review : the movie was", "chosen": " good", "rejected": " bad"},
          {"chosen": "review : the film was fine", "rejected": "review : the film was dull"},
          {"prompt": "review : this show is", "chosen": " superb", "rejected": " awful"}]


def test_pair_margins_are_encoded(tmp_path, task):
    margins = [1.5, -0.25, 3]
    rows = [{**r, "margin": m} for r, m in zip(_PAIRS, margins)]
    path = _write(tmp_path / "margins.jsonl", rows)
    loaded, report = sources.load_records(path, "PAIR")
    assert [r["margin"] for r in loaded] == [1.5, -0.25, 3.0] and not report
    out = records.encode(task.tokenizer, loaded, "PAIR", 32, row_numbers=report.record_rows)
    assert out["margins"].dtype == np.float32 and out["margins"].shape == (3,)
    np.testing.assert_array_equal(out["margins"], np.float32(margins))
    plain = records.encode(task.tokenizer, sources.load_records(_write(tmp_path / "plain.jsonl", _PAIRS), "PAIR")[0],
                           "PAIR", 32)
    assert "margins" not in plain and set(plain) == {"tokens", "mask", "completion_mask"}
    for key in plain:  # the margins change nothing else
        np.testing.assert_array_equal(out[key], plain[key])


def test_mixed_margins_are_missing_keys_by_source_line(tmp_path, task):
    rows = [{**_PAIRS[0], "margin": 1.0}, _PAIRS[1], {**_PAIRS[2], "margin": 2.0}]
    path = _write(tmp_path / "mixed.jsonl", rows)
    loaded, report = sources.load_records(path, "PAIR")  # each row is fine on its own
    with pytest.raises(ValueError, match=r"row 2: no 'margin'") as e:
        records.encode(task.tokenizer, loaded, "PAIR", 32, row_numbers=report.record_rows)
    assert e.value.reason == "missing_keys"
    out = records.encode(task.tokenizer, loaded, "PAIR", 32, row_numbers=report.record_rows, report=report)
    assert out["tokens"].shape == (2, 2, 32)
    np.testing.assert_array_equal(out["margins"], np.float32([1.0, 2.0]))
    assert report.counts == {"missing_keys": 1} and report.first_rows == {"missing_keys": [2]}
    assert "missing_keys: 1 (lines 2)" in report.summary() and "margin" in report.summary()
    with pytest.raises(ValueError, match="missing_keys: 1"):
        report.check("fail")


def test_non_numeric_margin_is_a_bad_row(tmp_path, task):
    rows = [{**_PAIRS[0], "margin": 1.0}, {**_PAIRS[1], "margin": "big"}, {**_PAIRS[2], "margin": 2.0}]
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match="wrong_type: 1"):
        sources.load_records(path, "PAIR")
    loaded, report = sources.load_records(path, "PAIR", bad_rows="skip")
    assert report.counts == {"wrong_type": 1} and report.first_rows == {"wrong_type": [2]}
    assert [r["margin"] for r in loaded] == [1.0, 2.0]
    with pytest.raises(ValueError, match="row 1: 'margin' must be a finite number") as e:  # not via to_kind
        records.encode(task.tokenizer, [rows[0], {**_PAIRS[2], "margin": "big"}], "PAIR", 32)
    assert e.value.reason == "wrong_type"


_SCORED = [{"prompt": "review : the movie was", "completion": " really good", "score": 2},
           {"prompt": "review : the old ship was", "completion": " dull and slow", "score": -1.5},
           {"prompt": "review : this show is", "completion": " fine", "score": 0.25}]


def test_score_records_encode_like_seq_with_scores(tmp_path, task):
    path = _write(tmp_path / "scored.jsonl", _SCORED)
    loaded, report = sources.load_records(path, "SCORE")
    assert [r["score"] for r in loaded] == [2.0, -1.5, 0.25]
    T = 24
    out = records.encode(task.tokenizer, loaded, "SCORE", T, row_numbers=report.record_rows)
    assert set(out) == {"tokens", "mask", "completion_mask", "scores"}
    for key in ("tokens", "mask", "completion_mask"):
        assert out[key].shape == (3, T) and out[key].dtype == np.int32
    assert out["scores"].dtype == np.float32 and out["scores"].shape == (3,)
    np.testing.assert_array_equal(out["scores"], np.float32([2.0, -1.5, 0.25]))
    for i, r in enumerate(_SCORED):
        full, p = _reference_ids(task.tokenizer, r["prompt"], r["completion"])
        want_mask = np.zeros(T, np.int32)
        want_mask[:len(full)] = 1
        want_completion = np.zeros(T, np.int32)
        want_completion[p:len(full)] = 1
        assert out["tokens"][i, :len(full)].tolist() == full
        assert (out["tokens"][i, len(full):] == task.tokenizer.pad_id).all()
        np.testing.assert_array_equal(out["mask"][i], want_mask)
        np.testing.assert_array_equal(out["completion_mask"][i], want_completion)


def test_score_rows_bad_at_encoding(task):
    rows = [_SCORED[0], {**_SCORED[1], "score": "high"}, {**_SCORED[2], "completion": "  "}]
    with pytest.raises(ValueError, match="row 1: 'score' must be a finite number"):
        records.encode(task.tokenizer, rows, "SCORE", 24)
    report = BadRowReport("x.jsonl")
    out = records.encode(task.tokenizer, rows, "SCORE", 24, report=report)
    assert out["tokens"].shape == (1, 24) and out["scores"].tolist() == [2.0]
    assert report.counts == {"wrong_type": 1, "empty_completion": 1}
    assert report.first_rows == {"wrong_type": [1], "empty_completion": [2]}


def test_fields_cover_score():
    assert records.FIELDS["SCORE"] == ("prompt", "completion", "score")
    assert "PROMPT" not in records.FIELDS and records.FIELDS["PAIR"] == ("prompt", "chosen", "rejected")
