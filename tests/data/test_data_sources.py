"""Row sources (pjax.data.sources) and the TFDS builder (pjax.data.tfds_preference): every reader,
bad rows with their row numbers under both policies, and the error paths."""

import gzip
import json
import logging
import pickle
import re
import sys

import pytest

from pjax.data.sources import load_records, open_source


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}

GOOD = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
IMPLICIT = {"chosen": "The sun is in the sky.", "rejected": "The sun is in the ocean."}
# line number -> (raw line, bad-row reason or None)
LINES = {
    1: (json.dumps(GOOD), None),
    2: ("", None),  # blank lines are not rows
    3: ("{not json", "not_json"),
    4: ("[1, 2]", "not_object"),
    5: (json.dumps({"prompt": "p", "completion": "c"}), "missing_keys"),
    6: (json.dumps({"prompt": "p", "chosen": 1, "rejected": "b"}), "non_string"),
    7: (json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}), "empty_completion"),
    8: (json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"}), "identical_pair"),
    9: (json.dumps({"prompt": "p", "chosen": "a", "rejected": [A("b")]}), "wrong_type"),
    10: (json.dumps({"prompt": "p", "completions": ["a"], "labels": [True]}), "unsupported"),
    11: (json.dumps(IMPLICIT), None),
}


def _write(path, lines, gz=False):
    data = "".join(line + "\n" for line in lines).encode()
    data += b"\xff\xfe{}\n"  # line 12: not UTF-8
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture(params=["plain", "gz"])
def messy_jsonl(request, tmp_path):
    gz = request.param == "gz"
    return _write(tmp_path / ("messy.jsonl.gz" if gz else "messy.jsonl"), [v[0] for v in LINES.values()], gz=gz)


def test_jsonl_bad_rows_with_line_numbers_skip(messy_jsonl, caplog):
    with caplog.at_level(logging.WARNING):
        records, report = load_records(messy_jsonl, "PAIR", bad_rows="skip")
    assert records == [GOOD, {"prompt": "The sun is in the", "chosen": " sky.", "rejected": " ocean."}]
    assert report.record_rows == [1, 11]
    want = {reason: [n] for n, (_, reason) in LINES.items() if reason}
    want["not_json"] = [3, 12]
    assert report.first_rows == want
    assert report.counts == {k: len(v) for k, v in want.items()}
    assert report.rows_seen == 11 and report.numbering == "line"
    assert str(messy_jsonl) in report.summary() and "not_json: 2 (lines 3, 12)" in report.summary()
    # bad_rows='skip' reports in the log: the warning is the product
    assert any(str(messy_jsonl) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_jsonl_bad_rows_fail(messy_jsonl):
    with pytest.raises(ValueError) as e:
        load_records(messy_jsonl, "PAIR")
    msg = str(e.value)
    assert str(messy_jsonl) in msg and "9 bad row(s) of 11 (1-based line numbers)" in msg
    assert f"{messy_jsonl}:6:" in msg and "identical_pair: 1 (lines 8)" in msg


def test_jsonl_source_random_access_and_pickle(messy_jsonl):
    source, report = open_source(messy_jsonl)
    good = [json.loads(v[0]) for v in LINES.values() if v[0] and not v[0].startswith(("{not", "["))]
    assert len(source) == len(good) and report.counts == {"not_json": 2, "not_object": 1}
    assert [source[i] for i in reversed(range(len(source)))] == good[::-1]
    assert [source.row_number(i) for i in range(len(source))] == [1, 5, 6, 7, 8, 9, 10, 11]
    assert source[-1] == IMPLICIT and source.where(0) == f"{messy_jsonl}:1"
    clone = pickle.loads(pickle.dumps(source))
    assert [clone[i] for i in range(len(clone))] == good
    with pytest.raises(IndexError, match="out of range"):
        source[len(source)]


def test_grain_reads_a_source(tmp_path):
    grain = pytest.importorskip("grain", reason="grain not installed")
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source, _ = open_source(path)
    ds = grain.MapDataset.source(source)
    assert len(ds) == 5 and [ds[i] for i in (4, 0, 2)] == [rows[4], rows[0], rows[2]]


def test_no_records_is_an_error(tmp_path):
    path = tmp_path / "kto.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "c", "label": False}) + "\n")
    with pytest.raises(ValueError, match="no records of kind SEQ"):
        load_records(path, "SEQ")
    assert load_records(path, "UNP")[0] == [{"prompt": "p", "completion": "c", "label": False}]


# --- Parquet ------------------------------------------------------------------------------------


def test_parquet_row_groups_and_bad_rows(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed")
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "label": i % 2 == 0} for i in range(7)]
    rows[3]["completion"] = " "
    path = tmp_path / "kto.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    source, _ = open_source(path)
    assert len(source) == 7 and source.numbering == "index"
    assert [source[i] for i in (6, 0, 3, 2, 5)] == [rows[i] for i in (6, 0, 3, 2, 5)]
    assert [pickle.loads(pickle.dumps(source))[i] for i in range(7)] == rows
    records, report = load_records(path, "UNP", bad_rows="skip")
    assert records == [r for i, r in enumerate(rows) if i != 3]
    assert report.first_rows == {"empty_completion": [3]} and report.record_rows == [0, 1, 2, 4, 5, 6]
    assert "0-based row indices" in report.summary() and f"{path}[3]" in report.summary()


# --- datasets save_to_disk directories -----------------------------------------------------------


def test_datasets_dir_single_and_dict(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the datasets package writes the test directory")
    conv = [
        {"prompt": [U(f"q{i}")], "chosen": [A(f"good {i}")], "rejected": [A(f"bad {i}")], "score": float(i)}
        for i in range(6)
    ]
    datasets.Dataset.from_list(conv).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(conv), "test": datasets.Dataset.from_list(conv[:2]),
    }).save_to_disk(str(tmp_path / "dict"), num_shards={"train": 3, "test": 1})
    monkeypatch.setitem(sys.modules, "datasets", None)  # the reader needs only pyarrow

    source, report = open_source(tmp_path / "single")
    assert [source[i] for i in range(len(source))] == conv and report.rows_seen == 6
    records, _ = load_records(tmp_path / "dict", "PAIR", split="train")
    assert records == [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in conv]
    records, report = load_records(tmp_path / "dict", "UNP", split="test")
    assert [r["label"] for r in records] == [True, False, True, False] and report.record_rows == [0, 0, 1, 1]
    clone = pickle.loads(pickle.dumps(open_source(tmp_path / "dict", split="train")[0]))
    assert clone[5] == conv[5]
    with pytest.raises(ValueError, match=r"no split 'validation'; the splits are \['train', 'test'\]"):
        open_source(tmp_path / "dict", split="validation")


def test_a_damaged_gzip_file_is_named_with_the_line_reached(tmp_path):
    rows = "".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(2000))
    raw = gzip.compress(rows.encode())
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(raw[:len(raw) // 2] + bytes(64) + raw[len(raw) // 2 + 64:])  # 64 bytes zeroed mid-stream
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: cannot read it after line \d+ \((error|BadGzipFile)"):
        open_source(path)


def test_an_oversized_row_is_a_bad_row_not_minutes_of_encoding(tmp_path):
    path = tmp_path / "pairs.jsonl"
    big = {"prompt": "x" * 5000, "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(big) + "\n")
    with pytest.raises(ValueError, match=r"too_large: 1 \(lines 2\).*over data.max_row_bytes=4,096"):
        load_records(path, "PAIR", max_row_bytes=4096)
    records, report = load_records(path, "PAIR", bad_rows="skip", max_row_bytes=4096)
    assert len(records) == 1 and report.counts == {"too_large": 1}
    assert len(load_records(path, "PAIR")[0]) == 2  # under the default limit


def test_duplicate_records_are_counted_reported_and_optionally_dropped(tmp_path, caplog):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    caplog.set_level(logging.WARNING)
    records, report = load_records(path, "PAIR")
    assert len(records) == 4 and report.duplicates == 2 and report.first_duplicates == [(3, 1), (4, 1)]
    assert "2 duplicate record(s) (lines 3 = 1, 4 = 1)" in caplog.text  # the log is the product
    records, report = load_records(path, "PAIR", drop_duplicates=True)
    assert [r["prompt"] for r in records] == ["p", "q"] and report.record_rows == [1, 2]
    assert report.to_dict()["duplicates"] == 2


@pytest.mark.parametrize("outside", ["../secret.arrow", "/etc/passwd", "link.arrow"])
def test_datasets_dir_may_not_read_files_outside_itself(tmp_path, outside):
    """A `state.json` naming a file outside its directory (absolute, `..`, or a link out) is refused,
    naming the file, before anything is read."""
    directory = tmp_path / "ds"
    directory.mkdir()
    (tmp_path / "secret.arrow").write_bytes(b"not yours")
    if outside == "link.arrow":
        (directory / "link.arrow").symlink_to(tmp_path / "secret.arrow")
    (directory / "state.json").write_text(json.dumps({"_data_files": [{"filename": outside}]}))
    with pytest.raises(ValueError, match=f"lists {re.escape(repr(outside))}, outside the dataset directory"):
        open_source(directory)


# --- hub names (error paths only: no network in tests) -------------------------------------------


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="hf:Anthropic/hh-rlhf: .*needs the `datasets` package"):
        open_source("hf:Anthropic/hh-rlhf")


def test_hub_offline(monkeypatch):
    datasets = pytest.importorskip("datasets", reason="datasets not installed")
    hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub not installed")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"hf:Anthropic/hh-rlhf: could not load split 'test' \(offline"):
        open_source("hf:Anthropic/hh-rlhf", split="test", data_dir="harmless-base")


# --- errors naming the path ----------------------------------------------------------------------


def test_open_source_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl: no such file"):
        open_source(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="data.csv: unknown data format"):
        open_source(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: a directory without"):
        open_source(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown record kind"):
        load_records(tmp_path / "missing.jsonl", "DPO")
    with pytest.raises(ValueError, match="bad_rows must be"):
        load_records(tmp_path / "missing.jsonl", "PAIR", bad_rows="ignore")


# --- TFDS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_mod():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")
    pytest.importorskip("array_record", reason="array_record not installed")
    tfds.disable_progress_bar()
    return tfds


def test_tfds_build_and_read_back(tfds_mod, tmp_path):
    from pjax.data.tfds_preference import build_preference_dataset

    path = tmp_path / "prefs.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n{{broken\n\n{json.dumps(IMPLICIT)}\n")
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=r"(?s)prefs.jsonl: 1 bad row.*not_json: 1 \(lines 2\)"):
        build_preference_dataset(path, data_dir=data_dir, name="mine")
    name = build_preference_dataset(path, data_dir=data_dir, name="mine", bad_rows="skip")
    assert name == "pjax_preference/mine"

    ds = tfds_mod.data_source(name, split="train", data_dir=str(data_dir))
    assert len(ds) == 2
    assert [json.loads(ds[i]["json"]) for i in range(2)] == [GOOD, IMPLICIT]
    assert [int(ds[i]["line"]) for i in range(2)] == [1, 4]

    source, report = open_source("tfds:" + name, data_dir=data_dir)
    assert [source[i] for i in range(2)] == [GOOD, IMPLICIT] and source.numbering == "line"
    records, report = load_records("tfds:" + name, "UNP", data_dir=data_dir)
    assert [r["label"] for r in records] == [True, False, True, False] and report.record_rows == [1, 1, 4, 4]

    path.write_text(json.dumps(IMPLICIT) + "\n")  # an existing build is reused unless overwritten
    build_preference_dataset(path, data_dir=data_dir, name="mine")
    assert len(open_source("tfds:" + name, data_dir=data_dir)[0]) == 2
    build_preference_dataset(path, data_dir=data_dir, name="mine", overwrite=True)
    source, _ = open_source("tfds:" + name, data_dir=data_dir)
    assert len(source) == 1 and source[0] == IMPLICIT
    assert "tensorflow" not in sys.modules


def test_tfds_from_parquet_and_manual_dir(tfds_mod, tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed")
    import pyarrow.parquet as pq

    from pjax.data.tfds_preference import PjaxPreference, build_preference_dataset

    rows = [{"prompt": [U(f"q{i}")], "completion": [A(f"a{i}")]} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sft.parquet")
    name = build_preference_dataset({"train": tmp_path / "sft.parquet"}, data_dir=tmp_path / "d", name="sft")
    source, _ = open_source(f"tfds:{name}", data_dir=tmp_path / "d")
    assert source.numbering == "index" and [source[i] for i in range(3)] == rows
    assert [source.row_number(i) for i in range(3)] == [0, 1, 2]

    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "test.jsonl").write_text(json.dumps(GOOD) + "\n")
    (manual / "README.md").write_text("ignored")
    PjaxPreference(data_dir=str(tmp_path / "d")).download_and_prepare(
        download_config=tfds_mod.download.DownloadConfig(manual_dir=str(manual)))
    records, report = load_records("tfds:pjax_preference", "PROMPT", split="test", data_dir=tmp_path / "d")
    assert records == [{"prompt": "The sky is"}] and report.record_rows == [1]


def test_tfds_generic_dataset_rows_and_missing(tfds_mod, tmp_path):
    import numpy as np

    from pjax.data.sources import to_python

    row = {"prompt": b"p", "messages": {"role": np.array([b"user", b"assistant"], dtype=object),
                                        "content": np.array([b"q", b"a"], dtype=object)},
           "label": np.bool_(True), "scores": np.array([1.0, 2.0])}
    assert to_python(row) == {"prompt": "p", "messages": [U("q"), A("a")], "label": True, "scores": [1.0, 2.0]}
    with pytest.raises(ValueError, match="tfds:no_such_dataset_xyz: cannot open split 'train'"):
        open_source("tfds:no_such_dataset_xyz", data_dir=tmp_path)
