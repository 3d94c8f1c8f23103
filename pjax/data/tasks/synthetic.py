"""Synthetic review-sentiment preference task with a known gold reward.

In the spirit of the DPO paper's IMDb experiment, but fully self-contained:
prompts are neutral review openings, a "base" generator writes completions
that mix positive, negative and neutral words, and :func:`gold_reward` scores a
completion from a fixed lexicon. Everything is generated deterministically
from ``SyntheticConfig.seed``; the SentencePiece model is seed-independent and
cached on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pjax.data.tasks import base
from pjax.data.tokenizer import SentencePieceTokenizer, cached_sentencepiece

# Bump whenever the lexicon, templates or generator change: it keys the tokenizer cache.
GENERATOR_VERSION = "synthetic-reviews-v1"

POSITIVE: dict[str, float] = {
    **dict.fromkeys(
        "wonderful brilliant superb excellent amazing fantastic masterful delightful stunning "
        "outstanding beautiful perfect moving gripping charming joyful magnificent fabulous "
        "splendid terrific".split(),
        1.0,
    ),
    **dict.fromkeys(
        "good nice fine pleasant solid decent enjoyable fun clever warm sweet lovely bright "
        "engaging funny fresh smart inspired gentle neat".split(),
        0.5,
    ),
}
NEGATIVE: dict[str, float] = {
    **dict.fromkeys(
        "terrible awful horrible dreadful atrocious pathetic dismal abysmal disastrous "
        "unbearable painful miserable hideous wretched appalling lousy rotten worthless "
        "insulting tedious".split(),
        -1.0,
    ),
    **dict.fromkeys(
        "bad dull weak bland slow messy silly flat stale clumsy shallow odd tired sloppy lazy "
        "cheap noisy vague forced predictable".split(),
        -0.5,
    ),
}
LEXICON: dict[str, float] = {**POSITIVE, **NEGATIVE}

NEUTRAL_ADJ = "long short modern simple serious quiet familiar typical traditional different".split()
SETTING_ADJ = "old new big small dark plain local early late distant tall young lonely hidden northern".split()
ADVERBS = "very quite rather really somewhat truly fairly so".split()
ASPECTS = (
    "acting plot music ending cast script pace direction dialogue camera soundtrack "
    "humor setting premise finale lighting editing story".split()
)
SUBJECTS = "movie film show play book series documentary musical novel episode".split()
NOUNS = (
    "ship city war family dog robot king detective island river school village train doctor "
    "singer team garden storm castle farmer pilot painter forest mountain teacher soldier queen "
    "child house desert".split()
)
TIMES = "week night year month summer winter friday sunday".split()

PROMPT_TEMPLATES = [
    "review : the {subject} about the {setting} {noun} was",
    "review : we watched the {subject} last {time} it was",
    "review : this {subject} about a {noun} is",
    "review : the {setting} {subject} was",
    "review : we saw the {subject} and it felt",
    "review : the {subject} set in the {setting} {noun} seemed",
    "review : overall the {noun} in this {subject} was",
    "review : this {setting} {subject} about the {noun} is",
]
# Clauses continuing a completion; "{adj}" is a sentiment slot, "{adv}" an optional adverb.
CLAUSES = [
    "and the {aspect} was {adv} {adj}",
    "but the {aspect} felt {adj}",
    "with {adj} {aspect}",
    "while the {aspect} seemed {adv} {adj}",
    "and i thought the {aspect} was {adj}",
    "in the end",
    "for most of the time",
    "to be honest",
    "overall it was {adj}",
]

MIN_COMPLETION_WORDS, MAX_COMPLETION_WORDS = 6, 14
REWARD_SCALE, REWARD_CLIP = 3.0, 3.0
_P_NEUTRAL_ADJ = 0.25
_TOKENIZER_SEED, _TOKENIZER_LINES = 12345, 3000
_MAX_TRIES = 100  # redraws of a held-out prompt that is a training prompt
_rng = base.Streams("sft", "pairs", "heldout_prompts", "heldout_pairs", "list", "unpaired", "step", "scored")


def gold_reward(completion: str) -> float:
    """Gold reward of a completion (a function of its text only).

    ``r(y) = clip(3 * sum_{w in distinct(words(y))} s(w) / sqrt(len(words(y))), -3, 3)``
    where ``words`` is the lower-cased whitespace split, ``s`` is the lexicon
    score (+1 / +0.5 for positive, -0.5 / -1 for negative words, 0 otherwise)
    and each distinct word counts once, so repeating a word does not help.
    An empty completion gets -3 (the minimum). Base completions score about
    0 +- 1.1; a short run of distinct strong positive words reaches the cap.
    """
    words = completion.lower().split()
    if not words:
        return -REWARD_CLIP
    total = sum(LEXICON.get(w, 0.0) for w in set(words))
    return float(np.clip(REWARD_SCALE * total / math.sqrt(len(words)), -REWARD_CLIP, REWARD_CLIP))


@dataclass(kw_only=True)
class SyntheticConfig(base.TaskConfig):
    """Task size and noise, besides `base.TaskConfig`'s seed, SFT and held-out prompt counts,
    ``sp_vocab_size`` (512) and ``cache_dir`` (``$PJAX_CACHE/synthetic``, ``PJAX_CACHE`` defaulting
    to ``~/.cache/pjax``)."""

    num_pairs: int = 4000
    num_heldout_pairs: int = 256
    label_noise: float = 0.0
    bt_temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_nonnegative("num_pairs", "num_heldout_pairs")
        self._require("label_noise", 0.0 <= self.label_noise <= 1.0, "must be in [0, 1]")
        self._require("bt_temperature", self.bt_temperature > 0, "must be > 0")


@dataclass
class SyntheticTask:
    """Generated data: (prompt, completion) SFT examples and (prompt, chosen, rejected) pairs."""

    sft: list[tuple[str, str]]
    pairs: list[tuple[str, str, str]]
    heldout_prompts: list[str]
    heldout_pairs: list[tuple[str, str, str]]
    tokenizer: SentencePieceTokenizer
    gold_reward: Callable[[str], float]


def _choice(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def sample_prompt(rng: np.random.Generator) -> str:
    """A neutral review opening (5-10 words) ending in a copula."""
    template = _choice(rng, PROMPT_TEMPLATES)
    return template.format(
        subject=_choice(rng, SUBJECTS),
        setting=_choice(rng, SETTING_ADJ),
        noun=_choice(rng, NOUNS),
        time=_choice(rng, TIMES),
    )


def sample_completion(rng: np.random.Generator) -> str:
    """A base-model completion of 6-14 words with mixed sentiment, with a leading space.

    Each completion draws its own positivity ``p ~ U(0, 1)``; each
    adjective slot is neutral with probability 0.25, else positive with
    probability ``p`` (strong or mild equally likely) and negative otherwise.
    """
    p_pos = rng.random()
    positive, negative = list(POSITIVE), list(NEGATIVE)

    def adj() -> str:
        if rng.random() < _P_NEUTRAL_ADJ:
            return _choice(rng, NEUTRAL_ADJ)
        return _choice(rng, positive if rng.random() < p_pos else negative)

    def adv() -> str:
        return _choice(rng, ADVERBS) if rng.random() < 0.5 else ""

    target = int(rng.integers(MIN_COMPLETION_WORDS, MAX_COMPLETION_WORDS + 1))
    words = f"{adv()} {adj()}".split()
    while len(words) < target:
        fitting = [c for c in CLAUSES if len(words) + len(c.split()) <= MAX_COMPLETION_WORDS]
        if not fitting:
            break
        clause = _choice(rng, fitting)
        words += clause.format(aspect=_choice(rng, ASPECTS), adv=adv(), adj=adj()).split()
    return " " + " ".join(words)  # completions carry their leading space (TRL's convention: prompt + completion)


def _first_wins(rng: np.random.Generator, a: str, b: str, cfg: SyntheticConfig) -> bool:
    """Bradley-Terry label from the gold reward of texts `a` and `b`, then a flip with prob ``label_noise``."""
    margin = (gold_reward(a) - gold_reward(b)) / cfg.bt_temperature
    a_wins = rng.random() < 1.0 / (1.0 + math.exp(-margin))
    if rng.random() < cfg.label_noise:  # always drawn: the stream is independent of label_noise
        a_wins = not a_wins
    return a_wins


def _sample_pair(rng: np.random.Generator, prompt: str, cfg: SyntheticConfig) -> tuple[str, str, str]:
    """Two different base completions, labelled by `_first_wins`."""
    y1 = sample_completion(rng)
    y2 = sample_completion(rng)
    while y2 == y1:
        y2 = sample_completion(rng)
    return (prompt, y1, y2) if _first_wins(rng, y1, y2, cfg) else (prompt, y2, y1)


def _tokenizer_corpus() -> list[str]:
    """Seed-independent corpus for the tokenizer: generated lines plus the whole lexicon."""
    rng = np.random.default_rng(_TOKENIZER_SEED)
    lines = [f"{sample_prompt(rng)} {sample_completion(rng)}" for _ in range(_TOKENIZER_LINES)]
    vocab = [*LEXICON, *NEUTRAL_ADJ, *SETTING_ADJ, *ADVERBS, *ASPECTS, *SUBJECTS, *NOUNS, *TIMES]
    return lines + [" ".join(vocab)]


def tokenizer_cache_path(cfg: SyntheticConfig) -> Path:
    """Cache file of the task tokenizer, keyed by generator version, lexicon and vocab size."""
    return base.tokenizer_path(cfg.cache_dir, "", GENERATOR_VERSION, cfg.sp_vocab_size, LEXICON, PROMPT_TEMPLATES,
                               CLAUSES)


def load_or_train_tokenizer(cfg: SyntheticConfig) -> SentencePieceTokenizer:
    """Load the cached tokenizer or train it, publishing the file atomically."""
    return cached_sentencepiece(tokenizer_cache_path(cfg), _tokenizer_corpus, cfg.sp_vocab_size)


def build_task(cfg: SyntheticConfig) -> SyntheticTask:
    """Generate the task deterministically from ``cfg.seed`` (one RNG stream per split)."""
    rng = _rng(cfg.seed, "sft")
    sft = [(sample_prompt(rng), sample_completion(rng)) for _ in range(cfg.num_sft)]
    rng = _rng(cfg.seed, "pairs")
    pairs = [_sample_pair(rng, sample_prompt(rng), cfg) for _ in range(cfg.num_pairs)]

    # held-out prompts avoid the training prompts (up to _MAX_TRIES redraws each: the space is finite)
    seen = {p for p, _ in sft} | {p for p, _, _ in pairs}
    rng = _rng(cfg.seed, "heldout_prompts")
    heldout_prompts = base.heldout_prompts(lambda: sample_prompt(rng), cfg.num_heldout_prompts, seen, _MAX_TRIES)
    rng = _rng(cfg.seed, "heldout_pairs")
    heldout_pairs = [_sample_pair(rng, base.fresh(lambda: sample_prompt(rng), seen, _MAX_TRIES), cfg)
                     for _ in range(cfg.num_heldout_pairs)]

    return SyntheticTask(
        sft=sft,
        pairs=pairs,
        heldout_prompts=heldout_prompts,
        heldout_pairs=heldout_pairs,
        tokenizer=load_or_train_tokenizer(cfg),
        gold_reward=gold_reward,
    )


def preference_records(cfg: SyntheticConfig, kind: str, *, list_size: int = 4) -> list[dict]:
    """`cfg.num_pairs` training records of a data shape, in the JSONL record format of `pjax.data.records`.

    PAIR: the Bradley-Terry labelled pairs. LIST: `list_size` base completions per prompt with their
    gold rewards as scores. UNP: one completion with label = gold reward > 0 (flipped with
    probability `label_noise`). STEP: a shared first part of a completion (`prefix`) and two
    different next steps, the chosen one by Bradley-Terry sampling on the gold reward of prefix + step.
    SCORE: one base completion per prompt with its gold reward as `score` (no noise).
    """
    if kind == "PAIR":
        rng = _rng(cfg.seed, "pairs")
        return [dict(zip(("prompt", "chosen", "rejected"), _sample_pair(rng, sample_prompt(rng), cfg)))
                for _ in range(cfg.num_pairs)]
    if kind == "LIST":
        if list_size < 2:
            raise ValueError(f"data.list_size={list_size} must be >= 2")
        rng = _rng(cfg.seed, "list")
        rows = []
        for _ in range(cfg.num_pairs):
            prompt, completions = sample_prompt(rng), [sample_completion(rng) for _ in range(list_size)]
            rows.append({"prompt": prompt, "completions": completions,
                         "scores": [gold_reward(c) for c in completions]})
        return rows
    if kind == "UNP":
        rng = _rng(cfg.seed, "unpaired")
        rows = []
        for _ in range(cfg.num_pairs):
            prompt, completion = sample_prompt(rng), sample_completion(rng)
            label = gold_reward(completion) > 0
            if rng.random() < cfg.label_noise:
                label = not label
            rows.append({"prompt": prompt, "completion": completion, "label": bool(label)})
        return rows
    if kind == "STEP":
        rng = _rng(cfg.seed, "step")
        rows = []
        for _ in range(cfg.num_pairs):
            prompt, words = sample_prompt(rng), sample_completion(rng).split()
            prefix = " " + " ".join(words[: max(1, len(words) // 2)])
            a, b = (" " + " ".join(sample_completion(rng).split()[:5]) for _ in range(2))
            chosen, rejected = (a, b) if _first_wins(rng, prefix + a, prefix + b, cfg) else (b, a)
            rows.append({"prompt": prompt, "prefix": prefix, "chosen": chosen, "rejected": rejected})
        return rows
    if kind == "SCORE":
        rng = _rng(cfg.seed, "scored")
        rows = []
        for _ in range(cfg.num_pairs):
            prompt, completion = sample_prompt(rng), sample_completion(rng)
            rows.append({"prompt": prompt, "completion": completion, "score": gold_reward(completion)})
        return rows
    raise ValueError(f"no synthetic records of data shape {kind!r}")
