import numpy as np
import pytest

from pjax.data import encode_pairs, encode_prompts, encode_sft


def test_encode_sft_layout_and_masks(task):
    tok = task.tokenizer
    examples = task.sft[:64]
    out = encode_sft(tok, examples, max_len=48)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        k: ((64, 48), np.int32) for k in ("tokens", "mask", "completion_mask")
    }
    for row, (prompt, completion) in enumerate(examples):
        toks, mask, cmask = out["tokens"][row], out["mask"][row], out["completion_mask"][row]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (toks[n:] == tok.pad_id).all()
        assert toks[0] == tok.bos_id and toks[n - 1] == tok.eos_id
        assert not (cmask & (1 - mask)).any() and cmask[n - 1] == 1
        assert tok.decode(toks[cmask == 1]) == completion.strip()  # completions carry a leading space
        assert tok.decode(toks[(mask == 1) & (cmask == 0)]) == prompt
        assert tok.decode(toks[mask == 1]) == prompt + completion


def test_truncation_cuts_prompt_from_left(task):
    tok = task.tokenizer
    prompt, completion = task.sft[0]
    p, c = tok.encode(prompt), tok.encode(completion)
    max_len = len(c) + 2 + 3  # room for 3 prompt tokens
    out = encode_sft(tok, [(prompt, completion)], max_len)
    toks, cmask = out["tokens"][0], out["completion_mask"][0]
    assert out["mask"][0].all()
    assert list(toks) == [tok.bos_id, *p[-3:], *c, tok.eos_id]
    assert tok.decode(toks[cmask == 1]) == completion.strip()


def test_truncation_cuts_completion_end_when_needed(task):
    tok = task.tokenizer
    prompt, completion = task.sft[0]
    p, c = tok.encode(prompt), tok.encode(completion)
    out = encode_sft(tok, [(prompt, completion)], max_len=6)
    assert list(out["tokens"][0]) == [tok.bos_id, p[-1], *c[:4]]
    assert list(out["completion_mask"][0]) == [0, 0, 1, 1, 1, 1]


def test_encode_pairs_share_prompt(task):
    tok = task.tokenizer
    pairs = task.pairs[:32]
    out = encode_pairs(tok, pairs, max_len=20)  # forces prompt truncation on some rows
    assert all(v.shape == (32, 2, 20) and v.dtype == np.int32 for v in out.values())
    for i, (_, chosen, rejected) in enumerate(pairs):
        prompt_part = [out["tokens"][i, k][(out["mask"][i, k] == 1) & (out["completion_mask"][i, k] == 0)] for k in (0, 1)]
        np.testing.assert_array_equal(prompt_part[0], prompt_part[1])
        for k, text in enumerate((chosen, rejected)):
            ids = tok.encode(text)
            if len(ids) + 3 <= 20:
                assert tok.decode(out["tokens"][i, k][out["completion_mask"][i, k] == 1]) == text.strip()


def test_empty_completion_names_row(task):
    with pytest.raises(ValueError, match="row 1"):
        encode_sft(task.tokenizer, [("a prompt", "good"), ("a prompt", "  ")], 16)
    with pytest.raises(ValueError, match="row 0"):
        encode_pairs(task.tokenizer, [("a prompt", "good", "")], 16)


def test_encode_prompts_left_padded(task):
    tok = task.tokenizer
    prompts = ["review : the movie was", task.heldout_prompts[0]]
    out = encode_prompts(tok, prompts, max_prompt_len=12)
    for row, prompt in enumerate(prompts):
        ids = [tok.bos_id, *tok.encode(prompt)[-11:]]
        assert list(out["tokens"][row, 12 - len(ids) :]) == ids
        assert (out["tokens"][row, : 12 - len(ids)] == tok.pad_id).all()
        assert list(out["mask"][row]) == [0] * (12 - len(ids)) + [1] * len(ids)
    short = encode_prompts(tok, ["review : the old movie about the ship was"], max_prompt_len=4)
    assert list(short["tokens"][0]) == [tok.bos_id, *tok.encode("review : the old movie about the ship was")[-3:]]


def test_a_conversation_among_plain_rows_names_the_row(task):
    """The synthetic task's tokenizer has no chat template: a conversational row (row 1 after a plain one)
    is named with what it needs, not just the tokenizer."""
    conversation = ([{"role": "user", "content": "a prompt"}], [{"role": "assistant", "content": "good"}])
    assert task.tokenizer.chat_template is None
    with pytest.raises(ValueError, match=r"row 1 is a conversation \(a list of messages\) and needs a chat "
                                         r"template: tokenizer .* has no chat template.*\(data.chat_template\)"):
        encode_sft(task.tokenizer, [("a prompt", "good"), conversation], 16)
