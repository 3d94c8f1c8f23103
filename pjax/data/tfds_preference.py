"""TFDS builder ``pjax_preference``: a local preference (or any TRL-type) dataset as an array_record
TFDS dataset, built and read without TensorFlow.

Each example is one source row, kept whole as JSON text, with its source row number:
``{"json": Text, "line": int64}`` when every source is JSON Lines (1-based line numbers), else
``{"json": Text, "index": int64}`` (0-based indices). Rows are written in source order
(``disable_shuffling``). Bad JSON lines are handled at build time by the config's ``bad_rows``
policy; every other check happens when the rows are read back with
``pjax.data.sources.load_records("tfds:pjax_preference/<name>", kind, data_dir=...)``.

Build from files (``paths`` maps splits to anything :func:`pjax.data.sources.open_source` reads)::

    spec = build_preference_dataset({"train": "train.jsonl.gz"}, data_dir="~/tensorflow_datasets", name="hh")
    tfds.data_source("pjax_preference/hh", split="train", data_dir=...)  # or open_source("tfds:" + spec)

or with the default config from a manual directory holding ``<split>.jsonl`` / ``<split>.jsonl.gz``
(``tfds.download.DownloadConfig(manual_dir=...)``). TFDS's default file format is tfrecord, which
needs TensorFlow; this builder defaults to array_record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from pjax.data.formats import POLICIES
from pjax.data.sources import JSONL_SUFFIXES, open_source

NAME = "pjax_preference"


@dataclasses.dataclass(eq=False)
class PjaxPreferenceConfig(tfds.core.BuilderConfig):
    """`paths`: split -> source spec (JSONL, Parquet, datasets directory); empty: the manual dir.
    `bad_rows`: "fail" or "skip" for lines that are not JSON objects."""

    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    bad_rows: str = "fail"


class PjaxPreference(tfds.core.GeneratorBasedBuilder):
    """Rows of local files as a TFDS dataset (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Rows as JSON text with their source row numbers."}
    BUILDER_CONFIGS: ClassVar[list[PjaxPreferenceConfig]] = [
        PjaxPreferenceConfig(name="default", description="Splits from <split>.jsonl[.gz] in manual_dir.")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put <split>.jsonl or <split>.jsonl.gz files (e.g. train.jsonl) in manual_dir."

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds a builder's file through `importlib_resources`, which it uses but does not
        # require on Python >= 3.9; the file is known, so skip that lookup.
        return epath.Path(__file__)

    def _number_key(self) -> str:
        paths = self.builder_config.paths
        return "line" if all(str(p).endswith(JSONL_SUFFIXES) for p in paths.values()) else "index"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Rows of local preference files, each as JSON text with its source row number.",
            features=tfds.features.FeaturesDict({"json": tfds.features.Text(), self._number_key(): np.int64}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        paths = dict(self.builder_config.paths)
        if not paths:
            manual = Path(dl_manager.manual_dir)
            for f in sorted(manual.iterdir()):
                split = f.name.split(".")[0]
                if f.name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
                    paths[split] = str(f)
            if not paths:
                raise ValueError(f"{manual}: no <split>.jsonl or <split>.jsonl.gz files")
        return {split: self._generate_examples(spec) for split, spec in paths.items()}

    def _generate_examples(self, spec: str):
        if self.builder_config.bad_rows not in POLICIES:
            raise ValueError(f"bad_rows must be one of {POLICIES}, got {self.builder_config.bad_rows!r}")
        source, report = open_source(spec)
        key = self._number_key()
        if source.numbering != key:
            raise ValueError(f"{spec}: rows numbered by {source.numbering!r}, but the dataset's feature is {key!r}")
        report.check(self.builder_config.bad_rows)
        for i in range(len(source)):
            number, row = source.numbered(i)
            yield i, {"json": json.dumps(row, ensure_ascii=False, default=str), key: number}


def build_preference_dataset(
    paths: dict[str, str | os.PathLike] | str | os.PathLike,
    *,
    data_dir: str | os.PathLike,
    name: str = "default",
    bad_rows: str = "fail",
    overwrite: bool = False,
) -> str:
    """Build ``pjax_preference/<name>`` in `data_dir` from `paths` (split -> JSONL/Parquet file or
    datasets directory; one path means the train split) and return its TFDS name, for
    ``tfds.data_source`` or ``"tfds:" + name``.
    An existing build is reused unless `overwrite`."""
    if not isinstance(paths, dict):
        paths = {"train": paths}
    for split, p in paths.items():
        if not Path(p).expanduser().exists():
            raise FileNotFoundError(f"{NAME}/{name} split {split!r}: no such file {str(p)!r}")
    config = PjaxPreferenceConfig(
        name=name, paths={s: str(Path(p).expanduser()) for s, p in paths.items()}, bad_rows=bad_rows)
    builder = PjaxPreference(config=config, data_dir=str(Path(data_dir).expanduser()))
    modes = tfds.download.GenerateMode
    mode = modes.FORCE_REDOWNLOAD if overwrite else modes.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return f"{NAME}/{name}"
