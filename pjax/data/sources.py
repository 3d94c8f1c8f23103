"""Random-access row sources (grain's ``RandomAccessDataSource``: ``__len__``, ``__getitem__(i) -> dict``)
and :func:`load_records`, which reads any of them into validated records of one kind.

| spec | source |
|---|---|
| ``*.jsonl``, ``*.json``, ``*.jsonl.gz``, ``*.json.gz`` | JSON Lines, plain or gzip; rows are numbered by 1-based line |
| ``*.parquet`` | Parquet (pyarrow), read one row group at a time |
| a directory with ``dataset_info.json`` / ``state.json`` / ``dataset_dict.json`` | a Hugging Face ``datasets`` ``save_to_disk`` directory, read with pyarrow (no ``datasets`` needed) |
| ``hf:<name>`` | ``datasets.load_dataset(name, split=split, data_dir=data_dir)`` (needs ``datasets`` and network or its cache) |
| ``tfds:<name>`` | ``tfds.data_source(name, split=split, data_dir=data_dir)`` (array_record; no TensorFlow) |

Row numbers are 1-based line numbers for JSON Lines (and TFDS datasets built from JSON Lines by
:mod:`pjax.data.tfds_preference`), 0-based row indices otherwise; each source says which in
``numbering`` and maps its items to them with ``row_number(i)``.
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any

from pjax.data.formats import KINDS, POLICIES, BadRow, BadRowReport, to_kind

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
MAX_ROW_BYTES = 16 << 20  # JSON Lines rows over this are bad rows ("too_large"), not minutes of encoding
HF_DIR_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


class RowSource:
    """Base of the sources: `name` (for messages), `numbering` ("line" or "index")."""

    name: str = ""
    numbering: str = "index"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        raise NotImplementedError

    def _index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: row {i} out of range (0..{n - 1})")
        return i

    def row_number(self, i: int) -> int:
        """The row number of item `i` in the source's numbering (see the module docstring)."""
        return self._index(i)

    def numbered(self, i: int) -> tuple[int, dict]:
        """(row number, row) of item `i`."""
        return self.row_number(i), self[i]

    def where(self, i: int) -> str:
        """`name:line` or `name[index]` of item `i`, for messages."""
        return self.place(self.row_number(i))

    def place(self, number: int) -> str:
        """`name:line` or `name[index]` of a row number."""
        return f"{self.name}:{number}" if self.numbering == "line" else f"{self.name}[{number}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} rows)"


def to_python(value: Any) -> Any:
    """Plain Python values from NumPy/bytes rows (TFDS), with TFDS/``datasets`` sequences of
    dicts (a dict of equal-length lists, e.g. ``{"role": [...], "content": [...]}``) turned back
    into lists of dicts."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist") and not isinstance(value, (list, dict, str)):  # NumPy arrays and scalars
        return to_python(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    if isinstance(value, dict):
        out = {k: to_python(v) for k, v in value.items()}
        lists = list(out.values())
        if out and all(isinstance(v, list) for v in lists) and len({len(v) for v in lists}) == 1 and (
            {"role", "content"} <= set(out) or {"from", "value"} <= set(out)
        ):
            return [dict(zip(out, items)) for items in zip(*lists)]
        return out
    return value


class JsonlSource(RowSource):
    """JSON Lines, plain or gzip. One scan at open: malformed lines (bad JSON or UTF-8, or not an
    object) go to `report` with their line numbers and are left out; blank lines are ignored.
    Plain files are read back by byte offset; gzip lines are kept in memory."""

    numbering = "line"

    def __init__(self, path: str | os.PathLike, report: BadRowReport | None = None, max_row_bytes: int = MAX_ROW_BYTES):
        self.path = Path(path)
        self.name = str(path)
        self.report = report if report is not None else BadRowReport(self.name, "line")
        self._gz = self.path.name.endswith(".gz")
        self._lines: list[int] = []
        self._offsets: list[tuple[int, int]] = []
        self._raw: list[bytes] = []
        self._fd: int | None = None
        self._pid = -1
        opener = gzip.open if self._gz else open
        offset = seen = lineno = 0
        try:
            with opener(self.path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    start, offset = offset, offset + len(raw)
                    if not raw.strip():
                        continue
                    seen += 1
                    if max_row_bytes and len(raw) > max_row_bytes:
                        self.report.add("too_large", lineno, f"{self.name}:{lineno}: {len(raw):,} bytes, over "
                                        f"data.max_row_bytes={max_row_bytes:,}")
                        continue
                    try:
                        row = json.loads(raw)
                    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                        self.report.add("not_json", lineno, f"{self.name}:{lineno}: not valid JSON ({e})")
                        continue
                    if not isinstance(row, dict):
                        self.report.add(
                            "not_object", lineno, f"{self.name}:{lineno}: expected an object, got {type(row).__name__}")
                        continue
                    self._lines.append(lineno)
                    if self._gz:
                        self._raw.append(raw)
                    else:
                        self._offsets.append((start, len(raw)))
        except (OSError, EOFError, zlib.error) as e:  # a truncated or damaged gzip stream too
            raise OSError(f"{self.name}: cannot read it after line {lineno if seen else 0} "
                          f"({type(e).__name__}: {e})") from e
        self.report.rows_seen += seen

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        if self._gz:
            return json.loads(self._raw[i])
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        start, size = self._offsets[i]
        return json.loads(os.pread(self._fd, size, start))

    def row_number(self, i: int) -> int:
        return self._lines[self._index(i)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


def _pyarrow(what: str):
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise ImportError(f"{what}: reading it needs pyarrow (pip install pyarrow)") from e
    return pyarrow


class ParquetSource(RowSource):
    """A Parquet file, read one row group at a time (the last one is cached)."""

    def __init__(self, path: str | os.PathLike):
        pa = _pyarrow(str(path))
        self.path, self.name = Path(path), str(path)
        try:
            meta = pa.parquet.ParquetFile(self.path).metadata
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{self.name}: not a readable Parquet file ({e})") from e
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._starts = [sum(sizes[:g]) for g in range(len(sizes))]
        self._n = sum(sizes)
        self._file = None
        self._cache: tuple[int, list[dict]] = (-1, [])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        g = bisect.bisect_right(self._starts, i) - 1
        if self._cache[0] != g:
            if self._file is None:
                self._file = _pyarrow(self.name).parquet.ParquetFile(self.path)
            self._cache = (g, self._file.read_row_group(g).to_pylist())
        return self._cache[1][i - self._starts[g]]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_cache": (-1, [])}


class HFDiskSource(RowSource):
    """A ``datasets`` directory written by ``Dataset.save_to_disk`` (``state.json`` lists the Arrow
    stream files) or ``DatasetDict.save_to_disk`` (``dataset_dict.json`` lists the split
    subdirectories), memory-mapped with pyarrow."""

    def __init__(self, path: str | os.PathLike, split: str = "train"):
        path = Path(path)
        self.name = str(path)
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            if split not in splits:
                raise ValueError(f"{path}: no split {split!r}; the splits are {splits}")
            path = path / split
            self.name = f"{self.name}[{split}]"
        state = path / "state.json"
        if state.is_file():
            listed = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
            root = path.resolve()
            for name in listed:  # an absolute path, `..` or a link out of the directory
                if root not in (path / name).resolve().parents:
                    raise ValueError(f"{state}: lists {name!r}, outside the dataset directory; a dataset may "
                                     "only read its own files")
            files = [path / name for name in listed]
        else:
            files = sorted(path.glob("data-*.arrow"))
        if not files:
            raise ValueError(f"{path}: no Arrow data files (expected state.json or data-*.arrow)")
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{path}: state.json lists {f.name}, which is missing")
        self.files = files
        self._table = None
        self._n = len(self._load())

    def _load(self):
        if self._table is None:
            pa = _pyarrow(self.name)
            tables = []
            for f in self.files:
                source = pa.memory_map(str(f))
                try:
                    tables.append(pa.ipc.open_stream(source).read_all())
                except pa.ArrowInvalid:
                    tables.append(pa.ipc.open_file(pa.memory_map(str(f))).read_all())
            self._table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return self._table

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        return self._load().slice(self._index(i), 1).to_pylist()[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}


class HFHubSource(RowSource):
    """A Hugging Face hub dataset through ``datasets.load_dataset`` (network or its local cache)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        self.name = f"hf:{name}"
        try:
            import datasets
        except ImportError as e:
            raise ImportError(f"{self.name}: reading hub datasets needs the `datasets` package") from e
        try:
            self._ds = datasets.load_dataset(name, split=split, data_dir=data_dir)
        except Exception as e:  # connection, offline mode, unknown name or split: all end here
            offline = getattr(datasets.config, "HF_HUB_OFFLINE", False) or os.environ.get("HF_DATASETS_OFFLINE") == "1"
            hint = " (offline mode is on)" if offline else ""
            raise RuntimeError(
                f"{self.name}: could not load split {split!r}{hint}: {type(e).__name__}: {e}. Without network, "
                "save it where there is one (datasets.load_dataset(...).save_to_disk(DIR)) and pass DIR, "
                "or download its JSONL/Parquet files."
            ) from e

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict:
        return to_python(self._ds[self._index(i)])


class TfdsSource(RowSource):
    """A prepared TFDS dataset through ``tfds.data_source`` (array_record, read without
    TensorFlow). Rows of :mod:`pjax.data.tfds_preference` datasets (a ``json`` text and its
    ``line`` or ``index``) are decoded back to the original rows and numbers."""

    def __init__(self, name: str, split: str = "train", data_dir: str | os.PathLike | None = None):
        self.name = f"tfds:{name}"
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(f"{self.name}: reading TFDS datasets needs tensorflow-datasets") from e
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:
            raise ValueError(
                f"{self.name}: cannot open split {split!r} in data_dir={str(data_dir)!r}: {type(e).__name__}: {e}"
            ) from e
        keys = set(self._ds.dataset_info.features.keys()) if self._ds.dataset_info.features else set()
        self._number_key = next((k for k in ("line", "index") if keys == {"json", k}), None)
        self.numbering = "line" if self._number_key == "line" else "index"

    def __len__(self) -> int:
        return len(self._ds)

    def _raw(self, i: int) -> dict:
        return self._ds[self._index(i)]

    def __getitem__(self, i: int) -> dict:
        return self.numbered(i)[1]

    def row_number(self, i: int) -> int:
        return self.numbered(i)[0]

    def numbered(self, i: int) -> tuple[int, dict]:
        row = self._raw(i)
        if self._number_key:
            return int(row[self._number_key]), json.loads(row["json"])
        return self._index(i), to_python(row)


def open_source(
    spec: str | os.PathLike, *, split: str = "train", data_dir: str | os.PathLike | None = None,
    max_row_bytes: int = 0,
) -> tuple[RowSource, BadRowReport]:
    """The row source for `spec` (module table) and its report, holding the rows it could not
    parse (JSON Lines only) and the number of rows seen."""
    spec = str(spec)
    if spec.startswith("tfds:"):
        source: RowSource = TfdsSource(spec[5:], split=split, data_dir=data_dir)
    elif spec.startswith("hf:"):
        source = HFHubSource(spec[3:], split=split, data_dir=None if data_dir is None else str(data_dir))
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            if not any((path / m).is_file() for m in HF_DIR_MARKERS):
                raise ValueError(f"{spec}: a directory without {' / '.join(HF_DIR_MARKERS)}; not a datasets directory")
            source = HFDiskSource(path, split=split)
        elif not path.exists():
            raise FileNotFoundError(f"{spec}: no such file or directory")
        elif path.name.endswith(JSONL_SUFFIXES):
            report = BadRowReport(spec, "line")
            return JsonlSource(path, report, max_row_bytes or MAX_ROW_BYTES), report
        elif path.name.endswith(".parquet"):
            source = ParquetSource(path)
        else:
            raise ValueError(
                f"{spec}: unknown data format; expected {', '.join(JSONL_SUFFIXES)}, .parquet, a datasets "
                "directory, tfds:<name> or hf:<name>")
    report = BadRowReport(source.name, source.numbering)
    report.rows_seen = len(source)
    return source, report


def load_records(
    spec: str | os.PathLike,
    kind: str,
    *,
    split: str = "train",
    bad_rows: str = "fail",
    data_dir: str | os.PathLike | None = None,
    format: str = "auto",
    max_row_bytes: int = 0,
    drop_duplicates: bool = False,
) -> tuple[list[dict], BadRowReport]:
    """Records of `kind` from `spec`: each row's TRL type is detected and converted
    (:func:`pjax.data.formats.to_kind`); bad rows are collected with their row numbers and the
    `bad_rows` policy ("fail" or "skip") applied. ``report.record_rows[j]`` is the source row
    number of record j (for errors found later, e.g. prompt_too_long)."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(KINDS)}")
    if bad_rows not in POLICIES:
        raise ValueError(f"bad_rows must be one of {POLICIES}, got {bad_rows!r}")
    source, report = open_source(spec, split=split, data_dir=data_dir, max_row_bytes=max_row_bytes)
    records: list[dict] = []
    seen: dict[str, int] = {}  # a record's canonical JSON -> the row it first came from
    for i in range(len(source)):
        number, row = source.numbered(i)
        try:
            out = to_kind(row, kind, source.place(number), format=format)
        except BadRow as e:
            report.add(e.reason, number, e.message)
            continue
        if not out:
            report.no_records += 1
        for record in out:
            key = json.dumps(record, sort_keys=True, default=str)
            if key in seen:
                report.duplicates += 1
                if len(report.first_duplicates) < 5:
                    report.first_duplicates.append((number, seen[key]))
                if drop_duplicates:
                    continue
            else:
                seen[key] = number
            records.append(record)
            report.record_rows.append(number)
    report.check(bad_rows)
    if not records:
        raise ValueError(f"{report.summary()}\n{source.name}: no records of kind {kind}")
    return records, report
