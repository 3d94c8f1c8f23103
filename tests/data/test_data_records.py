"""JSONL records of every data shape: validation errors name the file and line; encoding layout."""

import gzip
import json

import numpy as np
import pytest

from pjax.data import records, synthetic


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
    assert records.read_jsonl(path, kind) == rows
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
            assert task.tokenizer.decode(ids.tolist()) == rows[0]["completions"][j]
    if kind == "UNP":
        assert arrays["labels"].tolist() == [int(r["label"]) for r in rows]
        # KTO's mismatched rows: prompt i with completion i-1
        ids = arrays["kl_tokens"][1][arrays["kl_completion_mask"][1] > 0]
        assert task.tokenizer.decode(ids.tolist()) == rows[0]["completion"]
    if kind == "STEP":
        # only the step is scored; the shared prefix is context
        ids = arrays["tokens"][0, 0][arrays["completion_mask"][0, 0] > 0]
        assert task.tokenizer.decode(ids.tolist()) == rows[0]["chosen"]
        context = arrays["tokens"][0, 0][(arrays["mask"][0, 0] - arrays["completion_mask"][0, 0]) > 0]
        assert task.tokenizer.decode(context.tolist()).endswith(rows[0]["prefix"])


def test_synthetic_labels_follow_the_gold_reward(tmp_path):
    cfg = synthetic.SyntheticConfig(num_pairs=400, cache_dir=str(tmp_path))
    unp = synthetic.preference_records(cfg, "UNP")
    assert all(r["label"] == (synthetic.gold_reward(r["completion"]) > 0) for r in unp)
    steps = synthetic.preference_records(cfg, "STEP")
    gaps = np.array([synthetic.gold_reward(f"{r['prefix']} {r['chosen']}")
                     - synthetic.gold_reward(f"{r['prefix']} {r['rejected']}") for r in steps])
    assert np.mean(gaps[gaps != 0] > 0) > 0.6  # Bradley-Terry labels favour the better step


def test_bad_records_name_file_line_and_field(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path / "pairs.jsonl", [good, {"prompt": "p", "chosen": "a"}])
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: missing field\(s\) \['rejected'\]"):
        records.read_jsonl(path, "PAIR")
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: not valid JSON"):
        records.read_jsonl(path, "PAIR")
    path = _write(tmp_path / "unp.jsonl", [{"prompt": "p", "completion": "c", "label": "yes"}])
    with pytest.raises(ValueError, match=r"unp.jsonl:1: field 'label' must be true/false"):
        records.read_jsonl(path, "UNP")
    path = _write(tmp_path / "list.jsonl", [{"prompt": "p", "completions": ["a", "b"], "scores": [1.0]}])
    with pytest.raises(ValueError, match=r"list.jsonl:1: field 'scores' must be a list of at least 2"):
        records.read_jsonl(path, "LIST")
    with pytest.raises(FileNotFoundError, match="data.path=.*missing.jsonl"):
        records.read_jsonl(tmp_path / "missing.jsonl", "PAIR")


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
