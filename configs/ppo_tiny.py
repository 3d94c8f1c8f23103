"""PPO of the tiny Llama from the SFT export on the synthetic review task (CPU-sized): a value head on
the policy's backbone (fresh), GAE, the KL to the SFT policy folded into the token rewards, clipped
policy and value losses, 2 epochs over 2 minibatches per rollout.

`python -m pjax.train --config=configs/ppo_tiny.py` (after `configs/sft_tiny.py`); with the learned
reward model: `--config.online.reward=rm --config.reward.models=runs/rm_tiny/export`.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "online"
    c.workdir = "runs/ppo_tiny"
    c.init_from = "runs/sft_tiny/export"
    c.model.value_head = True
    c.online.algorithm = "ppo"
    c.online.prompts_per_iteration = 16
    c.online.samples_per_prompt = 4
    c.online.epochs = 2
    c.online.num_minibatches = 2
    c.online.kl_coef = 0.05
    c.online.kl_estimator = "k1"
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 0
    c.train.steps = 60  # iterations
    c.train.log_every = 1
    c.train.save_every = 20
    return c
