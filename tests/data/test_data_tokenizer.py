from pathlib import Path

import pytest

from pjax.data import SentencePieceTokenizer, train_sentencepiece

LLAMA2_MODEL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers" / "llama2.model"


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
        text = f"{prompt} {completion}"
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("the movie was good", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode([tok.pad_id, *ids, tok.pad_id, tok.vocab_size + 5]) == "the movie was good"


def test_llama2_model():
    if not LLAMA2_MODEL.is_file():
        pytest.skip(f"Llama 2 tokenizer not found at {LLAMA2_MODEL}")
    tok = SentencePieceTokenizer(str(LLAMA2_MODEL))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    assert tok.pad_id == 0  # no pad piece in Llama 2: fall back to 0 (always masked)
    text = "Hello world! The film was wonderful, 10/10."
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text
