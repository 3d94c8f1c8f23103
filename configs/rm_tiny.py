"""Reward model on the synthetic task's preference pairs: the tiny Llama with a scalar head, trained
with the Bradley-Terry loss."""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "rm"
    c.workdir = "runs/rm_tiny"
    c.model = base.model_config("tiny", head="scalar")
    c.loss.name = "bradley_terry"
    c.optim.lr = 1e-3
    c.train.steps = 200
    c.train.batch_size = 32
    return c
