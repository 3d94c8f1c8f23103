"""The whole pipeline on the synthetic task, CPU-sized (`make demo`): SFT -> reward model -> DPO.

`python -m pjax.chain --config=configs/pipeline_tiny.py --workdir=runs/pipeline_tiny`; any phase's
key is `--config.<phase>.<key>=value` (e.g. `--config.dpo.loss.name=ipo`). The reward model and DPO
both start from the SFT export; DPO's evaluation scores its samples with the reward model.
"""

from ml_collections import ConfigDict

from configs import dpo_tiny, rm_tiny, sft_tiny


def get_config():
    c = ConfigDict()
    c.workdir = "runs/pipeline_tiny"
    c.phases = ("sft", "rm", "dpo")  # run in this order, each in <workdir>/<name>
    c.parents = ConfigDict({"rm": "sft", "dpo": "sft"})  # phase -> the phase whose export it starts from
    c.reward_models = ("rm",)  # rm phases whose exports score samples for the phases after them (an ensemble if several)

    c.sft = sft_tiny.get_config()
    c.sft.train.steps = 300

    c.rm = rm_tiny.get_config()
    c.rm.train.steps = 150
    c.rm.optim.lr = 3e-4
    c.rm.optim.warmup_steps = 10

    c.dpo = dpo_tiny.get_config()
    c.dpo.train.steps = 150

    for phase in (c.sft, c.rm, c.dpo):
        phase.train.progress = False  # one line per logged step instead of three progress bars
        phase.train.log_every = 25

    c.eval = ConfigDict(dict(
        after_each_phase=True,  # evaluate each finished phase (<name>/eval.json) and the run (<workdir>/eval/)
        num_prompts=128,  # held-out prompts sampled by each policy
        max_new_tokens=0,  # 0: each phase's generate.max_new_tokens
        seed=1234,
        best_of_n=(1, 2, 4, 8, 16),  # best-of-N of the base policy under the reward model (() = skip)
        best_of_n_prompts=64,
    ))
    return c
