"""SentencePiece tokenizer wrapper and a small in-memory trainer."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm


class SentencePieceTokenizer:
    """Thin wrapper around a SentencePiece ``.model`` file.

    If the model defines no pad piece (``pad_id() == -1``, as in the Llama 2
    model) ``pad_id`` is 0 (the unk piece there). This is safe because pad
    positions are always masked out by the batching code.
    """

    def __init__(self, model_path: str | os.PathLike) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.model_path = str(path)
        self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        self._special = {self.pad_id, self.bos_id, self.eos_id}

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        pad = self._sp.pad_id()
        return 0 if pad < 0 else pad

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally wrapped in BOS/EOS."""
        ids = self._sp.encode(text, out_type=int)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, skipping pad/bos/eos and out-of-range ids."""
        vocab = self.vocab_size
        keep = [int(i) for i in ids if 0 <= int(i) < vocab and int(i) not in self._special]
        return self._sp.decode(keep)


def train_sentencepiece(texts: list[str], model_prefix: str, vocab_size: int) -> str:
    """Train a BPE SentencePiece model on ``texts`` and return ``<model_prefix>.model``.

    Special ids: pad=0, unk=1, bos=2, eos=3. Normalisation is the identity so
    that ``decode(encode(x)) == x`` for whitespace-normalised text. Training is
    single-threaded (deterministic) and silent.
    """
    if not texts:
        raise ValueError("train_sentencepiece needs at least one text")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        normalization_rule_name="identity",
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        num_threads=1,
        minloglevel=2,
    )
    path = f"{model_prefix}.model"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(proto.getvalue())
    return path
