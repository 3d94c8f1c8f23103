"""DPO at real scale: the Llama 3 8B shape of `configs/sft_llama.py` (FSDP over every device, bf16
compute with float32 master weights, full rematerialisation), initialised from its export as both
policy and frozen reference. The synthetic task stands in for data until a dataset is set (its rows
are short: raise `data.max_len` for real data)."""

from configs import sft_llama


def get_config():
    c = sft_llama.get_config()
    c.phase = "dpo"
    c.workdir = "runs/dpo_llama3_8b"
    c.init_from = "runs/sft_llama3_8b/export"
    c.loss.name = "dpo"
    c.loss.beta = 0.1
    c.optim.lr = 5e-7
    return c
