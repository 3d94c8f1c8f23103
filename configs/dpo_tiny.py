"""DPO of the tiny Llama from the SFT export, on the synthetic task's preference pairs."""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "dpo"
    c.workdir = "runs/dpo_tiny"
    c.init_from = "runs/sft_tiny/export"
    c.loss.name = "dpo"
    c.loss.beta = 0.1
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 10
    c.train.steps = 150
    c.train.batch_size = 16
    return c
