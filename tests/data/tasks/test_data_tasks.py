"""The built-in tasks from a run config (`pjax.data.tasks`) and their shared scaffolding (`pjax.data.tasks.base`)."""

import re
from pathlib import Path

import numpy as np
import pytest

from configs import base as base_config
from pjax.data import tasks
from pjax.data.tasks import arithmetic, base, synthetic


def _config(cache_dir, task="synthetic"):
    c = base_config.get_config()
    c.data.task = task
    c.data.cache_dir = str(cache_dir)
    c.data.seed, c.data.num_sft, c.data.num_pairs = 3, 40, 30
    c.data.num_heldout_prompts, c.data.num_heldout_pairs = 12, 10
    return c


def test_configs_carry_the_data_fields(tmp_path):
    c = _config(tmp_path)
    c.data.label_noise, c.data.bt_temperature, c.data.sp_vocab_size = 0.2, 0.5, 256
    assert tasks.synthetic_config(c) == synthetic.SyntheticConfig(
        seed=3, num_sft=40, num_pairs=30, num_heldout_prompts=12, num_heldout_pairs=10, label_noise=0.2,
        bt_temperature=0.5, sp_vocab_size=256, cache_dir=str(tmp_path))
    c.data.arithmetic.update(max_operand=9, operations="+*", min_terms=1, max_terms=4, answer_noise=0.1,
                             sp_vocab_size=32)
    assert tasks.arithmetic_config(c) == arithmetic.ArithmeticConfig(
        seed=3, num_sft=40, num_heldout_prompts=12, max_operand=9, operations=("+", "*"), min_terms=1, max_terms=4,
        answer_noise=0.1, sp_vocab_size=32, cache_dir=str(tmp_path))


def test_build_task_from_the_run_config(tmp_path):
    c = _config(tmp_path)
    task = tasks.build_task(c)
    assert isinstance(task, synthetic.SyntheticTask)
    direct = synthetic.build_task(tasks.synthetic_config(c))
    assert (task.sft, task.pairs, task.heldout_pairs) == (direct.sft, direct.pairs, direct.heldout_pairs)
    assert (len(task.sft), len(task.pairs), len(task.heldout_prompts), len(task.heldout_pairs)) == (40, 30, 12, 10)
    assert Path(task.tokenizer.model_path).parent == tmp_path

    c.data.task = "arithmetic"
    task = tasks.build_task(c)
    assert isinstance(task, arithmetic.ArithmeticTask) and task.config == tasks.arithmetic_config(c)
    assert (len(task.sft), len(task.heldout_prompts)) == (40, 12) and task.gold_reward is None
    assert Path(task.tokenizer.model_path).parent == tmp_path
    assert tasks.TASKS == ("synthetic", "arithmetic")

    c.data.task = "sentiment"
    with pytest.raises(ValueError, match=r"data\.task='sentiment'.*'synthetic', 'arithmetic'"):
        tasks.build_task(c)


@pytest.mark.parametrize("key, value, field", [
    ("max_operand", 0, "max_operand"), ("operations", "+/", "operations"), ("max_terms", 99, "max_terms"),
    ("answer_noise", 2.0, "answer_noise"), ("sp_vocab_size", 8, "sp_vocab_size"),
])
def test_invalid_arithmetic_values_name_the_key(tmp_path, key, value, field):
    c = _config(tmp_path, "arithmetic")
    c.data.arithmetic[key] = value
    message = rf"^data\.arithmetic / data\.\*: ArithmeticConfig\.{field} .*, got {re.escape(repr(value))}$"
    with pytest.raises(ValueError, match=message):
        tasks.arithmetic_config(c)
    with pytest.raises(ValueError, match=rf"ArithmeticConfig\.{field} "):
        tasks.build_task(c)


def test_invalid_synthetic_values_name_the_key(tmp_path):
    c = _config(tmp_path)
    c.data.label_noise = 1.5
    with pytest.raises(ValueError, match=r"^data\.\*: SyntheticConfig\.label_noise must be in \[0, 1\], got 1\.5"):
        tasks.synthetic_config(c)
    c.data.label_noise, c.data.num_pairs = 0.0, -1
    with pytest.raises(ValueError, match=r"SyntheticConfig\.num_pairs must be >= 0"):
        tasks.build_task(c)


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PJAX_CACHE", str(tmp_path / "env"))
    c = base_config.get_config()
    assert c.data.cache_dir == ""
    assert tasks.cache_dir(c) == tmp_path / "env" / "synthetic" == Path(tasks.synthetic_config(c).cache_dir)
    assert tasks.cache_dir(c) == Path(tasks.arithmetic_config(c).cache_dir)
    c.data.cache_dir = "~/somewhere"
    assert tasks.cache_dir(c) == Path.home() / "somewhere" == Path(tasks.synthetic_config(c).cache_dir).expanduser()
    monkeypatch.delenv("PJAX_CACHE")
    assert base.default_cache_dir() == str(Path.home() / ".cache" / "pjax" / "synthetic")


def test_task_configs_are_keyword_only():
    with pytest.raises(TypeError):
        synthetic.SyntheticConfig(1)
    with pytest.raises(TypeError):
        arithmetic.ArithmeticConfig(1)
    assert synthetic.SyntheticConfig(cache_dir="").sp_vocab_size == 512
    assert arithmetic.ArithmeticConfig(cache_dir="").sp_vocab_size == 64


def test_streams_are_numbered_in_order():
    rng = base.Streams("a", "b")
    assert rng.ids == {"a": 0, "b": 1}
    assert rng(5, "b").random() == np.random.default_rng([5, 1]).random()
    with pytest.raises(KeyError):
        rng(5, "c")


def test_fresh_and_heldout_prompts():
    draws = iter("aabacbd")
    assert base.fresh(lambda: next(draws), {"a"}) == "b"  # two redraws
    assert base.fresh(lambda: next(draws), {"a", "c"}, max_tries=1) == "c"  # gave up after one redraw
    assert base.heldout_prompts(iter("abacbd").__next__, 3, avoid={"b"}) == ["a", "c", "d"]
    assert base.heldout_prompts(iter("aaaa").__next__, 2, max_tries=1) == ["a", "a"]  # ran out


def test_tokenizer_path_keys():
    p = base.tokenizer_path("~/c", "x-", "v1", 64, {"k": 1}, [2])
    assert p.parent == Path.home() / "c" and p.name.startswith("x-sp64-") and p.suffix == ".model"
    assert p == base.tokenizer_path("~/c", "x-", "v1", 64, {"k": 1}, [2])
    others = [("~/c", "x-", "v2", 64, {"k": 1}, [2]), ("~/c", "x-", "v1", 32, {"k": 1}, [2]),
              ("~/c", "x-", "v1", 64, {"k": 2}, [2])]
    assert len({p.name, *(base.tokenizer_path(*o).name for o in others)}) == 4
