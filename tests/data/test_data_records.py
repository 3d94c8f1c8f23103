"""Records of every data shape: through a JSONL file and `sources.load_records`, their encoding layout, and
bad rows found while encoding (named by source line, counted or fatal)."""

import gzip
import json

import numpy as np
import pytest

from pjax.data import records, sources, synthetic
from pjax.data.formats import BadRowReport


def _write(path, rows, gz=False):
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["PAIR", "STEP", "UNP", "LIST"])
def test_synthetic_records_round_trip_through_jsonl(tmp_path, task, kind):
    cfg = synthetic.SyntheticConfig(num_pairs=12, cache_dir=str(tmp_path))
    rows = synthetic.preference_records(cfg, kind, list_size=3)
    path = _write(tmp_path / f"{kind}.jsonl.gz", rows, gz=True)
    assert sources.load_records(path, kind)[0] == rows
    arrays = records.encode(task.tokenizer, rows, kind, 48)
    lead = {"PAIR": (12, 2), "STEP": (12, 2), "UNP": (12,), "LIST": (12, 3)}[kind]
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
