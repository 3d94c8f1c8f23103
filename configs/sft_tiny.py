"""SFT of the tiny Llama on the built-in synthetic task (CPU-sized)."""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "sft"
    c.workdir = "runs/sft_tiny"
    c.loss.name = "sft"
    c.optim.lr = 3e-3
    c.train.steps = 300
    return c
