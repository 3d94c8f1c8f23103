import os

import numpy as np
import pytest

from pjax.data.tasks import synthetic
from pjax.data.tasks.synthetic import SyntheticConfig, build_task, gold_reward


def _small(seed=0, **kw):
    return SyntheticConfig(seed=seed, num_sft=50, num_pairs=50, num_heldout_prompts=20, num_heldout_pairs=20, **kw)


def _data(task):
    return task.sft, task.pairs, task.heldout_prompts, task.heldout_pairs


def test_deterministic_by_seed(sp_cache):
    a = build_task(_small(seed=1, cache_dir=sp_cache))
    b = build_task(_small(seed=1, cache_dir=sp_cache))
    c = build_task(_small(seed=2, cache_dir=sp_cache))
    assert _data(a) == _data(b)
    for x, y in zip(_data(a), _data(c)):
        assert x != y


def test_gold_reward_ordering():
    pos = "truly wonderful and the acting was brilliant"
    neg = "truly terrible and the acting was dreadful"
    neutral = "long and the acting was typical"
    assert gold_reward(pos) > gold_reward(neutral) > gold_reward(neg)
    assert gold_reward("") == gold_reward("   ") == -3.0
    assert gold_reward("") < gold_reward(neg)
    assert gold_reward("good good good good") <= gold_reward("good")  # repeats do not help
    assert -3.0 <= gold_reward(" ".join(synthetic.POSITIVE)) <= 3.0


def test_shapes_lengths_and_base_reward(task):
    cfg = SyntheticConfig()
    assert len(task.sft) == cfg.num_sft and len(task.pairs) == cfg.num_pairs
    assert len(task.heldout_prompts) == cfg.num_heldout_prompts
    assert len(task.heldout_pairs) == cfg.num_heldout_pairs
    assert all(5 <= len(p.split()) <= 10 for p, _ in task.sft)
    assert all(6 <= len(c.split()) <= 14 for _, c in task.sft)
    rewards = np.array([gold_reward(c) for _, c in task.sft])
    assert abs(rewards.mean()) < 0.3 and 0.5 < rewards.std() < 2.0


def test_heldout_disjoint_from_training(task):
    train = {p for p, _ in task.sft} | {p for p, _, _ in task.pairs}
    assert not train & set(task.heldout_prompts)
    assert not train & {p for p, _, _ in task.heldout_pairs}
    assert len(set(task.heldout_prompts)) == len(task.heldout_prompts)


def _frac_chosen_better(pairs):
    return np.mean([gold_reward(c) > gold_reward(r) for _, c, r in pairs])


def test_label_noise_moves_agreement_towards_half(task, sp_cache):
    clean = _frac_chosen_better(task.pairs)
    noisy = _frac_chosen_better(build_task(SyntheticConfig(seed=0, label_noise=0.4, cache_dir=sp_cache)).pairs)
    assert clean > 0.6
    assert abs(noisy - 0.5) < abs(clean - 0.5) and abs(noisy - 0.5) < 0.1


def test_tokenizer_cache_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("PJAX_CACHE", str(tmp_path))
    cfg = _small()
    assert cfg.cache_dir == str(tmp_path / "synthetic")
    build_task(cfg)
    path = synthetic.tokenizer_cache_path(cfg)
    mtime = os.stat(path).st_mtime_ns
    assert [f.name for f in path.parent.iterdir()] == [path.name]  # no temp files left

    def fail(*args, **kwargs):
        raise AssertionError("tokenizer retrained despite cache")

    from pjax.data import tokenizer

    monkeypatch.setattr(tokenizer, "train_sentencepiece", fail)
    task = build_task(_small(seed=3))
    assert task.tokenizer.model_path == str(path) and os.stat(path).st_mtime_ns == mtime


@pytest.mark.parametrize("kw, field", [
    ({"label_noise": 1.5}, "label_noise"), ({"bt_temperature": 0.0}, "bt_temperature"), ({"seed": -1}, "seed"),
    ({"num_sft": -1}, "num_sft"), ({"num_pairs": -1}, "num_pairs"), ({"num_heldout_pairs": -1}, "num_heldout_pairs"),
])
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field} "):
        SyntheticConfig(**kw)


_LEXICON_WORDS = {  # the task's lexicon, written out again: score -> words
    1.0: "wonderful brilliant superb excellent amazing fantastic masterful delightful stunning outstanding beautiful "
         "perfect moving gripping charming joyful magnificent fabulous splendid terrific",
    0.5: "good nice fine pleasant solid decent enjoyable fun clever warm sweet lovely bright engaging funny fresh smart "
         "inspired gentle neat",
    -1.0: "terrible awful horrible dreadful atrocious pathetic dismal abysmal disastrous unbearable painful miserable "
          "hideous wretched appalling lousy rotten worthless insulting tedious",
    -0.5: "bad dull weak bland slow messy silly flat stale clumsy shallow odd tired sloppy lazy cheap noisy vague forced "
          "predictable",
}


def _reference_gold(text):
    """The gold reward restated: 3 * (sum of lexicon scores of distinct words) / sqrt(#words), clipped to [-3, 3]."""
    score = {w: s for s, words in _LEXICON_WORDS.items() for w in words.split()}
    words = text.lower().split()
    if not words:
        return -3.0
    return max(-3.0, min(3.0, 3.0 * sum(score.get(w, 0.0) for w in set(words)) / len(words) ** 0.5))


def test_score_records_carry_the_gold_reward():
    cfg = _small(seed=4)
    rows = synthetic.preference_records(cfg, "SCORE")
    assert len(rows) == cfg.num_pairs and all(set(r) == {"prompt", "completion", "score"} for r in rows)
    assert all(5 <= len(r["prompt"].split()) <= 10 and 6 <= len(r["completion"].split()) <= 14 for r in rows)
    for r in rows:
        assert r["score"] == pytest.approx(_reference_gold(r["completion"]), abs=1e-12)
    # known words: " superb acting but dull" = 3 * (1 - 0.5) / sqrt(4) = 0.75
    assert _reference_gold(" superb acting but dull") == pytest.approx(0.75)
    scores = np.array([r["score"] for r in rows])
    assert scores.std() > 0.3  # spread, not constant
    assert synthetic.preference_records(cfg, "SCORE") == rows  # deterministic
    other = synthetic.preference_records(_small(seed=5), "SCORE")
    assert [r["prompt"] for r in other] != [r["prompt"] for r in rows]


def test_score_stream_is_its_own():
    cfg = _small(seed=4)
    scored = synthetic.preference_records(cfg, "SCORE")
    unp = synthetic.preference_records(cfg, "UNP")
    assert [r["completion"] for r in scored] != [r["completion"] for r in unp]
    # the stream numbers fix the generated data: new streams are appended, never renumbered
    assert synthetic._rng.ids == {"sft": 0, "pairs": 1, "heldout_prompts": 2, "heldout_pairs": 3, "list": 4,
                                  "unpaired": 5, "step": 6, "scored": 7}


def test_pair_records_are_the_task_pairs(sp_cache):
    cfg = _small(seed=6, cache_dir=sp_cache)
    pairs = synthetic.preference_records(cfg, "PAIR")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in pairs] == build_task(cfg).pairs
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in pairs)  # no margin on synthetic pairs
