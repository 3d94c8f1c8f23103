"""SFT of the tiny Llama on the built-in arithmetic task (sums with verifiable answers, CPU-sized).

A quarter of the SFT answers are wrong by 1-3 (`data.arithmetic.answer_noise`), so the SFT policy is
an imperfect solver that `configs/grpo_arithmetic.py` then improves with the verifiable reward.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "sft"
    c.workdir = "runs/sft_arithmetic"
    c.data.task = "arithmetic"
    c.data.arithmetic.answer_noise = 0.25
    c.data.arithmetic.max_operand = 20
    c.data.num_heldout_prompts = 128
    c.data.arithmetic.max_terms = 2
    c.data.max_len = 32
    c.data.max_prompt_len = 24
    c.generate.max_new_tokens = 6
    c.loss.name = "sft"
    c.optim.lr = 3e-3
    c.train.steps = 2000
    return c
