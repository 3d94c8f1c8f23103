"""Tokenizers behind one interface: SentencePiece ``.model`` files, Hugging Face ``tokenizer.json``
directories and the vocabulary embedded in a GGUF file, plus a small in-memory SentencePiece trainer.

Conventions every `Tokenizer` follows:

* ``encode(text)`` never adds special tokens on its own; pjax decides about BOS (``add_bos``) and EOS
  itself, so a tokenizer's post-processor (which may insert BOS) is never run: BOS is never doubled.
* Special-token text inside ``text`` (``"<|im_start|>"``, ``"</s>"``) encodes to that token's id, as
  transformers does, so rendered chat templates tokenize correctly.
* ``pad_id`` is always a valid id: the pad token when the vocabulary defines one, else a documented
  fallback (0 for SentencePiece, EOS otherwise). Pad positions are always masked out by the batching
  code, so the fallback never reaches a loss.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import sentencepiece as spm

from pjax.models.gguf import read_metadata


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer (see the module docstring for conventions)."""

    @property
    def name(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def add_bos(self) -> bool:
        """Whether sequences start with BOS (``bos_id`` is then not None)."""
    @property
    def bos_token(self) -> str | None: ...
    @property
    def eos_token(self) -> str | None: ...
    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end generation: ``eos_id`` first, then e.g. generation_config's extra EOS ids."""
    @property
    def chat_template(self) -> str | None: ...

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...


def _wrap(ids: list[int], bos: int | None, eos: int, add_bos: bool, add_eos: bool) -> list[int]:
    if add_bos and bos is None:
        raise ValueError("add_bos=True but this tokenizer has no BOS token")
    return ([bos] if add_bos else []) + ids + ([eos] if add_eos else [])


def _special_pattern(texts: Iterable[str]) -> re.Pattern | None:
    """A regex matching any of ``texts`` (longest first), or None when there are none."""
    texts = sorted({t for t in texts if t}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts))) if texts else None


class SentencePieceTokenizer:
    """A SentencePiece ``.model`` file (or, via `from_gguf`, a SentencePiece vocabulary in a GGUF file).

    If the model defines no pad piece (``pad_id() == -1``, as in the Llama 2 model) ``pad_id`` is 0
    (the unk piece there). This is safe because pad positions are always masked out by the batching
    code. The text of control and unknown pieces (``<s>``, ``</s>``, ``<unk>``) encodes to their ids,
    like transformers' Llama tokenizer, so chat templates that write ``bos_token`` work.
    """

    def __init__(self, model_path: str | os.PathLike, *, add_bos: bool = True,
                 chat_template: str | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self._setup(path, spm.SentencePieceProcessor(model_file=str(path)), add_bos, chat_template)

    def _setup(self, path: Path, sp: Any, add_bos: bool, chat_template: str | None,
               ids: dict[str, int | None] | None = None) -> None:
        self.model_path = str(path)
        self.name = path.name
        self._sp = sp
        bos, eos, pad = sp.bos_id(), sp.eos_id(), sp.pad_id()
        ids = {"bos": None if bos < 0 else bos, "eos": eos, "pad": max(pad, 0), **(ids or {})}
        if ids["eos"] is None or ids["eos"] < 0:
            raise ValueError(f"{path}: the SentencePiece model defines no EOS piece")
        self._bos, self._eos, self._pad = ids["bos"], ids["eos"], ids["pad"]
        self.add_bos = bool(add_bos) and self.bos_id is not None
        self.chat_template = chat_template
        n = sp.get_piece_size()
        self._control = {i: sp.id_to_piece(i) for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
        self._by_text = {text: i for i, text in self._control.items()}
        self._pattern = _special_pattern(self._by_text)
        self._skip = {self.pad_id, self.eos_id, *self._control} | ({self.bos_id} if self.bos_id is not None else set())

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> SentencePieceTokenizer:
        """The SentencePiece vocabulary (``tokenizer.ggml.model == "llama"``) embedded in a GGUF file,
        rebuilt as a SentencePiece BPE model the way llama.cpp runs it: pieces, scores and types from
        the metadata, identity normalisation, ``add_space_prefix`` (default true) as the dummy prefix,
        byte fallback when the vocabulary has byte pieces. bos/eos/pad ids (llama.cpp's defaults 1/2/-),
        ``add_bos_token`` (default true) and the chat template come from the metadata. (Vocabularies
        that store whitespace pieces unescaped, like Gemma's, are not handled specially.)"""
        path = Path(path)
        meta = read_gguf_metadata(path, prefix="tokenizer.") if meta is None else meta
        if meta.get("tokenizer.ggml.model") != "llama":
            raise ValueError(f"{path}: tokenizer.ggml.model={meta.get('tokenizer.ggml.model')!r} is not a "
                             "SentencePiece ('llama') vocabulary")
        ids = {k: meta.get(f"tokenizer.ggml.{key}", default) for k, key, default in
               (("bos", "bos_token_id", 1), ("eos", "eos_token_id", 2), ("pad", "padding_token_id", None))}
        n = len(meta["tokenizer.ggml.tokens"])
        for k, i in ids.items():
            if i is not None and not 0 <= int(i) < n:
                raise ValueError(f"{path}: {k} id {i} is outside the {n}-token vocabulary")
        proto = _spm_proto_from_gguf(path, meta, {int(i) for i in ids.values() if i is not None})
        try:
            sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:
            raise ValueError(f"{path}: SentencePiece rejects the vocabulary rebuilt from the metadata: {e}") from e
        tok = cls.__new__(cls)
        ids["pad"] = 0 if ids["pad"] is None else ids["pad"]
        tok._setup(path, sp, bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                   meta.get("tokenizer.chat_template"), ids)
        return tok

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_id is None else self._sp.id_to_piece(self.bos_id)

    @property
    def eos_token(self) -> str:
        return self._sp.id_to_piece(self.eos_id)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        # piece_to_id answers unk for unknown pieces: only trust it when the piece really is unk's text.
        return i if self._sp.id_to_piece(i) == token else None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally wrapped in BOS/EOS. Each stretch of text between
        special-piece texts is encoded on its own (it gets SentencePiece's leading-space marker)."""
        ids: list[int] = []
        pos = 0
        for m in self._pattern.finditer(text) if self._pattern is not None else ():
            if m.start() > pos:
                ids += self._sp.encode(text[pos:m.start()], out_type=int)
            ids.append(self._by_text[m.group()])
            pos = m.end()
        if pos < len(text) or not ids:
            ids += self._sp.encode(text[pos:], out_type=int)
        return _wrap(ids, self.bos_id, self.eos_id, add_bos, add_eos)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids`` without out-of-range ids; with ``skip_special`` also without pad, BOS, EOS
        and control pieces, otherwise with control pieces written as their text."""
        vocab = self.vocab_size
        ids = [int(i) for i in ids if 0 <= int(i) < vocab]
        if skip_special:
            return self._sp.decode([i for i in ids if i not in self._skip])
        out, run = [], []
        for i in ids:
            if i in self._control:
                out += [self._sp.decode(run), self._control[i]]
                run = []
            else:
                run.append(i)
        return "".join(out + [self._sp.decode(run)])


def _spm_proto_from_gguf(path: Path, meta: dict[str, Any], special_ids: set[int]) -> bytes:
    """A serialized SentencePiece BPE ModelProto from GGUF ``tokenizer.*`` metadata. GGUF token types
    use SentencePiece's numbering (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
    the bos/eos/pad pieces are made control pieces so that SentencePiece never emits them for text."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as e:  # needs protobuf
        raise ImportError(f"{path}: rebuilding a SentencePiece vocabulary needs protobuf ({e})") from e
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not len(tokens) == len(scores) == len(types):
        raise ValueError(f"{path}: {len(tokens)} tokens, {len(scores)} scores and {len(types)} token types")
    if 2 not in types:
        raise ValueError(f"{path}: the vocabulary has no unknown-type token, which SentencePiece requires")
    model = pb.ModelProto()
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        model.pieces.add(piece=token, score=score, type=3 if i in special_ids and kind == 1 else kind)
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(tokens)
    model.trainer_spec.byte_fallback = 6 in types
    model.trainer_spec.unk_id = types.index(2)
    model.trainer_spec.unk_piece = tokens[types.index(2)]
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False))
    norm.escape_whitespaces = True
    return model.SerializeToString()


def train_sentencepiece(texts: list[str], model_prefix: str, vocab_size: int, **options: Any) -> str:
    """Train a BPE SentencePiece model on ``texts`` and return ``<model_prefix>.model``.

    Special ids: pad=0, unk=1, bos=2, eos=3. Normalisation is the identity so
    that ``decode(encode(x)) == x`` for whitespace-normalised text. Training is
    single-threaded (deterministic) and silent. ``options``: further trainer
    options (e.g. ``split_digits=True``).
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
        **options,
    )
    path = f"{model_prefix}.model"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(proto.getvalue())
    return path


def cached_sentencepiece(path: Path, texts: Callable[[], list[str]], vocab_size: int,
                         **options: Any) -> SentencePieceTokenizer:
    """The SentencePiece model at ``path``, trained on ``texts()`` first if it is not there yet and
    published atomically (concurrent processes never read a partial file)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_prefix = str(path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex}"))
        os.replace(train_sentencepiece(texts(), tmp_prefix, vocab_size, **options), path)
    return SentencePieceTokenizer(str(path))


# --------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json and GGUF vocabularies (both run on the `tokenizers` library)


class HFTokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and flags pjax needs.

    Build one with `from_json` (a ``tokenizer.json`` and the config files beside it) or `from_gguf`
    (the byte-level BPE vocabulary embedded in a GGUF file). The tokenizer's post-processor is never run
    (``add_special_tokens=False``); whether sequences start with BOS is ``add_bos``.
    ``pad_id`` falls back to ``eos_id`` when no pad token is defined (TRL's convention).
    """

    def __init__(self, tokenizer: Any, *, name: str, eos_token: str, bos_token: str | None = None,
                 pad_token: str | None = None, add_bos: bool | None = None, chat_template: str | None = None,
                 extra_stop_ids: Sequence[int] = (), vocab_size: int | None = None) -> None:
        self._tk = tokenizer
        self.name = name
        self.vocab_size = max(int(vocab_size or 0), tokenizer.get_vocab_size(with_added_tokens=True))
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = None if bos_token is None else self._require(bos_token, "bos_token")
        self.eos_id = self._require(eos_token, "eos_token")
        self.pad_id = self.eos_id if pad_token is None else self._require(pad_token, "pad_token")
        if add_bos is None:  # no explicit flag: follow the post-processor (does it insert BOS?)
            add_bos = self.bos_id is not None and tokenizer.encode("", add_special_tokens=True).ids[:1] == [self.bos_id]
        if add_bos and self.bos_id is None:
            raise ValueError(f"{name}: add_bos_token is true but no BOS token is defined")
        self.add_bos = bool(add_bos)
        self.chat_template = chat_template
        self.stop_ids = tuple(dict.fromkeys([self.eos_id, *map(int, extra_stop_ids)]))
        self._skip = {self.eos_id, self.pad_id} | ({self.bos_id} if self.bos_id is not None else set())

    def _require(self, token: str, what: str) -> int:
        i = self._tk.token_to_id(token)
        if i is None:
            raise ValueError(f"{self.name}: {what} {token!r} is not in the vocabulary")
        return i

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `tokenizer.json` and `tokenizer_config.json` (special tokens, BOS policy, chat
        template) that transformers' `AutoTokenizer.from_pretrained(directory)` loads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tk.save(str(directory / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.bos_token,
                  "eos_token": self.eos_token, "pad_token": self._tk.id_to_token(self.pad_id),
                  "add_bos_token": self.add_bos, "clean_up_tokenization_spaces": False}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (special-token text maps to its id), optionally wrapped in BOS/EOS."""
        return _wrap(self._tk.encode(text, add_special_tokens=False).ids, self.bos_id, self.eos_id, add_bos, add_eos)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids`` without out-of-range ids; with ``skip_special`` also without special tokens
        (and pad/BOS/EOS even if the vocabulary does not mark them special). No space clean-up, so
        ``decode(encode(x)) == x`` for byte-level vocabularies."""
        vocab = self.vocab_size
        ids = [int(i) for i in ids if 0 <= int(i) < vocab]
        if skip_special:
            ids = [i for i in ids if i not in self._skip]
        return self._tk.decode(ids, skip_special_tokens=skip_special)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> HFTokenizer:
        """A ``tokenizer.json`` (or a directory holding one) with, when present beside it,
        ``tokenizer_config.json`` (special tokens, ``add_bos_token``, ``chat_template``),
        ``special_tokens_map.json`` (fills special tokens the config lacks), ``chat_template.jinja``
        (takes priority over the config's template) and ``generation_config.json`` (extra EOS ids).

        Without an ``add_bos_token`` entry, BOS is added iff the post-processor inserts it.
        """
        from tokenizers import Tokenizer as _Tk

        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {p}")
        folder = file.parent
        config = _read_json(folder / "tokenizer_config.json")
        specials = _read_json(folder / "special_tokens_map.json")
        tokens = {}
        for key in ("bos_token", "eos_token", "pad_token"):
            value = config[key] if key in config else specials.get(key)
            tokens[key] = _token_text(value, f"{folder / 'tokenizer_config.json'}: {key}")
        generation = _read_json(folder / "generation_config.json")
        extra = generation.get("eos_token_id")
        extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
        try:
            tk = _Tk.from_file(str(file))
        except Exception as e:  # the Rust library raises its own Exception type, naming no file
            raise ValueError(f"{file}: not a valid tokenizer.json ({type(e).__name__}: {e})") from e
        eos = tokens["eos_token"]
        if eos is None:
            if not extra:
                raise ValueError(f"{folder}: no EOS token (set eos_token in tokenizer_config.json)")
            eos = tk.id_to_token(extra[0])
        add_bos = config.get("add_bos_token")
        return cls(tk, name=str(p), eos_token=eos, bos_token=tokens["bos_token"], pad_token=tokens["pad_token"],
                   add_bos=add_bos if isinstance(add_bos, bool) else None,
                   chat_template=_chat_template(folder, config), extra_stop_ids=extra)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> HFTokenizer:
        """The byte-level BPE vocabulary (``tokenizer.ggml.model == "gpt2"``) embedded in a GGUF file.

        Tokens, merges and token types come from the ``tokenizer.ggml.*`` metadata; control (and
        unknown) tokens become special added tokens and user-defined ones plain added tokens, so their
        text encodes to their id. The pre-tokenizer follows ``tokenizer.ggml.pre`` (see
        `gguf_pre_tokenizer`). bos/eos/pad ids, ``add_bos_token`` and ``tokenizer.chat_template`` come
        from the metadata; EOT/EOM ids join ``stop_ids``. SentencePiece vocabularies
        (``tokenizer.ggml.model == "llama"``) are `SentencePieceTokenizer.from_gguf`'s.
        """
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as _Tk

        path = Path(path)
        meta = read_gguf_metadata(path, prefix="tokenizer.") if meta is None else meta
        kind = meta.get("tokenizer.ggml.model")
        if kind == "llama":
            raise ValueError(f"{path}: a SentencePiece vocabulary (tokenizer.ggml.model='llama'): load it with "
                             "SentencePieceTokenizer.from_gguf or load_tokenizer")
        if kind != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model={kind!r} is not supported (only 'gpt2', byte-level BPE)")
        tokens, merges = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.merges")
        if merges is None:
            raise ValueError(f"{path}: no tokenizer.ggml.merges in the metadata")
        pre = meta.get("tokenizer.ggml.pre", "default")
        types = meta.get("tokenizer.ggml.token_type")
        if types is not None and len(types) != len(tokens):
            raise ValueError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = []
        for m in merges:
            cut = m.find(" ", 1)  # llama.cpp splits a merge at the first space after its first character
            if cut < 0:
                raise ValueError(f"{path}: malformed merge {m!r}")
            pairs.append((m[:cut], m[cut + 1:]))
        tk = _Tk(models.BPE(vocab, pairs, ignore_merges=pre in _IGNORE_MERGES))
        tk.pre_tokenizer = gguf_pre_tokenizer(pre)
        tk.decoder = decoders.ByteLevel()
        if types is not None:
            # llama.cpp token types: 2 unknown, 3 control, 4 user-defined (gguf.TokenType).
            special = [AddedToken(tokens[i], special=True, normalized=False) for i in range(len(tokens)) if types[i] in (2, 3)]
            added = [AddedToken(tokens[i], special=False, normalized=False) for i in range(len(tokens)) if types[i] == 4]
            tk.add_special_tokens(special)
            tk.add_tokens(added)

        def token(key: str) -> str | None:
            i = meta.get(f"tokenizer.ggml.{key}")
            if i is None:
                return None
            if not 0 <= int(i) < len(tokens):
                raise ValueError(f"{path}: tokenizer.ggml.{key}={i} is outside the {len(tokens)}-token vocabulary")
            return tokens[int(i)]

        eos = token("eos_token_id")
        if eos is None:
            raise ValueError(f"{path}: no tokenizer.ggml.eos_token_id in the metadata")
        add_bos = meta.get("tokenizer.ggml.add_bos_token", pre in _ADD_BOS_DEFAULT)
        extra = [meta[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in meta]
        return cls(tk, name=path.name, eos_token=eos, bos_token=token("bos_token_id"),
                   pad_token=token("padding_token_id"), add_bos=bool(add_bos),
                   chat_template=meta.get("tokenizer.chat_template"), extra_stop_ids=extra, vocab_size=len(tokens))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any, where: str) -> str | None:
    """A special token given as a string or as an AddedToken dict (``{"content": ...}``)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{where}: expected a string or an AddedToken object, got {value!r}")


def _chat_template(folder: Path, config: dict) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(f"{folder / 'tokenizer_config.json'}: chat_template lists {sorted(map(str, named))} "
                             "but no 'default'")
        return named["default"]
    raise ValueError(f"{folder / 'tokenizer_config.json'}: chat_template must be a string or a list of "
                     f"{{name, template}} objects, got {type(template).__name__}")


# Pre-tokenizer regexes, exactly as llama.cpp splits text for each `tokenizer.ggml.pre` value:
# ggml-org/llama.cpp, src/llama-vocab.cpp, `llm_tokenizer_bpe` constructor (commit 00ad355e), with the
# name -> LLAMA_VOCAB_PRE_TYPE_* mapping from `llama_vocab::impl::load`. llama.cpp applies the regexes
# of a type one after another, each to the pieces left by the previous one, keeping unmatched text as
# pieces too: `tokenizers`' Split(behavior="isolated") in a Sequence does the same.
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# LLAMA_VOCAB_PRE_TYPE_LLAMA3 ("adapted" form of the tokenizer.json regex: (?i:...) spelled out)
_LLAMA3_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# LLAMA_VOCAB_PRE_TYPE_QWEN2: as llama3 but single digits
_QWEN2_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    # LLAMA_VOCAB_PRE_TYPE_SMOLLM (also STARCODER, REFACT): individual digits, then the GPT-2 regex
    "smollm": (r"\p{N}", _GPT2_RE),
    "starcoder": (r"\p{N}", _GPT2_RE),
    "refact": (r"\p{N}", _GPT2_RE),
    # LLAMA_VOCAB_PRE_TYPE_GPT2 (also MPT, OLMO)
    "gpt-2": (_GPT2_RE,),
    "phi-2": (_GPT2_RE,),
    "mpt": (_GPT2_RE,),
    "olmo": (_GPT2_RE,),
    # LLAMA_VOCAB_PRE_TYPE_LLAMA3 (also DBRX, SMAUG)
    "llama3": (_LLAMA3_RE,),
    "llama-v3": (_LLAMA3_RE,),
    "llama-bpe": (_LLAMA3_RE,),
    "falcon3": (_LLAMA3_RE,),
    "dbrx": (_LLAMA3_RE,),
    "smaug-bpe": (_LLAMA3_RE,),
    # LLAMA_VOCAB_PRE_TYPE_QWEN2 (also STABLELM2)
    "qwen2": (_QWEN2_RE,),
    "deepseek-r1-qwen": (_QWEN2_RE,),
    "megrez": (_QWEN2_RE,),
    "stablelm2": (_QWEN2_RE,),
    # LLAMA_VOCAB_PRE_TYPE_DEFAULT: llama.cpp's fallback (also used when the key is missing)
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"),
}
# llama.cpp sets ignore_merges (a whole pre-token in the vocabulary is taken as is) and a default
# add_bos=true for the LLAMA3 pre-type; `tokenizer.ggml.add_bos_token` overrides the latter.
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3"}
_ADD_BOS_DEFAULT = _IGNORE_MERGES


def gguf_pre_tokenizer(pre: str):
    """The `tokenizers` pre-tokenizer for a GGUF ``tokenizer.ggml.pre`` value: llama.cpp's regex
    splits, then the byte-level mapping (no prefix space)."""
    from tokenizers import Regex, pre_tokenizers

    if pre not in _PRE_SPLITS:
        raise ValueError(f"tokenizer.ggml.pre={pre!r} is not supported; expected one of {sorted(_PRE_SPLITS)}")
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE_SPLITS[pre]]
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def read_gguf_metadata(path: str | os.PathLike, prefix: str = "") -> dict[str, Any]:
    """The metadata of a GGUF file whose keys start with ``prefix`` (plus ``general.architecture``),
    read by `pjax.models.gguf.read_metadata`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return {k: v for k, v in read_metadata(path).items() if k.startswith(prefix) or k == "general.architecture"}


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer from ``path``: a SentencePiece ``.model`` file, a ``tokenizer.json`` file or a
    directory holding one (Hugging Face), or a ``.gguf`` file (its embedded vocabulary)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path not found: {p}")
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return HFTokenizer.from_json(p)
        raise ValueError(f"{p}: directory without a tokenizer.json (expected a .model, tokenizer.json or .gguf)")
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    if p.suffix == ".gguf":
        meta = read_gguf_metadata(p, prefix="tokenizer.")
        if meta.get("tokenizer.ggml.model") == "llama":
            return SentencePieceTokenizer.from_gguf(p, meta)
        return HFTokenizer.from_gguf(p, meta)
    if p.suffix == ".json":
        return HFTokenizer.from_json(p)
    raise ValueError(f"{p}: unknown tokenizer file type {p.suffix!r} (expected a SentencePiece .model, "
                     "a tokenizer.json or directory holding one, or a .gguf file)")
