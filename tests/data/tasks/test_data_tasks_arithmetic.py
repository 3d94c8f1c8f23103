import os
import re
from pathlib import Path

import numpy as np
import pytest

from pjax.data.tasks import arithmetic
from pjax.data.tasks.arithmetic import ArithmeticConfig, answer, build_task, parse_completion, reward
from pjax.data.chat import encode_example

_PROMPT_RE = re.compile(r"q : (\d+(?: [-+*] \d+)*) =")


def _small(cache, seed=0, **kw):
    kw = {"num_sft": 300, "num_heldout_prompts": 60, **kw}
    return ArithmeticConfig(seed=seed, cache_dir=cache, **kw)


def _reference(prompt: str) -> int:
    """Independent value: Python's own arithmetic on the regex-validated expression."""
    m = _PROMPT_RE.fullmatch(prompt)
    assert m is not None, prompt
    return eval(m.group(1), {"__builtins__": {}}, {})  # only digits, spaces and + - * (checked above)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("arith_cache"))


@pytest.fixture(scope="module")
def task(cache):
    return build_task(_small(cache, operations="+-*", max_terms=4))


def test_deterministic_by_seed(cache):
    a, b, c = (build_task(_small(cache, seed=s, answer_noise=0.2)) for s in (1, 1, 2))
    assert (a.sft, a.sft_noisy, a.heldout_prompts) == (b.sft, b.sft_noisy, b.heldout_prompts)
    assert a.sft != c.sft and a.heldout_prompts != c.heldout_prompts
    # the prompts do not depend on the noise level, the held-out split not on num_sft
    d = build_task(_small(cache, seed=1, num_sft=100))
    assert [p for p, _ in d.sft] == [p for p, _ in a.sft[:100]] and d.heldout_prompts == a.heldout_prompts


def test_prompts_in_range_and_disjoint(task):
    cfg = task.config
    assert len(task.sft) == cfg.num_sft and len(task.heldout_prompts) == cfg.num_heldout_prompts
    assert len(set(task.heldout_prompts)) == len(task.heldout_prompts)
    assert not {p for p, _ in task.sft} & set(task.heldout_prompts)
    terms = set()
    for prompt in [p for p, _ in task.sft] + task.heldout_prompts:
        parts = _PROMPT_RE.fullmatch(prompt).group(1).split(" ")
        assert all(0 <= int(x) <= cfg.max_operand for x in parts[::2])
        assert set(parts[1::2]) <= {"+", "-", "*"}
        terms.add(len(parts[::2]))
    assert terms == {2, 3, 4}
    assert task.pairs == [] and task.heldout_pairs == [] and task.gold_reward is None


def test_answer_matches_python(task):
    for prompt, completion in task.sft:
        assert answer(prompt) == _reference(prompt)
        assert completion == f" {_reference(prompt)}"  # no noise: all SFT answers are correct
    for prompt in task.heldout_prompts:
        assert task.answer(prompt) == _reference(prompt)
    cases = {"q : 7 + 12 - 3 =": 16, "q : 2 + 3 * 4 =": 14, "q : 10 - 2 - 3 =": 5, "q : 3 - 12 =": -9,
             "q : 2 * 3 - 4 * 5 =": -14, "q : 5 =": 5, "<|user|>q : 1 + 1 = <|assistant|>": 2}
    assert {p: answer(p) for p in cases} == cases
    for bad in ("q : =", "7 + 12 =", "q : 7 / 2 =", ""):
        with pytest.raises(ValueError, match="no arithmetic expression"):
            answer(bad)


def test_reward():
    p = "q : 7 + 12 - 3 ="
    assert reward(p, " 16") == reward(p, "16") == reward(p, "  16 \n") == 1.0
    assert reward(p, " 16 because 7 + 12 = 19") == reward(p, " the answer is 16.") == 1.0
    assert reward(p, " 15") == reward(p, " 160") == reward(p, " -16") == reward(p, " 1 6") == 0.0
    assert reward(p, "") == reward(p, "   ") == reward(p, " sixteen") == 0.0
    assert reward(p, " 3 then 16") == 0.0  # only the first integer counts
    neg = "q : 3 - 12 ="
    assert reward(neg, " -9") == 1.0 and reward(neg, " 9") == reward(neg, " - 9") == 0.0
    assert reward("q : 0 - 0 =", " -0") == 1.0
    assert reward(p, " " + "9" * 5000) == 0.0 and parse_completion("x") is None
    assert arithmetic.rewards([p, neg], [" 16", " 9"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="no arithmetic expression"):
        reward("what is 7 + 12?", " 19")


def test_answer_noise_fraction(cache):
    t = build_task(_small(cache, num_sft=4000, answer_noise=0.25))
    noisy = np.array(t.sft_noisy)
    wrong = np.array([int(c) != _reference(p) for p, c in t.sft])
    assert np.array_equal(noisy, wrong)
    assert abs(wrong.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)
    assert all(abs(int(c) - _reference(p)) <= 3 for p, c in t.sft)
    assert np.mean([reward(p, c) for p, c in t.sft]) == pytest.approx(1 - wrong.mean())


def test_tokenizer_round_trip_and_digits(task):
    tok = task.tokenizer
    assert arithmetic.MIN_VOCAB_SIZE <= tok.vocab_size <= task.config.sp_vocab_size
    texts = [p + c for p, c in task.sft] + task.heldout_prompts + ["q : 0 * 999 = 0"]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    for prompt, completion in task.sft[:50]:
        # a completion decoded alone loses its leading space (SentencePiece's dummy prefix): still rewarded
        _, ids, _ = encode_example(tok, prompt, completion)
        assert tok.decode(ids) == completion[1:] and reward(prompt, tok.decode(ids)) == 1.0
    for prompt, completion in task.sft:
        _, _, consistent = encode_example(tok, prompt, completion)
        assert consistent  # the prompt's tokens are a prefix of prompt + completion's
    ids = {}
    for n in range(-1000, 1001):
        key = tuple(tok.encode(f" {n}"))
        assert key not in ids, (n, ids.get(key))
        ids[key] = n
        for i in key:  # digits are split: no piece holds two digits
            assert sum(ch.isdigit() for ch in tok.decode([i])) <= 1
    unk = tok._sp.unk_id()
    assert unk not in {i for t in texts for i in tok.encode(t)}  # every character has a piece


def test_tokenizer_cached_atomically(cache):
    cfg = _small(cache)
    build_task(cfg)
    path = arithmetic.tokenizer_cache_path(cfg)
    assert path.is_file() and path.parent == Path(cache)
    assert not [f for f in os.listdir(cache) if ".tmp-" in f]
    mtime = path.stat().st_mtime_ns
    build_task(cfg)
    assert path.stat().st_mtime_ns == mtime  # loaded, not retrained
    assert arithmetic.tokenizer_cache_path(_small(cache, sp_vocab_size=32)) != path


@pytest.mark.parametrize("kw, field", [
    ({"seed": -1}, "seed"), ({"num_sft": -1}, "num_sft"), ({"max_operand": 0}, "max_operand"),
    ({"operations": ()}, "operations"), ({"operations": ("+", "/")}, "operations"),
    ({"operations": "++"}, "operations"), ({"min_terms": 0}, "min_terms"),
    ({"min_terms": 3, "max_terms": 2}, "max_terms"), ({"max_terms": 99}, "max_terms"),
    ({"answer_noise": 1.5}, "answer_noise"), ({"sp_vocab_size": 8}, "sp_vocab_size"),
    ({"max_operand": 2, "num_heldout_prompts": 500}, "num_heldout_prompts"),
])
def test_config_validation_names_field(kw, field, cache):
    with pytest.raises(ValueError, match=rf"ArithmeticConfig\.{field} "):
        ArithmeticConfig(cache_dir=cache, **kw)


def test_stream_numbers_fixed():
    # the stream numbers fix the generated data: new streams are appended, never renumbered
    assert arithmetic._rng.ids == {"sft": 0, "heldout_prompts": 1, "noise": 2}


def test_config_defaults_and_operations_string(monkeypatch):
    monkeypatch.setenv("PJAX_CACHE", "/some/where")
    cfg = ArithmeticConfig(operations="+-*")
    assert cfg.operations == ("+", "-", "*") and cfg.cache_dir == "/some/where/synthetic"
    # 21^2 * 3 + 21^3 * 9 distinct prompts
    assert cfg.num_prompts == 21**2 * 3 + 21**3 * 9
