"""GRPO of the tiny Llama from the SFT export, on the synthetic review task's gold reward (CPU-sized).

`python -m pjax.train --config=configs/grpo_tiny.py` (after `configs/sft_tiny.py`); RLOO and RAFT are
`--config.online.algorithm=rloo|raft`; the learned reward model instead of the gold reward:
`--config.online.reward=rm --config.reward.models=runs/rm_tiny/export`.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "online"
    c.workdir = "runs/grpo_tiny"
    c.init_from = "runs/sft_tiny/export"
    c.online.algorithm = "grpo"
    c.online.prompts_per_iteration = 16
    c.online.samples_per_prompt = 4
    c.online.num_minibatches = 2
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 0
    c.train.steps = 60  # iterations
    c.train.log_every = 1
    c.train.save_every = 20
    return c
