"""Data: tokenizers, dataset formats and sources, encoding, the input pipeline, the synthetic task."""

from pjax.data.batching import encode_pairs, encode_prompts, encode_sft
from pjax.data.tasks.synthetic import SyntheticConfig, SyntheticTask, build_task, gold_reward
from pjax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer, train_sentencepiece

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "SyntheticConfig",
    "SyntheticTask",
    "build_task",
    "encode_pairs",
    "encode_prompts",
    "encode_sft",
    "gold_reward",
    "load_tokenizer",
    "train_sentencepiece",
]
