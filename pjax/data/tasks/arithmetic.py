"""Synthetic integer-arithmetic task with a verifiable reward (for GRPO-style RL).

A prompt is an expression of 2-3 (configurable) non-negative operands, ``"q : 7 + 12 - 3 ="``; its
completion is the value with a leading space, ``" 16"`` (negative values are written ``" -4"``;
``*`` binds tighter than ``+`` and ``-``). :func:`reward` is 1.0 when the first integer in a
completion equals the prompt's value and 0.0 otherwise. Everything is generated deterministically
from ``ArithmeticConfig.seed``; the SentencePiece model is seed- and config-independent (apart from
``sp_vocab_size``) and cached on disk beside the review-sentiment task's (`pjax.data.tasks.synthetic`).

Differences from `pjax.data.tasks.synthetic.SyntheticTask`: the reward needs the prompt, so
``ArithmeticTask.gold_reward`` is None and ``ArithmeticTask.reward(prompt, completion)`` takes its
place; there are no preference pairs (``pairs`` and ``heldout_pairs`` are empty lists).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pjax.data.tasks import base
from pjax.data.tokenizer import SentencePieceTokenizer, cached_sentencepiece

# Bump whenever the prompt format or the tokenizer corpus / options change: it keys the tokenizer cache.
GENERATOR_VERSION = "arithmetic-v1"
PROMPT_PREFIX = "q :"
SUPPORTED_OPERATIONS = ("+", "-", "*")
# Characters of the corpus: SentencePiece's whitespace marker, digits, prompt text and operators.
_ALPHABET = "\u2581" + "0123456789" + "q:=" + "".join(SUPPORTED_OPERATIONS)
MIN_VOCAB_SIZE = 4 + len(_ALPHABET)  # pad, unk, bos, eos + one piece per character
MAX_TERMS = 8
NOISE_OFFSETS = (-3, -2, -1, 1, 2, 3)  # a noisy SFT answer is the true one plus one of these
_TOKENIZER_SEED, _TOKENIZER_LINES, _TOKENIZER_MAX_OPERAND = 12345, 3000, 999
_SP_OPTIONS = {"split_digits": True, "hard_vocab_limit": False}
_rng = base.Streams("sft", "heldout_prompts", "noise")
_EXPR = re.compile(r"q : (\d+(?: [-+*] \d+)*) =")
_INT = re.compile(r"-?\d+")
_MAX_DIGITS = 64  # longer digit runs in a completion never match (and never reach int())


@dataclass(kw_only=True)
class ArithmeticConfig(base.TaskConfig):
    """Task size, operand range and SFT answer noise.

    Operands are drawn uniformly from ``0..max_operand``, the number of terms uniformly from
    ``min_terms..max_terms`` and each operator uniformly from ``operations`` (a sequence of
    ``"+"``, ``"-"``, ``"*"``, or a string such as ``"+-"``). With probability ``answer_noise`` an
    SFT completion is wrong (the true value plus an offset from ``NOISE_OFFSETS``), giving an RL
    phase something to fix. ``sp_vocab_size`` is an upper bound: digits are split one per piece,
    so the corpus has only 27 distinct pieces and the tokenizer's ``vocab_size`` is
    ``min(sp_vocab_size, 27)`` (it must be >= 21, one piece per character plus 4 special pieces).
    The seed, sizes and ``cache_dir`` are `base.TaskConfig`'s (``cache_dir`` defaults to
    ``$PJAX_CACHE/synthetic``, ``PJAX_CACHE`` to ``~/.cache/pjax``).
    """

    max_operand: int = 20
    operations: Sequence[str] = ("+", "-")
    min_terms: int = 2
    max_terms: int = 3
    answer_noise: float = 0.0
    sp_vocab_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("max_operand", self.max_operand >= 1, "must be >= 1")
        ops = tuple(self.operations)
        self._require("operations", bool(ops) and all(op in SUPPORTED_OPERATIONS for op in ops)
                   and len(set(ops)) == len(ops),
                   f"must be distinct operators from {SUPPORTED_OPERATIONS}")
        self.operations = ops
        self._require("min_terms", 1 <= self.min_terms <= MAX_TERMS, f"must be in [1, {MAX_TERMS}]")
        self._require("max_terms", self.min_terms <= self.max_terms <= MAX_TERMS,
                   f"must be in [min_terms={self.min_terms}, {MAX_TERMS}]")
        self._require("answer_noise", 0.0 <= self.answer_noise <= 1.0, "must be in [0, 1]")
        self._require("sp_vocab_size", self.sp_vocab_size >= MIN_VOCAB_SIZE, f"must be >= {MIN_VOCAB_SIZE}")
        self._require("num_heldout_prompts", self.num_heldout_prompts <= self.num_prompts // 2,
                   f"must be at most half of the {self.num_prompts} distinct prompts "
                   "(raise max_operand, max_terms or the operations)")

    @property
    def num_prompts(self) -> int:
        """Number of distinct prompts: sum over n terms of ``(max_operand + 1)^n * len(operations)^(n - 1)``."""
        k, m = len(tuple(self.operations)), self.max_operand + 1
        return sum(m**n * k ** (n - 1) for n in range(self.min_terms, self.max_terms + 1))


def format_prompt(operands: Sequence[int], operations: Sequence[str]) -> str:
    """``"q : a op b op c ="`` for non-negative ``operands`` and ``len(operands) - 1`` operators."""
    if len(operations) != len(operands) - 1 or any(x < 0 for x in operands):
        raise ValueError(f"need n >= 1 non-negative operands and n - 1 operators, got {operands}, {operations}")
    rest = "".join(f" {op} {int(x)}" for op, x in zip(operations, operands[1:]))
    return f"{PROMPT_PREFIX} {int(operands[0])}{rest} ="


def format_answer(value: int) -> str:
    """The completion for ``value``: a leading space (TRL's prompt + completion convention), then the integer."""
    return f" {int(value)}"


def _evaluate(tokens: list[str]) -> int:
    """Value of ``[a, op, b, op, c, ...]`` with ``*`` before ``+``/``-`` (left to right otherwise)."""
    total, sign, term = 0, 1, int(tokens[0])
    for op, x in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            term *= int(x)
        else:
            total += sign * term
            sign, term = (1 if op == "+" else -1), int(x)
    return total + sign * term


def answer(prompt: str) -> int:
    """The value of the (last) expression ``"q : ... ="`` in ``prompt``, so a prompt wrapped in other
    text (a chat template) works too. Parsed by a regex and evaluated without ``eval``."""
    found = _EXPR.findall(prompt)
    if not found:
        raise ValueError(f"no arithmetic expression 'q : a op b ... =' in prompt {prompt!r}")
    return _evaluate(found[-1].split(" "))


def parse_completion(completion: str) -> int | None:
    """The first integer (an optional ``-`` directly before digits) in ``completion``, or None."""
    m = _INT.search(completion)
    if m is None or len(m.group()) > _MAX_DIGITS:
        return None
    return int(m.group())


def reward(prompt: str, completion: str) -> float:
    """1.0 if the first integer in ``completion`` equals ``answer(prompt)``, else 0.0 (also when the
    completion holds no integer). Whitespace and text around the number do not matter; ``"- 4"`` is
    read as 4, not -4. Raises ValueError for a prompt without an expression."""
    value = parse_completion(completion)
    return float(value is not None and value == answer(prompt))


def rewards(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """:func:`reward` of each (prompt, completion), TRL reward-function style."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [reward(p, c) for p, c in zip(prompts, completions)]


def sample_prompt(rng: np.random.Generator, cfg: ArithmeticConfig) -> str:
    """A prompt with ``min_terms..max_terms`` operands in ``0..max_operand`` (all uniform)."""
    n = int(rng.integers(cfg.min_terms, cfg.max_terms + 1))
    operands = [int(x) for x in rng.integers(0, cfg.max_operand + 1, size=n)]
    ops = [cfg.operations[int(i)] for i in rng.integers(0, len(cfg.operations), size=n - 1)]
    return format_prompt(operands, ops)


@dataclass
class ArithmeticTask:
    """Generated data: (prompt, completion) SFT examples and held-out prompts, with a verifiable reward.

    ``sft_noisy[i]`` tells whether ``sft[i]``'s answer was made wrong (``answer_noise``). Held-out
    prompts are distinct and never occur among the SFT prompts (SFT prompts may repeat).
    ``gold_reward`` is None: use ``reward(prompt, completion)``. ``pairs`` and ``heldout_pairs``
    are empty (no preference data), kept so code reading SyntheticTask's fields does not break.
    """

    sft: list[tuple[str, str]]
    sft_noisy: list[bool]
    heldout_prompts: list[str]
    tokenizer: SentencePieceTokenizer
    config: ArithmeticConfig
    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    heldout_pairs: list[tuple[str, str, str]] = field(default_factory=list)
    gold_reward: None = None

    @staticmethod
    def answer(prompt: str) -> int:
        return answer(prompt)

    @staticmethod
    def reward(prompt: str, completion: str) -> float:
        return reward(prompt, completion)

    @staticmethod
    def rewards(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return rewards(prompts, completions)


def _tokenizer_corpus() -> list[str]:
    """Seed- and config-independent corpus: all operators, operands up to 999, signed answers."""
    cfg = ArithmeticConfig(max_operand=_TOKENIZER_MAX_OPERAND, operations=SUPPORTED_OPERATIONS,
                           min_terms=1, max_terms=4, num_heldout_prompts=0, cache_dir="")
    rng = np.random.default_rng(_TOKENIZER_SEED)
    lines = []
    for _ in range(_TOKENIZER_LINES):
        prompt = sample_prompt(rng, cfg)
        lines.append(prompt + format_answer(answer(prompt)))
    return lines


def tokenizer_cache_path(cfg: ArithmeticConfig) -> Path:
    """Cache file of the task tokenizer, keyed by generator version, trainer options and vocab size."""
    return base.tokenizer_path(cfg.cache_dir, "arith-", GENERATOR_VERSION, cfg.sp_vocab_size, _SP_OPTIONS,
                               _TOKENIZER_LINES, _TOKENIZER_MAX_OPERAND)


def load_or_train_tokenizer(cfg: ArithmeticConfig) -> SentencePieceTokenizer:
    """Load the cached tokenizer or train it (every digit its own piece), publishing it atomically."""
    return cached_sentencepiece(tokenizer_cache_path(cfg), _tokenizer_corpus, cfg.sp_vocab_size, **_SP_OPTIONS)


def _noisy_answer(rng: np.random.Generator, value: int, p: float) -> tuple[int, bool]:
    """``value``, or with probability ``p`` ``value`` plus an offset (both draws always made)."""
    noisy, offset = rng.random() < p, NOISE_OFFSETS[int(rng.integers(len(NOISE_OFFSETS)))]
    return (value + offset, True) if noisy else (value, False)


def build_task(cfg: ArithmeticConfig) -> ArithmeticTask:
    """Generate the task deterministically from ``cfg.seed`` (one RNG stream per split).

    Held-out prompts are drawn first (distinct), so they depend neither on ``num_sft`` nor on
    ``answer_noise``; SFT prompts are then drawn i.i.d., redrawing any held-out prompt.
    """
    rng = _rng(cfg.seed, "heldout_prompts")  # at most half the prompt space (checked): few redraws
    heldout_prompts = base.heldout_prompts(lambda: sample_prompt(rng, cfg), cfg.num_heldout_prompts)
    heldout = set(heldout_prompts)
    rng, noise_rng = _rng(cfg.seed, "sft"), _rng(cfg.seed, "noise")
    sft, sft_noisy = [], []
    for _ in range(cfg.num_sft):
        prompt = base.fresh(lambda: sample_prompt(rng, cfg), heldout)
        value, noisy = _noisy_answer(noise_rng, answer(prompt), cfg.answer_noise)
        sft.append((prompt, format_answer(value)))
        sft_noisy.append(noisy)
    return ArithmeticTask(sft=sft, sft_noisy=sft_noisy, heldout_prompts=heldout_prompts,
                          tokenizer=load_or_train_tokenizer(cfg), config=cfg)
