"""DPO at real scale: the Llama 3 8B shape, FSDP over every device (e.g. a v5p-64 or 8 x H100).

Parameters, optimizer state and the frozen reference are sharded over `fsdp`; compute in bfloat16
with float32 master weights; full rematerialisation of each layer. `init_from` is the export of
`configs/sft_llama.py`. The synthetic task stands in for data until a dataset is set (its rows are
short: raise `data.max_len` for real data).
"""

from configs import base


def get_config():
    c = base.get_config()
    c.phase = "dpo"
    c.workdir = "runs/dpo_llama3_8b"
    c.init_from = "runs/sft_llama3_8b/export"
    c.model = base.model_config("llama3_8b", dtype="bfloat16", remat="full")
    c.loss.name = "dpo"
    c.loss.beta = 0.1
    c.optim.lr = 5e-7
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.logprob_chunk = 256
    c.data.max_len = 512
    c.mesh.shape = (1, -1, 1)
    return c
