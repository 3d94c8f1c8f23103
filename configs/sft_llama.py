"""SFT at real scale: the Llama 3 8B shape, FSDP over every device. Its export is what
`configs/dpo_llama.py` starts from. The synthetic task stands in for data until a dataset is set
(its rows are short: raise `data.max_len` for real data)."""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "sft"
    c.workdir = "runs/sft_llama3_8b"
    c.model = base.model_config("llama3_8b", dtype="bfloat16", remat="full")
    c.loss.name = "sft"
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 100
    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.logprob_chunk = 256
    c.data.max_len = 512
    c.mesh.shape = (1, -1, 1)
    return c
