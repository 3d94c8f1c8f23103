"""SFT of the tiny Llama on the built-in arithmetic task (sums with verifiable answers, CPU-sized).

Sums of two numbers up to 99 (`+` only): 10,000 distinct prompts, so the 4,000 SFT rows cannot be
memorised and the model has to learn (imperfect) digit-wise addition, which the 512 held-out prompts
then test. A quarter of the SFT answers are wrong by 1-3 (`data.arithmetic.answer_noise`), so the SFT
policy is an imperfect solver that `configs/grpo_arithmetic.py` then improves with the verifiable reward.
(With sums and differences of numbers up to 20 there are only 882 prompts: the model memorises the 752
seen in SFT, 55% greedy accuracy on them against 26% on held-out ones, and GRPO's gains on its training
prompts barely transfer to held-out ones.)
"""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "sft"
    c.workdir = "runs/sft_arithmetic"
    c.data.task = "arithmetic"
    c.data.arithmetic.answer_noise = 0.25
    c.data.arithmetic.max_operand = 99
    c.data.arithmetic.operations = "+"
    c.data.num_heldout_prompts = 512
    c.data.arithmetic.max_terms = 2
    c.data.max_len = 32
    c.data.max_prompt_len = 24
    c.generate.max_new_tokens = 6
    c.loss.name = "sft"
    c.optim.lr = 3e-3
    c.train.steps = 2000
    return c
