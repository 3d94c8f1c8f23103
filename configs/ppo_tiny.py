"""PPO of the tiny Llama from the SFT export on the synthetic review task (CPU-sized): a value head on
the policy's backbone (fresh), GAE, the KL to the SFT policy folded into the token rewards, clipped
policy and value losses, 2 epochs over 2 minibatches per rollout (the rest as `configs/grpo_tiny.py`).

`python -m pjax.train --config=configs/ppo_tiny.py` (after `configs/sft_tiny.py`); with the learned
reward model: `--config.online.reward=rm --config.reward.models=runs/rm_tiny/export`; a separate value
model: `--config.model.value_backbone=separate`.
"""

from configs import grpo_tiny


def get_config():
    c = grpo_tiny.get_config()
    c.workdir = "runs/ppo_tiny"
    c.model.value_head = True
    c.online.algorithm = "ppo"
    c.online.epochs = 2
    c.online.kl_coef = 0.05
    c.online.kl_estimator = "k1"
    return c
