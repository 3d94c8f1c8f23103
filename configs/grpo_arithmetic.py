"""GRPO on the arithmetic task from its SFT export, rewarded 1 for the right answer (verifiable).

`python -m pjax.train --config=configs/grpo_arithmetic.py` (after `configs/sft_arithmetic.py`). 200 iterations
of 16 prompts x 8 samples at lr 2e-4 raise the held-out accuracy (one T=1 sample per prompt) from about 11%
to 15%: `python -m experiments.arithmetic` trains both and compares them on the same 512 held-out prompts
(many samples each; one sample on 128 prompts is too few to see it). A higher learning rate (5e-4) gains less.
"""

from configs import grpo_tiny, sft_arithmetic


def get_config():
    c = grpo_tiny.get_config()
    sft = sft_arithmetic.get_config()
    c.workdir = "runs/grpo_arithmetic"
    c.init_from = "runs/sft_arithmetic/export"
    c.data = sft.data
    c.generate.max_new_tokens = sft.generate.max_new_tokens
    c.online.samples_per_prompt = 8
    c.online.reward = "gold"  # the task's verifiable reward: 1 if the first integer is the answer
    c.online.missing_eos_penalty = 0.5
    c.train.steps = 200
    return c
