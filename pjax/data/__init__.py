"""Data: tokenizer, synthetic preference task and batching."""

from pjax.data.batching import batch_at, encode_pairs, encode_prompts, encode_sft
from pjax.data.synthetic import SyntheticConfig, SyntheticTask, build_task, gold_reward
from pjax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

__all__ = [
    "SentencePieceTokenizer",
    "SyntheticConfig",
    "SyntheticTask",
    "batch_at",
    "build_task",
    "encode_pairs",
    "encode_prompts",
    "encode_sft",
    "gold_reward",
    "train_sentencepiece",
]
