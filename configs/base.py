"""Defaults shared by every pjax run. Experiment files import `get_config` and change a few fields.

Override any value on the command line: `python -m pjax.train --config=configs/dpo_tiny.py
--config.loss.beta=0.2`. Unknown keys fail at start-up, naming the key.
"""

from ml_collections import ConfigDict

from pjax.losses.defaults import DEFAULTS as LOSS_DEFAULTS
from pjax.models.llama import resolved

# Logical axis -> mesh axis (or axes, or None = replicated). Parameters and activations name logical
# axes; nothing else names mesh axes. Each parallelism preset is one such table over the mesh axes
# ('data', 'fsdp', 'tensor'); `sharding.preset` picks one, `sharding.rules` overrides single entries.
_PARAMS = ("vocab", "embed", "mlp", "q_heads", "kv_heads", "head_dim", "layers", "norm")
_ACTS = ("act_seq", "act_embed", "act_heads", "act_kv_heads", "act_mlp")


def _table(params: dict, acts: dict, batch) -> tuple:
    return (tuple((n, params.get(n)) for n in _PARAMS) + (("batch", batch), ("act_batch", batch))
            + tuple((n, acts.get(n)) for n in _ACTS))


_TP = {"vocab": "tensor", "mlp": "tensor", "q_heads": "tensor", "kv_heads": "tensor"}
_TP_ACTS = {"act_heads": "tensor", "act_kv_heads": "tensor", "act_mlp": "tensor"}
SHARDING_PRESETS = {
    # data parallel: every parameter replicated, the batch split over every mesh axis
    "dp": _table({}, {}, ("data", "fsdp", "tensor")),
    # ZeRO-3 / FSDP: parameters (and optimizer state) sharded over `fsdp` along d_model; the batch
    # over every mesh axis
    "fsdp": _table({"embed": "fsdp"}, {}, ("data", "fsdp", "tensor")),
    # FSDP plus Megatron tensor parallelism: heads, MLP and vocabulary split over `tensor`
    "fsdp_tp": _table({"embed": "fsdp", **_TP}, _TP_ACTS, ("data", "fsdp")),
    # FSDP plus sequence (context) parallelism for long contexts: the `tensor` axis splits the
    # sequence of every activation; attention gathers keys and values across it
    "sequence": _table({"embed": "fsdp"}, {"act_seq": "tensor"}, ("data", "fsdp")),
}
RULES = SHARDING_PRESETS["fsdp_tp"]


def model_config(preset: str, **overrides) -> ConfigDict:
    """Every `LlamaConfig` field, filled from a preset, so each can be overridden by flag.

    `base_preset` records which preset filled the fields: overriding `model.preset` switches every
    field that still has that preset's value (see `pjax.models.config.model_config`).
    """
    values = {**resolved(preset), **overrides}
    values["rope_scaling"] = tuple(values["rope_scaling"])
    return ConfigDict({"preset": preset, "base_preset": preset, **values})


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.phase = "sft"  # sft | rm | dpo | online
    c.seed = 0
    c.workdir = "runs/default"  # this phase's directory: checkpoints/, export/, metrics.jsonl, tb/
    c.init_from = ""  # a parent phase's params-only export directory ("" = none)
    c.import_from = ""  # else a Hugging Face checkpoint directory or a .gguf file to start from ("" = none)

    c.model = model_config("tiny")

    c.data = ConfigDict(dict(
        task="synthetic",  # the built-in task: synthetic (review sentiment, gold reward) | arithmetic
        # Training records: a JSONL file (plain or .gz), a Parquet file, a Hugging Face `datasets`
        # directory (save_to_disk), "tfds:<name>" (array_record) or "hf:<hub name>" (online), in any
        # TRL dataset format (pjax.data.formats); "" = the synthetic task's records
        path="",
        split="train",  # of a `datasets` directory, a TFDS dataset or a hub dataset
        format="auto",  # auto (TRL formats per row; HH transcripts as conversations) | hh (require HH) | trl (HH as text)
        tokenizer="",  # a SentencePiece .model, a tokenizer.json (or its directory) or a .gguf; "" = synthetic
        chat_template="",  # conversational rows: "" = the tokenizer's own; chatml | llama2 | llama3 | zephyr; or Jinja
        bad_rows="fail",  # malformed rows: fail (the run stops, naming them) | skip (counted and reported)
        max_prompt_tokens=0,  # > 0: rows with a longer prompt are bad rows; 0: prompts are cut from the left to fit
        max_row_bytes=16 << 20,  # JSON Lines rows over this many bytes are bad rows ("too_large")
        drop_duplicates=False,  # records equal to an earlier one are counted and reported; True also drops them
        num_heldout=0,  # rows of data.path held out (seeded) for held-out figures at the start and the end
        packing=False,  # SFT: pack several sequences per row (per-document attention and positions)
        # The batch layout the model runs on (pjax.data.layout; sft and dpo): padded | packed (every
        # sequence's real tokens back to back) | shared_prompt (a pair's prompt once, then each completion)
        layout="padded",
        pack_len=0,  # tokens per row of a packed layout (0 = auto: max_len for packed, 3/2 of it for shared_prompt)
        tfds_data_dir="",  # data_dir of "tfds:" datasets ("" = TFDS's default)
        list_size=4,  # synthetic LIST records: completions per prompt
        precompute_ref=False,  # one reference pass before training, cached next to the data
        seed=0,
        num_sft=4000,
        num_pairs=4000,
        num_heldout_prompts=256,
        num_heldout_pairs=256,
        label_noise=0.0,
        bt_temperature=1.0,
        sp_vocab_size=512,
        max_len=48,  # prompt + completion tokens per sequence (the completion is kept on truncation)
        max_prompt_len=16,  # generation prompts
        cache_dir="",  # synthetic task and encoded-data cache; "" = $PJAX_CACHE or ~/.cache/pjax/synthetic
        # data.task='arithmetic': sums with a verifiable answer (SFT data and prompts; online rewards)
        arithmetic=ConfigDict(dict(max_operand=20, operations="+-", min_terms=2, max_terms=3, answer_noise=0.0,
                                   sp_vocab_size=64)),
    ))

    # the objective(s), then every loss hyperparameter (defaults and their meaning: pjax/losses/defaults.py)
    c.loss = ConfigDict(dict(
        name="sft",  # a registry name (`python -m pjax.losses` lists them)
        names=(),  # several objectives combined, e.g. ("sigmoid", "bco_pair", "sft") ...
        weights=(),  # ... with these weights, e.g. (0.8, 0.2, 1.0) (the MPO recipe); default 1 each
        **LOSS_DEFAULTS,
    ))

    c.optim = ConfigDict(dict(
        lr=1e-3,
        schedule="cosine",  # cosine | linear | constant (after warm-up)
        warmup_steps=20,
        min_lr_ratio=0.1,
        weight_decay=0.0,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        grad_clip=1.0,
    ))

    c.train = ConfigDict(dict(
        steps=300,
        batch_size=32,  # global: sequences (SFT) or pairs (DPO)
        logprob_chunk=128,  # sequence positions per chunk of the fused LM head
        log_every=10,
        save_every=100,
        keep_checkpoints=3,  # the latest N ...
        keep_every=0,  # ... plus every M-th step's (0 = none)
        # keys a resumed run may change on purpose (e.g. ("optim.lr",)); any other change of the model,
        # objective, algorithm, data or optimizer stops it at start-up (pjax.config_io.RESUME_COMPARED)
        resume_changes=(),
        # explosion guards (0 = off): a step whose update moves the weights by more than this times their
        # norm, or whose gradient norm is over grad_spike x the median of the steps before, stops the run
        # unsaved as a non-finite one does, so the last checkpoint is a good one
        max_update_ratio=1.0,
        grad_spike=0.0,
        grad_accum=1,  # micro-batches per step: batch_size rows in grad_accum passes of batch_size/grad_accum
        async_checkpoint=True,
        progress=True,
    ))

    c.generate = ConfigDict(dict(max_new_tokens=24))  # evaluation samples (at temperature 1, for the KL)

    # Metric sinks (pjax.metrics; process 0 only). <workdir>/metrics.jsonl is always written, and every
    # workdir keeps config.json (rerun: --config=pjax/config_io.py:<workdir>) and run_info.json.
    c.logging = ConfigDict(dict(
        tensorboard=True,  # TensorBoard events in <workdir>/tb
        wandb=False,  # Weights & Biases (optional: `pip install wandb`); a resumed run continues its W&B run
        wandb_project="pjax",
        wandb_entity="",  # "" = your default entity
        wandb_name="",  # "" = W&B's generated name
        wandb_group="",  # e.g. one sweep's or pipeline's runs together
        wandb_tags=(),
        wandb_mode="",  # online | offline (`wandb sync` later) | disabled; "" = W&B's default (WANDB_MODE, else online)
    ))

    # Online policy optimisation (phase='online'; pjax.rl): train.steps counts iterations.
    c.online = ConfigDict(dict(
        algorithm="grpo",  # ppo | grpo | rloo | online_dpo | xpo | raft | nash_md
        prompts_per_iteration=8,
        samples_per_prompt=4,  # G: the group of each prompt
        epochs=1,  # passes over an iteration's samples ...
        num_minibatches=1,  # ... in this many optimizer steps each
        temperature=1.0,  # sampling, and every log-prob at logits / temperature
        top_k=0,
        top_p=1.0,
        reward="gold",  # gold (the task's) | rm (reward.models) | python:<module>:<function>
        missing_eos_penalty=0.0,  # subtracted from the reward of a completion cut at the length limit
        clip_eps=0.2,  # PPO-style ratio clipping (grpo: tokens, rloo: sequences)
        clip_eps_high=0.0,  # 0: clip_eps (DAPO's clip-higher when larger)
        loss_aggregation="grpo",  # grpo (per sequence) | dr_grpo (sum / max_new_tokens) | dapo (per token)
        scale_rewards="std",  # grpo advantages: (r - group mean) / group std | none (Dr. GRPO)
        kl_coef=0.0,  # grpo, nash_md: beta of the KL-to-reference loss term; ppo: of the KL in the token rewards
        kl_estimator="k3",  # k1 | k2 | k3
        kl_target=0.0,  # ppo: > 0 adapts kl_coef towards this KL per sequence (Ziegler et al. 2019); 0: fixed
        kl_horizon=10000,
        gamma=1.0,  # ppo: GAE discount ...
        lam=0.95,  # ... and lambda
        vf_coef=0.1,  # ppo: weight of the clipped value loss (model.value_head=True; model.value_backbone)
        value_from="",  # ppo, value_backbone='separate': the value model's backbone from this export (e.g. the
        # reward model, as TRL does); "": from init_from, like the policy
        vf_clip=0.2,
        whiten_advantages=True,  # ppo
        mixture_coef=0.5,  # nash_md: beta of the opponents' geometric mixture pi^(1-beta) pi_ref^beta (TRL's)
        xpo_alpha=1e-5,  # xpo: weight of the policy's log-prob of the reference's samples (TRL's default alpha)
    ))

    # Rewards from trained reward models (evaluation, best-of-N, online RL), and the RM phase's statistics.
    c.reward = ConfigDict(dict(
        models=(),  # reward-model export directories; several (or model.reward_heads > 1) form an ensemble
        aggregate="mean",  # ensemble -> one reward: mean | min (worst case, WCO) | uwo (mean - uwo_lambda * var)
        uwo_lambda=0.5,
        normalize=True,  # each head's reward standardised with the mean/std its export recorded
        stats_rows=1024,  # rm phase: training rows whose completions give the recorded reward mean/std
    ))

    c.mesh = ConfigDict(dict(shape=(1, -1, 1)))  # over ('data', 'fsdp', 'tensor'); one -1 takes the rest
    c.sharding = ConfigDict(dict(
        preset="fsdp_tp",  # dp | fsdp | fsdp_tp | sequence (tables in `presets`)
        presets=ConfigDict(SHARDING_PRESETS),
        rules=(),  # overrides of single entries, e.g. (("act_seq", "tensor"),)
    ))
    c.distributed = ConfigDict(dict(
        coordinator="",  # host:port of process 0; "" = from the environment (TPU pod, SLURM, Open MPI,
        num_processes=0,  # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), else one process
        process_id=-1,
        cpu_devices=0,  # CPU devices per process (simulating a mesh on one machine); 0 = JAX's default
        heartbeat_timeout_s=20,  # a dead peer ends every other process after about this long (under 60 s)
        init_timeout_s=60,  # a process that never connects ends the others after this long (slow pods: raise it)
    ))
    return c
