"""Entry point: `python -m pjax.train --config=configs/<file>.py [--config.key=value ...]`.

One generic jitted train step serves every phase: the phase decides what data the step sees (`SEQ`
`[B, T]` for SFT, `PAIR` `[B, 2, T]` for DPO) and the objective from the loss registry turns the
per-token log-probs into a loss. The train state (params, optimizer state, step) is a plain pytree,
created inside jit with `out_shardings`, so no device ever holds the unsharded model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from pjax import checkpoint, config_io, distributed, logs, losses, models, runinfo, sharding
from pjax.data import pipeline
from pjax.losses import LossInputs
from pjax.metrics import MetricWriter, validate_logging
from pjax.models import llama as presets
from pjax.models.llama import LlamaConfig
from pjax.optim import make_optimizer, schedule

log = logging.getLogger("pjax")

# phase -> the data shapes (of `pjax.losses` objectives) it trains on. `dpo` is the offline
# preference phase: any objective of the catalogue (pairwise, step-level, unpaired or listwise);
# `rm` trains a reward model (a scalar head, `model.head='scalar'`, `model.reward_heads` of them) on
# preference pairs (Bradley-Terry), ranked lists (Plackett-Luce) or scored completions (regression).
PHASES = {"sft": ("SEQ",), "rm": ("PAIR", "LIST", "SCORE"), "dpo": ("PAIR", "STEP", "UNP", "LIST"),
          "online": ()}  # online: sampled rollouts, `online.algorithm` (pjax.online)
TRAINS = {"sft": "policy", "rm": "reward", "dpo": "policy"}  # what the phase's objectives read

State = dict[str, Any]


def model_config(config: ConfigDict) -> LlamaConfig:
    """The model config: `model.preset`, with every field that the config changed from the preset its
    fields were filled from (`model.base_preset`). So `--config.model.preset=llama3_1b` switches the
    whole shape, and `--config.model.d_model=256` changes one field, and both can be combined."""
    m = config.model
    fields = [f for f in LlamaConfig.__dataclass_fields__]
    try:
        preset_values, base_values = presets.resolved(m.preset), presets.resolved(m.base_preset)
    except ValueError as e:
        raise ValueError(f"model.preset: {e}") from e
    values = {}
    for f in fields:
        current = tuple(m[f]) if f == "rope_scaling" else m[f]
        values[f] = current if current != base_values[f] else preset_values[f]
    try:
        return LlamaConfig(**values)
    except TypeError as e:
        raise ValueError(f"config.model: {e}") from e


def validate(config: ConfigDict) -> None:
    """Start-up checks that name the offending key."""
    if config.phase not in PHASES:
        raise ValueError(f"phase={config.phase!r}: expected one of {sorted(PHASES)}")
    if config.phase == "online":
        from pjax import online

        online.validate(config)
        if config.model.head != "lm":
            raise ValueError(f"model.head={config.model.head!r}: phase='online' trains a policy (model.head='lm')")
        return _validate_common(config)
    kind = losses.data_kind(config.loss)  # also checks the names and weights
    chosen = f"loss.names={tuple(config.loss.names)}" if config.loss.names else f"loss.name={config.loss.name!r}"
    if losses.trains(config.loss) != TRAINS[config.phase]:
        raise ValueError(f"{chosen} trains a {losses.trains(config.loss)} model; phase={config.phase!r} "
                         f"needs {TRAINS[config.phase]} objectives")
    head = "scalar" if config.phase == "rm" else "lm"
    if config.model.head != head:
        raise ValueError(f"model.head={config.model.head!r}: phase={config.phase!r} needs model.head={head!r}")
    if kind not in PHASES[config.phase]:
        raise ValueError(f"{chosen} (data shape {kind}) does not fit "
                         f"phase={config.phase!r} (data shapes {PHASES[config.phase]})")
    if config.data.packing and kind != "SEQ":
        raise ValueError(f"data.packing=True packs SFT sequences; {chosen} trains on data shape {kind}")
    _validate_common(config)


def _validate_common(config: ConfigDict) -> None:
    """The checks every phase shares (training, data, paths, model)."""
    for key in ("steps", "batch_size", "log_every", "save_every", "logprob_chunk", "keep_checkpoints", "grad_accum"):
        if config.train[key] <= 0:
            raise ValueError(f"train.{key}={config.train[key]} must be positive")
    for key, value in (("loss.beta", config.loss.beta), ("optim.lr", config.optim.lr),
                       ("generate.max_new_tokens", config.generate.max_new_tokens)):
        if value <= 0:
            raise ValueError(f"{key}={value} must be positive")
    if config.train.keep_every < 0:
        raise ValueError(f"train.keep_every={config.train.keep_every} must be >= 0 (0 = keep only the latest)")
    if config.train.keep_every % config.train.save_every:
        raise ValueError(f"train.keep_every={config.train.keep_every} must be a multiple of "
                         f"train.save_every={config.train.save_every} (it keeps the saved steps divisible by it)")
    sharding.config_rules(config.sharding)  # raises with the key named
    validate_logging(config)  # logging.*: W&B enabled but not installed fails here
    if config.optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={config.optim.warmup_steps} must be >= 0")
    for key in ("workdir", "init_from", "import_from"):
        if "://" in str(config[key]):
            raise ValueError(f"{key}={config[key]!r}: object-store URLs are not supported (pjax appends to files, "
                             "renames them atomically, and multi-host checkpoints need one filesystem every host "
                             "sees); mount the bucket (e.g. gcsfuse, see tpu/README.md) and pass the mounted path")
    if config.reward.aggregate not in losses.AGGREGATIONS:
        raise ValueError(f"reward.aggregate={config.reward.aggregate!r}: expected one of {losses.AGGREGATIONS}")
    if config.reward.stats_rows <= 0:
        raise ValueError(f"reward.stats_rows={config.reward.stats_rows} must be positive")
    if config.data.task not in TASKS:
        raise ValueError(f"data.task={config.data.task!r}: the built-in tasks are {TASKS} (real data: data.path)")
    if config.data.bad_rows not in ("fail", "skip"):
        raise ValueError(f"data.bad_rows={config.data.bad_rows!r}: expected 'fail' or 'skip'")
    for key in ("num_heldout", "max_prompt_tokens"):
        if config.data[key] < 0:
            raise ValueError(f"data.{key}={config.data[key]} must be >= 0")
    if config.data.num_heldout and not config.data.path:
        raise ValueError(f"data.num_heldout={config.data.num_heldout} holds rows of data.path out, which is not set "
                         "(the synthetic task's held-out split is data.num_heldout_pairs)")
    if config.data.path and not config.data.tokenizer and config.data.chat_template:
        raise ValueError("data.chat_template is set but data.tokenizer is not: name the tokenizer the template is for")
    if config.init_from and config.import_from:
        raise ValueError(f"init_from={config.init_from!r} and import_from={config.import_from!r} are both set: a "
                         "phase starts from a parent export or from an imported checkpoint; clear one")
    for key, value in (("import_from", config.import_from), ("data.tokenizer", config.data.tokenizer),
                       ("data.path", config.data.path)):
        if value and not value.startswith(("tfds:", "hf:")) and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{key}={value!r}: no such file or directory")
    cfg = model_config(config)  # raises with the key named
    if config.data.max_len > cfg.max_seq_len:
        raise ValueError(f"data.max_len={config.data.max_len} exceeds model.max_seq_len={cfg.max_seq_len}")


def validate_for_mesh(config: ConfigDict, mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> None:
    """Checks that need the mesh: the batch splits over the data axes (and micro-batches), the
    sequence over a sequence-parallel axis (parameters are checked when their shardings are built)."""
    rules = sharding.rules_dict(sharding.config_rules(config.sharding))
    axes, seq_axes = sharding.target_axes(rules.get("batch")), sharding.target_axes(rules.get("act_seq"))
    dp, sp = math.prod(mesh.shape[a] for a in axes), math.prod(mesh.shape[a] for a in seq_axes)
    if config.data.max_len % sp:
        raise ValueError(f"data.max_len={config.data.max_len} is not divisible by the sequence-parallel size {sp} "
                         f"(mesh axes {seq_axes} of sharding.preset={config.sharding.preset!r})")
    if config.phase == "online":
        o = config.online
        rows = o.prompts_per_iteration * (1 if o.algorithm in ("online_dpo", "xpo") else o.samples_per_prompt)
        minibatch = rows // o.num_minibatches
        if minibatch % dp:
            raise ValueError(f"the online minibatch of {minibatch} samples (online.prompts_per_iteration x "
                             f"online.samples_per_prompt / online.num_minibatches) is not divisible by the "
                             f"data-parallel size {dp} (mesh axes {axes})")
        return
    k = config.train.grad_accum
    if config.train.batch_size % (dp * k):
        raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by the data-parallel size "
                         f"{dp} (mesh axes {axes} of mesh.shape={tuple(mesh.shape.values())}) times "
                         f"train.grad_accum={k}")


@dataclasses.dataclass
class Setup:
    """Everything derived from the config that the loop, the benchmark and the tests share."""

    config: ConfigDict
    mesh: jax.sharding.Mesh
    rules: sharding.Rules  # the effective rules table (preset + overrides)
    model_def: models.ModelDef
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    param_shardings: Any
    state_shardings: State
    abstract_state: State  # ShapeDtypeStructs carrying their shardings

    def batch_sharding(self, batch: dict[str, Any]) -> dict[str, NamedSharding]:
        return {k: sharding.batch_sharding(self.mesh, self.rules, np.ndim(v)) for k, v in batch.items()}

    def local_rows(self, global_size: int) -> np.ndarray:
        """The rows of a global batch of `global_size` that this process's devices hold, in order
        (every row with one process). A host reads and sends only these."""
        spec = sharding.batch_sharding(self.mesh, self.rules, 1)
        slices = {(s[0].start or 0, global_size if s[0].stop is None else s[0].stop)
                  for s in spec.addressable_devices_indices_map((global_size,)).values()}
        return np.concatenate([np.arange(a, b) for a, b in sorted(slices)])

    def put_batch(self, local: dict[str, np.ndarray], global_size: int) -> dict[str, jax.Array]:
        """Assemble the global batch from every process's own rows (`local_rows`)."""
        shardings = self.batch_sharding(local)
        return {k: jax.make_array_from_process_local_data(shardings[k], v, (global_size, *v.shape[1:]))
                for k, v in local.items()}

    def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Place a global host batch (each process passes the same one and sends its own rows)."""
        size = len(next(iter(batch.values())))
        rows = self.local_rows(size)
        return self.put_batch({k: v[rows] for k, v in batch.items()}, size)

    def init_state(self, seed: int) -> State:
        init = jax.jit(lambda rng: self.state_from_params(self.model_def.init(rng)),
                       out_shardings=self.state_shardings)
        return init(jax.random.key(seed))

    def state_from_params(self, params: Any) -> State:
        """The train state: params, optimizer state, step, the RNG (raw key data, advanced every step)
        and the objectives' running state."""
        rng = jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.seed), 1))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params),
                "rng": rng, "loss_state": losses.init_state(self.config.loss)}

    def state_around(self, params: Any) -> State:
        """A fresh optimizer state around loaded params, sharded like the train state."""
        fn = jax.jit(self.state_from_params, in_shardings=(self.param_shardings,),
                     out_shardings=self.state_shardings)
        return fn(params)


def make_setup(config: ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
    cfg = model_config(config)
    model_def = models.build(cfg)
    rules = sharding.config_rules(config.sharding)
    param_shardings = sharding.tree_shardings(model_def.logical_specs, model_def.shapes, mesh, rules)
    total = config.train.steps
    if config.phase == "online":  # train.steps counts iterations, each several optimizer steps
        from pjax import online

        total *= online.updates_per_iteration(config)
    tx = make_optimizer(config.optim, total, model_def.logical_specs)
    setup = Setup(config, mesh, rules, model_def, tx, schedule(config.optim, total), param_shardings, None, None)
    abstract = jax.eval_shape(setup.state_from_params, model_def.shapes)
    replicated = NamedSharding(mesh, PartitionSpec())
    # `tree_map_params` runs `tx.init` eagerly on placeholders: keep its scalars off the mesh (which may
    # be compile-only devices, see pjax.plan)
    with jax.set_mesh(None):
        opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_shardings,
                                              transform_non_params=lambda _: replicated)
    setup.state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings,
                             "rng": replicated, "loss_state": jax.tree.map(lambda _: replicated, abstract["loss_state"])}
    setup.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                        abstract, setup.state_shardings)
    return setup


def make_loss_fn(config: ConfigDict, model_def: models.ModelDef, temperature: float = 1.0) -> Callable:
    """`loss_fn(params, ref_params, batch, loss_state) -> (loss, (metrics, new_loss_state))`.

    Reward-model objectives get the scalar head's rewards at each row's last token. Otherwise it
    computes the per-token log-probs the configured objectives need (the policy's; the reference's
    unless the batch carries precomputed `ref_logps`; KTO's mismatched `kl_*` rows; WPO's
    `log sum p^2`) and hands them to `losses.combined`. `temperature`: log-probs at logits / T (online
    pairwise objectives on samples drawn at T).
    """
    if config.phase == "online":
        from pjax import online

        return online.make_loss_fn(config, model_def)
    cfg = config.loss
    needs_ref = losses.needs_reference(cfg)
    chunk = config.train.logprob_chunk
    names = {o.name for o, _ in losses.terms(cfg)}
    weighting = bool(cfg.use_weighting) or "wpo" in names
    kto = "kto" in names

    def logps(params, tokens, mask, with_log_sum_p2=False, batch=None):
        packed = {} if batch is None else {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
        return models.sequence_token_logprobs(model_def, params, tokens, mask, chunk_size=chunk,
                                              with_log_sum_p2=with_log_sum_p2, temperature=temperature, **packed)

    def reference(ref_params, batch, prefix=""):
        if f"{prefix}ref_logps" in batch:
            return batch[f"{prefix}ref_logps"]
        return jax.lax.stop_gradient(logps(ref_params, batch[f"{prefix}tokens"], batch[f"{prefix}mask"]))

    if losses.trains(cfg) == "reward":
        heads, rc = model_def.cfg.reward_heads, config.reward

        def reward_loss_fn(params, ref_params, batch, loss_state):
            rewards = models.sequence_rewards(model_def, params, batch["tokens"], batch["mask"])
            inputs = LossInputs(rewards=rewards, mask=batch["completion_mask"][..., 1:], scores=batch.get("scores"),
                                margins=batch.get("margins"), state=loss_state)
            if heads == 1:
                loss, metrics, new_state = losses.combined(inputs, cfg)
                return loss, (metrics, new_state)
            # an ensemble of reward heads: each head trained on the objective, the loss their mean;
            # the metrics are the heads' means (min/max over heads), plus the aggregated reward's accuracy
            # (of the raw heads: the statistics that standardise them downstream are recorded at the end)
            per_head = jax.vmap(lambda r: losses.combined(inputs.replace(rewards=r), cfg)[:2], in_axes=-1)
            loss_e, metrics_e = per_head(rewards)
            metrics = {k: v.min(0) if k.endswith("/min") else v.max(0) if k.endswith("/max") else v.mean(0)
                       for k, v in metrics_e.items()}
            aggregated = losses.aggregate_rewards(rewards, rc.aggregate, rc.uwo_lambda)
            _, ensemble, _ = losses.combined(inputs.replace(rewards=aggregated), cfg)
            metrics.update({f"ensemble/{k}": v for k, v in ensemble.items() if k in ("accuracy", "margin")})
            return loss_e.mean(), (metrics, loss_state)

        return reward_loss_fn

    def loss_fn(params, ref_params, batch, loss_state):
        out = logps(params, batch["tokens"], batch["mask"], with_log_sum_p2=weighting, batch=batch)
        policy, log_sum_p2 = out if weighting else (out, None)
        extra = {}
        if kto:  # KTO's z0 from mismatched rows: detached, so no gradient flows through this forward
            frozen = jax.lax.stop_gradient(params)
            extra = dict(kl_policy_logps=logps(frozen, batch["kl_tokens"], batch["kl_mask"]),
                         kl_mask=batch["kl_completion_mask"][..., 1:])
            if needs_ref:
                extra["kl_ref_logps"] = reference(ref_params, batch, "kl_")
        inputs = LossInputs(policy_logps=policy, mask=batch["completion_mask"][..., 1:],
                            ref_logps=reference(ref_params, batch) if needs_ref else None,
                            labels=batch.get("labels"), scores=batch.get("scores"),
                            policy_log_sum_p2=log_sum_p2, state=loss_state, **extra)
        loss, metrics, new_state = losses.combined(inputs, cfg)
        return loss, (metrics, new_state)

    return loss_fn


def combine_micro_metrics(metrics: dict[str, jax.Array], weights: jax.Array) -> dict[str, jax.Array]:
    """One step's metrics from its micro-batches' (leading axis k): `num_*` counts are summed,
    `*/min` and `*/max` reduced as named, everything else averaged with the micro-batch weights."""
    out = {}
    for name, values in metrics.items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf.startswith("num_"):
            out[name] = values.sum(0)
        elif leaf == "min":
            out[name] = values.min(0)
        elif leaf == "max":
            out[name] = values.max(0)
        else:
            out[name] = (weights.reshape((-1,) + (1,) * (values.ndim - 1)) * values).sum(0)
    return out


class TrainStep:
    """The generic train step: grads of the objective, AdamW update, metrics.

    Call it as `step(state, ref_params, batch) -> (state, metrics)`; `jitted(ref_params, batch)` gives
    the underlying `jax.jit` function for that batch layout (e.g. to `lower(...)` it in benchmarks).

    With `train.grad_accum = k > 1` the batch is split into k micro-batches (rows j, j+k, j+2k, ...,
    so every device keeps its share of each) whose gradients are summed in a `lax.scan`, each weighted
    by its share of the batch's normaliser: its scored tokens for SFT (a token mean), 1/k otherwise
    (objectives averaging over pairs or rows), and summed in float32. That is the gradient of the
    whole batch, up to rounding; only a token mean nested inside a preference objective (RPO's NLL,
    say), batch statistics (KTO's z0 from the batch's mismatched pairs) and running objective state
    (BCO) see micro-batches. Metrics: see `combine_micro_metrics`.
    """

    def __init__(self, setup: Setup):
        self.setup = setup
        self.loss_fn = make_loss_fn(setup.config, setup.model_def)
        self._jitted: dict[Any, Callable] = {}

    def gradients(self, params: Any, ref_params: Any, batch: dict, loss_state: Any):
        """((loss, (metrics, new loss_state)), grads) of the whole batch, micro-batched if configured."""
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)
        k = self.setup.config.train.grad_accum
        if k == 1:
            return grad_fn(params, ref_params, batch, loss_state)
        micro = {key: sharding.constrain(v.reshape(v.shape[0] // k, k, *v.shape[1:]).swapaxes(0, 1),
                                         (None, "batch")) for key, v in batch.items()}
        if losses.data_kind(self.setup.config.loss) == "SEQ":  # token mean: weight by scored tokens
            tokens = micro["completion_mask"][..., 1:].reshape(k, -1).sum(1).astype(jnp.float32)
            weights = tokens / jnp.maximum(tokens.sum(), 1.0)
        else:
            weights = jnp.full((k,), 1.0 / k, jnp.float32)

        def accumulate(carry, xs):
            grads, state = carry
            mb, w = xs
            (loss, (metrics, state)), g = grad_fn(params, ref_params, mb, state)
            grads = jax.tree.map(lambda a, b: a + w * b.astype(jnp.float32), grads, g)
            return (grads, state), (loss, metrics)

        shardings = self.setup.param_shardings
        zeros = jax.tree.map(lambda p, sh: jax.lax.with_sharding_constraint(jnp.zeros(p.shape, jnp.float32), sh),
                             params, shardings)  # float32 sums, laid out like the params
        (grads, loss_state), (losses_k, metrics_k) = jax.lax.scan(accumulate, (zeros, loss_state), (micro, weights))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return ((weights * losses_k).sum(), (combine_micro_metrics(metrics_k, weights), loss_state)), grads

    def step(self, state: State, ref_params: Any, batch: dict) -> tuple[State, dict]:
        tx, lr = self.setup.tx, self.setup.lr_schedule
        (loss, (metrics, loss_state)), grads = self.gradients(state["params"], ref_params, batch,
                                                              state["loss_state"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]).all()
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr(state["step"]),
                   "batch_tokens": batch["mask"].sum(), "params_finite": finite.astype(jnp.float32)}
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0])
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": rng,
                "loss_state": loss_state}, metrics

    def jitted(self, ref_params: Any, batch: dict) -> Callable:
        key = (ref_params is None, tuple(sorted((k, np.ndim(v)) for k, v in batch.items())))
        if key not in self._jitted:
            setup = self.setup
            ref_sh = None if ref_params is None else setup.param_shardings
            self._jitted[key] = jax.jit(
                self._step_in_context, in_shardings=(setup.state_shardings, ref_sh, setup.batch_sharding(batch)),
                out_shardings=(setup.state_shardings, None), donate_argnums=(0,))
        return self._jitted[key]

    def _step_in_context(self, state: State, ref_params: Any, batch: dict) -> tuple[State, dict]:
        with sharding.use_rules(self.setup.rules):  # activation constraints follow this setup's table
            return self.step(state, ref_params, batch)

    def __call__(self, state: State, ref_params: Any, batch: dict) -> tuple[State, dict]:
        return self.jitted(ref_params, batch)(state, ref_params, batch)


@dataclasses.dataclass
class Data:
    """A phase's data: the tokenizer, the encoded training rows (memory-mapped when read from a file),
    the held-out rows (`data.num_heldout`), what identifies them, and the bad rows left out."""

    tokenizer: Any
    arrays: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray] | None
    fingerprint: str
    bad_rows: dict[str, Any] | None = None
    task: Any = None  # the synthetic task (gold reward, held-out prompts), when training on it


def load_data(config: ConfigDict) -> Data:
    """This phase's training rows in the data shape the configured objectives need.

    From `data.path` (any source of `pjax.data.sources`, any TRL format, tokenised with
    `data.tokenizer` and, for conversations, `data.chat_template`) when set, else from the synthetic
    task. File data is encoded once into a cache of memory-mapped arrays (`data.cache_dir`), keyed by
    the source, the tokenizer and every encoding option; each host then reads only its own rows.
    """
    from pjax.data import synthetic

    d = config.data
    kind = losses.data_kind(config.loss)
    task = build_task(config) if not (d.path and d.tokenizer) else None
    tok = load_tokenizer(config) if d.tokenizer else task.tokenizer
    vocab = model_config(config).vocab_size
    if tok.vocab_size > vocab:
        raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size} "
                         f"(data.tokenizer={d.tokenizer or 'the synthetic task'!r})")
    if not d.path:
        if kind == "SEQ":
            rows = [{"prompt": p, "completion": c} for p, c in task.sft]
        elif d.task != "synthetic":
            raise ValueError(f"data.task={d.task!r} has SFT data and prompts only; {kind} data needs data.path "
                             "or data.task='synthetic'")
        else:
            rows = synthetic.preference_records(synthetic_config(config), kind, list_size=d.list_size)
        arrays, heldout = _encode_split(config, tok, rows, list(range(len(rows))), kind, None), None
        if d.packing:
            arrays = pipeline.pack_sequences(arrays, config.seed)
        return Data(tok, arrays, heldout, pipeline.fingerprint(arrays), None, task)
    key = pipeline.fingerprint("v1", source_identity(d.path), d.split, d.format, d.tfds_data_dir, kind, d.max_len,
                               d.max_prompt_tokens, d.num_heldout, d.bad_rows, d.packing, config.seed,
                               tokenizer_identity(config), d.chat_template)
    key = distributed.broadcast_string(key)  # process 0's: hosts may see other mount points or times
    def build() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from pjax.data import sources

        rows, bad = sources.load_records(d.path, kind, split=d.split, bad_rows=d.bad_rows,
                                         data_dir=d.tfds_data_dir or None, format=d.format)
        numbers = list(bad.record_rows)  # the source row (line) each record came from
        found_on_reading = bad.total
        order = np.random.default_rng(config.seed).permutation(len(rows))
        if d.num_heldout >= len(rows):
            raise ValueError(f"data.num_heldout={d.num_heldout} leaves no training rows of the {len(rows)} in "
                             f"{d.path}")
        held, train_idx = sorted(order[:d.num_heldout]), sorted(order[d.num_heldout:])
        arrays = _encode_split(config, tok, [rows[i] for i in train_idx], [numbers[i] for i in train_idx], kind,
                               bad)
        if d.packing:
            arrays = pipeline.pack_sequences(arrays, config.seed)
        if held:
            arrays.update({f"heldout.{k}": v for k, v in _encode_split(
                config, tok, [rows[i] for i in held], [numbers[i] for i in held], kind, bad).items()})
        if bad.total > found_on_reading:  # rows bad only once tokenised: fail raises, skip logs the report
            bad.check(d.bad_rows)
        return arrays, {"bad_rows": bad.to_dict() if bad.total else None}

    # every host reads the cache: by default beside the workdir when there are several (a shared filesystem)
    default = Path(config.workdir).expanduser().resolve().parent / ".pjax-data" if jax.process_count() > 1 else \
        Path(synthetic_config(config).cache_dir).expanduser()
    cache = (Path(d.cache_dir).expanduser() if d.cache_dir else default) / "encoded"
    stored, meta = pipeline.encoded_cache(cache, key, build)
    arrays = {k: v for k, v in stored.items() if not k.startswith("heldout.")}
    heldout = {k.split(".", 1)[1]: v for k, v in stored.items() if k.startswith("heldout.")} or None
    return Data(tok, arrays, heldout, key, meta["bad_rows"], task)


def _encode_split(config: ConfigDict, tok: Any, rows: list[dict], numbers: list[int], kind: str,
                  report: Any) -> dict[str, np.ndarray]:
    from pjax.data import chat, records

    d = config.data
    template = chat.resolve_template(tok, d.chat_template) if (d.chat_template or tok.chat_template) else None
    return records.encode(tok, rows, kind, d.max_len, template=template, report=report, row_numbers=numbers,
                          max_prompt_tokens=d.max_prompt_tokens)


TASKS = ("synthetic", "arithmetic")


def build_task(config: ConfigDict) -> Any:
    """The built-in task `data.task`: `synthetic` (review sentiment with a gold reward) or `arithmetic`
    (sums with a verifiable answer)."""
    from pjax.data import synthetic

    if config.data.task == "arithmetic":
        from pjax.data import arithmetic

        return arithmetic.build_task(arithmetic_config(config))
    return synthetic.build_task(synthetic_config(config))


def load_tokenizer(config: ConfigDict) -> Any:
    from pjax.data.tokenizer import load_tokenizer as load

    try:
        return load(config.data.tokenizer)
    except (OSError, ValueError) as e:
        raise ValueError(f"data.tokenizer={config.data.tokenizer!r}: {e}") from e


def source_identity(spec: str) -> list[Any]:
    """What identifies a data source for the encoding cache: a local file's or directory's path, size
    and modification time; a TFDS or hub name as given."""
    path = Path(spec).expanduser()
    if not path.exists():
        return [spec]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [path.name] + [(str(p.relative_to(path)) if p != path else "", p.stat().st_size,
                           p.stat().st_mtime_ns) for p in files]


def tokenizer_identity(config: ConfigDict) -> list[Any]:
    """The tokenizer's files (with a `tokenizer.json`, the configuration files read beside it)."""
    path = Path(config.data.tokenizer).expanduser()
    if not config.data.tokenizer:
        return ["synthetic", config.data.sp_vocab_size]
    folder = path.parent if path.suffix == ".json" else path
    files = [path] if path.is_file() and path.suffix != ".json" else sorted(
        p for p in folder.glob("*") if p.is_file() and p.suffix in (".json", ".model", ".jinja"))
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def reference_cache_path(config: ConfigDict, arrays: dict[str, np.ndarray]) -> Path:
    """Where precomputed reference log-probs live: in the data cache (`data.cache_dir`), keyed by a hash
    of the reference checkpoint and of the encoded data."""
    meta = checkpoint.export_metadata(config.init_from) if config.init_from else None
    reference_id = (meta["export_id"] if meta else json.dumps(source_identity(config.import_from))
                    if config.import_from else f"fresh-init:{config.seed}")
    model = json.dumps(dataclasses.asdict(model_config(config)), sort_keys=True)  # dtype included
    digest = pipeline.fingerprint(reference_id, model, config.train.logprob_chunk, arrays)
    return Path(synthetic_config(config).cache_dir).expanduser() / f"ref-logps-{digest[:20]}.npz"


def precomputed_reference(setup: Setup, ref_params: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-token reference log-probs of every training row (and of KTO's mismatched rows), computed in
    one pass and cached, so that training runs without a reference forward."""
    config = setup.config
    path = reference_cache_path(config, arrays)
    if path.exists():
        log.info("reference: precomputed log-probs from %s", path)
        with np.load(path) as cached:
            return dict(cached)
    fn = lambda p, t, m: models.sequence_token_logprobs(setup.model_def, p, t, m,  # noqa: E731
                                                         chunk_size=config.train.logprob_chunk)
    out = {}
    kto = any(o.name == "kto" for o, _ in losses.terms(config.loss))
    for prefix in ("", "kl_") if kto else ("",):
        rows = {"tokens": arrays[f"{prefix}tokens"], "mask": arrays[f"{prefix}mask"]}
        out[f"{prefix}ref_logps"] = map_rows(setup, fn, rows, ("tokens", "mask"), ref_params)
    if jax.process_index() == 0:
        _save_npz(path, out)
    log.info("reference: computed log-probs for %d rows, cached at %s", len(arrays["tokens"]), path)
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def arithmetic_config(config: ConfigDict):
    from pjax.data import arithmetic

    d, a = config.data, config.data.arithmetic
    kwargs = dict(seed=d.seed, num_sft=d.num_sft, num_heldout_prompts=d.num_heldout_prompts,
                  max_operand=a.max_operand, operations=a.operations, min_terms=a.min_terms, max_terms=a.max_terms,
                  answer_noise=a.answer_noise, sp_vocab_size=a.sp_vocab_size)
    if d.cache_dir:
        kwargs["cache_dir"] = d.cache_dir
    try:
        return arithmetic.ArithmeticConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"data.arithmetic / data.*: {e}") from e


def synthetic_config(config: ConfigDict):
    from pjax.data import synthetic

    d = config.data
    kwargs = dict(seed=d.seed, num_sft=d.num_sft, num_pairs=d.num_pairs,
                  num_heldout_prompts=d.num_heldout_prompts, num_heldout_pairs=d.num_heldout_pairs,
                  label_noise=d.label_noise, bt_temperature=d.bt_temperature, sp_vocab_size=d.sp_vocab_size)
    if d.cache_dir:
        kwargs["cache_dir"] = d.cache_dir
    return synthetic.SyntheticConfig(**kwargs)


def data_position(config: ConfigDict, data: Data) -> dict[str, Any]:
    """What a checkpoint records of the data (with the step and the input iterator's state): the
    encoded rows whose fingerprint this is, read in the order of `pjax.data.pipeline`."""
    return {"seed": int(config.seed), "batch_size": int(config.train.batch_size),
            "num_rows": int(len(data.arrays["tokens"])), "fingerprint": data.fingerprint}


def check_data_position(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """A resumed run must read the batches the interrupted one would have read."""
    changed = {k: (saved.get(k), v) for k, v in current.items()
               if k not in ("step", "iterator") and saved.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(changed.items()))
        keys = {"seed": "seed", "batch_size": "train.batch_size"}
        named = ", ".join(keys.get(k, "data.*") for k in sorted(changed))
        raise ValueError(f"the data changed since the checkpoint in {where} ({detail}); resuming would not "
                         f"continue the interrupted run. Restore {named} or use a new workdir")


def run(config: ConfigDict) -> dict[str, Any]:
    """Train one phase. Returns a summary with the logged metric history and the export path
    (`preempted` is true when SIGTERM stopped it early, after saving a checkpoint)."""
    validate(config)
    distributed.initialize(config)
    workdir = Path(config.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if distributed.is_leader():
        config_io.save_run_config(workdir, config)  # rerun: --config=pjax/config_io.py:<workdir>
        runinfo.write_run_info(workdir, config)  # one entry per start: versions, commit, command, host
    mesh = sharding.make_mesh(config.mesh.shape)
    rules = sharding.config_rules(config.sharding)
    log.info("phase=%s mesh=%s preset=%s workdir=%s", config.phase, dict(mesh.shape), config.sharding.preset, workdir)
    preemption = distributed.PreemptionWatch()  # from here on, SIGTERM means: save at the next step, stop
    try:
        with jax.set_mesh(mesh), sharding.use_rules(rules):
            return _run_phase(config, mesh, workdir, preemption)
    finally:
        preemption.close()


def _run_phase(config: ConfigDict, mesh: jax.sharding.Mesh, workdir: Path,
               preemption: distributed.PreemptionWatch) -> dict[str, Any]:
    """`run` inside the mesh and rules: data, checkpoints and resume, the reference, the loop."""
    setup = make_setup(config, mesh)
    validate_for_mesh(config, mesh)
    if config.phase == "online":
        from pjax import online

        return online.run(config, setup, workdir, preemption)
    data = load_data(config)
    arrays = data.arrays
    ckpts = checkpoint.PhaseCheckpoints(workdir, keep=config.train.keep_checkpoints,
                                        keep_every=config.train.keep_every,
                                        async_save=config.train.async_checkpoint)
    needs_reference = losses.needs_reference(config.loss)
    has_own = ckpts.latest_step() is not None
    new_head = bool(config.init_from) and new_heads(config.init_from, setup.model_def.cfg)
    if config.init_from and (needs_reference or not has_own):
        checkpoint.check_model_matches(config.init_from, dataclasses.asdict(setup.model_def.cfg),
                                       ignore=HEAD_FIELDS if new_head else ())
    checkpoint.pin_parent(workdir, config.init_from, resuming=has_own)
    imported = (lambda: import_params(setup, config.import_from)) if config.import_from else None
    state, saved_position, source = checkpoint.resume(
        ckpts, config.init_from, setup.abstract_state, fresh=lambda: setup.init_state(config.seed),
        with_params=setup.state_around, import_from=config.import_from, imported=imported,
        parent=(lambda: backbone_with_fresh_head(setup, config.init_from)) if new_head else None)
    position = data_position(config, data)  # of the encoded rows, before any reference columns
    if saved_position is not None:
        check_data_position(saved_position, position, str(ckpts.directory))
    ref_params = ref_scores = None
    if needs_reference:
        if config.init_from:
            ref_params = checkpoint.load_params(config.init_from, setup.abstract_state["params"])
            log.info("reference: frozen parent export %s", config.init_from)
        elif config.import_from:
            ref_params = jax.tree.map(jnp.copy, state["params"]) if source.startswith("import:") else imported()
            log.info("reference: frozen imported checkpoint %s", config.import_from)
        else:
            ref_params = jax.tree.map(jnp.copy, state["params"]) if source == "fresh" else \
                setup.init_state(config.seed)["params"]
            log.warning("reference: no init_from; using the fresh initial params as the reference")
        if data.heldout is not None:  # before a precomputed reference frees the reference params
            ref_scores = heldout_scores(setup, ref_params, data.heldout)
        if config.data.precompute_ref:
            arrays = {**arrays, **precomputed_reference(setup, ref_params, arrays)}
            ref_params = None  # the step reads `ref_logps` from the batch: no reference forward
    heldout = {}
    if data.heldout is not None and int(jax.device_get(state["step"])) == 0:
        # at step 0 the policy is its reference (same source) whenever there is one: one pass, not two
        before = ref_scores if ref_scores is not None else heldout_scores(setup, state["params"], data.heldout)
        heldout["before"] = heldout_metrics(config, before, ref_scores, data.heldout.get("scores"))
    extra_metadata = (lambda params: {"reward_stats": reward_statistics(setup, params, data.arrays)}) \
        if config.phase == "rm" else None
    summary = train_loop(setup, state, ref_params, arrays, ckpts, workdir, source, position, preemption,
                         saved_position, extra_metadata)
    if data.heldout is not None and not summary["preempted"]:
        heldout["after"] = heldout_metrics(config, heldout_scores(setup, summary.pop("params"), data.heldout),
                                           ref_scores, data.heldout.get("scores"))
        summary["heldout"] = heldout
        log.info("held-out (%d rows): %s", len(data.heldout["tokens"]), json.dumps(heldout))
        if distributed.is_leader():
            (workdir / "heldout.json").write_text(json.dumps(heldout, indent=2))
    summary.pop("params", None)
    if data.bad_rows:
        summary["bad_rows"] = data.bad_rows
    return summary


HEAD_FIELDS = ("head", "reward_heads", "value_head", "value_backbone")  # what a partial restore may change


def new_heads(export: str, cfg: LlamaConfig) -> bool:
    """Whether this model has heads its parent export lacks (a partial restore: `backbone_with_fresh_head`)."""
    meta = checkpoint.export_metadata(export)
    if meta is None:
        return False
    model = {**dict(head="lm", reward_heads=1, value_head=False, value_backbone="shared"), **meta.get("model", {})}
    return any(model[k] != getattr(cfg, k) for k in HEAD_FIELDS)


def backbone_with_fresh_head(setup: Setup, export: str) -> Any:
    """A partial restore: the parent export's parameters wherever this model has the same ones
    (embeddings, layers, final norm; the LM head of a policy) and freshly initialised heads elsewhere,
    e.g. a reward model (`score`) from an SFT export (whose LM head is left out), or a PPO policy with a
    new value head (`value`). A separate value model (`critic`) takes its backbone from
    `online.value_from` (e.g. the reward model, as TRL does) or else from the parent, under a fresh value
    head. Placed with the train state's shardings."""
    parent_def, parent, _ = checkpoint.load_export(export, setup.mesh, setup.rules)
    fresh = jax.jit(setup.model_def.init, out_shardings=setup.param_shardings)(jax.random.key(setup.config.seed))
    heads = ("lm_head", "score", "value", "critic")
    params = {k: v for k, v in parent.items() if k in fresh and (k not in heads or k == "lm_head")}
    value_from = setup.config.online.value_from if setup.config.phase == "online" else ""
    if "critic" in fresh and "critic" not in parent:
        source = parent if not value_from else checkpoint.load_export(value_from, setup.mesh, setup.rules)[1]
        params["critic"] = {**{k: source[k] for k in ("embed", "layers", "final_norm")},
                            "value": fresh["critic"]["value"]}
        log.info("value model: backbone from %s, fresh value head", value_from or export)
    params.update({k: v for k, v in fresh.items() if k not in params})
    if jax.tree.structure(params) != jax.tree.structure(fresh) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh))):
        raise ValueError(f"init_from={export!r}{f' and online.value_from={value_from!r}' if value_from else ''}: "
                         f"their parameters ({sorted(parent)}) do not give this model's {sorted(fresh)} under new heads")
    new = sorted("critic.value" if k == "critic" else k for k in fresh if k not in parent)
    log.info("partial restore: %s from %s (head %r), fresh %s", sorted(k for k in params if k in parent), export,
             parent_def.cfg.head, new)
    return params


def import_params(setup: Setup, path: str) -> Any:
    """Parameters of a Hugging Face checkpoint directory or a GGUF file (`import_from`), placed with the
    train state's shardings; its architecture must match the configured model (the keys that differ
    are named)."""
    from pjax.models import gguf, hf

    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"import_from={path!r}: no such file or directory")
    is_gguf = source.suffix == ".gguf"
    theirs = gguf.config_from_gguf(source) if is_gguf else hf.config_from_hf(
        json.loads((source / "config.json").read_text()))
    ours = dataclasses.asdict(setup.model_def.cfg)
    ignored = ("max_seq_len", "param_dtype", "dtype", "remat", "scan_layers", "head")
    diff = {k: (v, ours[k]) for k, v in theirs.items() if k in ours and k not in ignored and
            checkpoint._norm(v) != checkpoint._norm(ours[k])}
    if diff:
        detail = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"import_from={path!r} does not match the configured model: {detail}")
    loader = gguf.load_params if is_gguf else hf.load_params
    return loader(source, setup.model_def, setup.param_shardings)


def map_rows(setup: Setup, fn: Callable, arrays: dict[str, np.ndarray], keys: tuple[str, ...],
             params: Any) -> np.ndarray:
    """`fn(params, *arrays[keys])` over every row in batches of `train.batch_size` (the last one wraps
    around, its extra rows dropped), jitted once, every result gathered on every host."""
    jitted = jax.jit(fn, out_shardings=NamedSharding(setup.mesh, PartitionSpec()))
    bs, n = setup.config.train.batch_size, len(arrays[keys[0]])
    parts = []
    for i in range(0, n, bs):
        idx = np.arange(i, i + bs) % n
        batch = setup.device_batch({k: np.asarray(arrays[k][idx]) for k in keys})
        parts.append(np.asarray(jax.device_get(jitted(params, *(batch[k] for k in keys)))))
    return np.concatenate(parts)[:n]


def heldout_scores(setup: Setup, params: Any, heldout: dict[str, np.ndarray]) -> np.ndarray | None:
    """Scores of the held-out rows (`data.num_heldout`): for pairs `[N, 2]` summed completion log-probs;
    for single sequences `[N, 2]` their summed log-prob and scored tokens; for a reward model its
    rewards (`[N, 2]` pairs, `[N, K]` lists, `[N]` scored rows; an ensemble's aggregated with
    `reward.aggregate`). None for a policy's lists."""
    config, model_def = setup.config, setup.model_def
    keys = ("tokens", "mask", "completion_mask")
    if config.phase == "rm":
        rc = config.reward

        def rewards(p, t, m, c):
            r = models.sequence_rewards(model_def, p, t, m)
            return losses.aggregate_rewards(r, rc.aggregate, rc.uwo_lambda) if model_def.cfg.reward_heads > 1 else r

        return map_rows(setup, rewards, heldout, keys, params)
    pairs = heldout["tokens"].ndim == 3 and heldout["tokens"].shape[1] == 2
    if not pairs and heldout["tokens"].ndim != 2:
        return None

    def fn(p, t, m, c):
        lp = (models.sequence_token_logprobs(model_def, p, t, m, chunk_size=config.train.logprob_chunk)
              * c[..., 1:]).sum(-1)
        return lp if pairs else jnp.stack([lp, c[..., 1:].sum(-1).astype(jnp.float32)], -1)

    return map_rows(setup, fn, heldout, keys, params)


def ordered_pair_accuracy(values: np.ndarray, targets: np.ndarray) -> float:
    """Over all pairs (i, j) within a row of `targets` `[..., K]` with targets_i > targets_j, the fraction
    with values_i > values_j (ties in values count half)."""
    better = targets[..., :, None] > targets[..., None, :]
    right = (values[..., :, None] > values[..., None, :]) + 0.5 * (values[..., :, None] == values[..., None, :])
    return float((right * better).sum() / max(better.sum(), 1))


def heldout_metrics(config: ConfigDict, scores: np.ndarray | None, ref_scores: np.ndarray | None,
                    targets: np.ndarray | None = None) -> dict[str, float]:
    """Held-out figures from `heldout_scores`: how often the chosen completion gets the higher summed
    log-prob (`logp_accuracy`); with the reference's scores, how often it gets the higher implicit
    reward rho = log pi/pi_ref (`implicit_reward_accuracy`, ties count half, so 0.5 at the start) and
    the mean beta * (rho_chosen - rho_rejected); for a reward model, how often the better completion
    gets the higher reward (`reward_accuracy`: r_chosen > r_rejected for pairs, every score-ordered pair
    of a list, every pair of scored rows) and for scored rows the `reward_mse` to the scores (`targets`);
    for single sequences (SFT), the token-mean negative log-likelihood of the completions."""
    if scores is None:
        return {}
    kind = losses.data_kind(config.loss)
    if config.phase == "rm":
        if kind == "PAIR":
            return {"reward_accuracy": float(np.mean(scores[:, 0] > scores[:, 1]))}
        out = {"reward_accuracy": ordered_pair_accuracy(scores, targets)}
        if kind == "SCORE":
            out["reward_mse"] = float(np.mean((scores - targets) ** 2))
        return out
    if kind in ("SEQ", "UNP"):
        return {"nll": float(-scores[:, 0].sum() / max(scores[:, 1].sum(), 1.0))}
    out = {"logp_accuracy": float(np.mean(scores[:, 0] > scores[:, 1]))}
    if ref_scores is not None:
        margin = (scores - ref_scores) @ np.array([1.0, -1.0])
        out["implicit_reward_accuracy"] = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
        out["reward_margin"] = float(config.loss.beta * margin.mean())
    return out


def reward_statistics(setup: Setup, params: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each reward head's mean and std over the completions of up to `reward.stats_rows` training rows
    (a seeded sample; every completion of a pair or list), recorded in the RM export so that rewards
    can be standardised downstream (`pjax.rewards`)."""
    config = setup.config
    n = len(arrays["tokens"])
    rows = np.sort(np.random.default_rng(config.seed).permutation(n)[:config.reward.stats_rows])
    sample = {k: arrays[k][rows] for k in ("tokens", "mask")}
    rewards = map_rows(setup, lambda p, t, m: models.sequence_rewards(setup.model_def, p, t, m), sample,
                       ("tokens", "mask"), params)
    per_head = rewards.reshape(-1, setup.model_def.cfg.reward_heads).astype(np.float64)
    return {"mean": per_head.mean(0).tolist(), "std": per_head.std(0).tolist(), "rows": int(len(rows)),
            "count": int(len(per_head))}


def first_nonfinite(fetched: list[tuple[int, dict[str, float]]]) -> tuple[int, list[str]] | None:
    """(step, names) of the first step whose loss, gradient norm or updated params are not finite,
    with every other non-finite metric of that step named too."""
    for step, metrics in fetched:
        if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]) and metrics["params_finite"]):
            names = sorted(k for k, v in metrics.items() if not np.isfinite(v))
            return step, names + ([] if metrics["params_finite"] else ["params (after the update)"])
    return None


def train_loop(setup: Setup, state: State, ref_params: Any, arrays: dict[str, np.ndarray],
               ckpts: checkpoint.PhaseCheckpoints, workdir: Path, source: str, position: dict[str, Any],
               preemption: distributed.PreemptionWatch, saved_position: dict[str, Any] | None = None,
               extra_metadata: Callable[[Any], dict[str, Any]] | None = None) -> dict:
    """Steps from the state's own step to `train.steps`; each host feeds only its rows of each batch.
    The final params are exported with the run's metadata plus `extra_metadata(params)` (e.g. a reward
    model's reward statistics).

    Metrics stay on the device until a log, save or preemption step, when every step's since the
    last such point is checked: a non-finite loss or gradient stops the run (naming the step, the
    metric and the last good checkpoint) before anything is saved.
    """
    config = setup.config
    tc = config.train
    step_fn = TrainStep(setup)
    start = int(jax.device_get(state["step"]))
    if start > tc.steps:
        raise ValueError(f"train.steps={tc.steps} is below the step {start} of the checkpoint in "
                         f"{ckpts.directory}; raise train.steps or use a new workdir")
    iterator_state = (saved_position or {}).get("iterator") or pipeline.start_state(start)
    if iterator_state != pipeline.start_state(start):
        raise ValueError(f"the checkpoint in {ckpts.directory} is at step {start} but its input iterator at "
                         f"{iterator_state}: the checkpoint is inconsistent; use an older step or a new workdir")
    batches = pipeline.HostBatches(arrays, batch_size=tc.batch_size, seed=config.seed,
                                   rows=setup.local_rows(tc.batch_size), state=iterator_state)
    writer = MetricWriter(workdir, config, resume_step=start)
    history: list[dict[str, float]] = []
    progress = None
    if tc.progress and distributed.is_leader():
        from tqdm import tqdm

        progress = tqdm(total=tc.steps, initial=start, desc=config.phase, dynamic_ncols=True,
                        disable=None)  # None: shown on a terminal, silent in logs
    pending: list[tuple[int, dict]] = []
    tokens, t0, preempted = 0, time.perf_counter(), False
    try:
        for step in range(start, tc.steps):
            local = next(batches)
            state, metrics = step_fn(state, ref_params, setup.put_batch(local, tc.batch_size))
            done = step + 1
            pending.append((done, metrics))
            if step == start:  # keep compilation out of the throughput figures
                jax.block_until_ready(metrics)
                t0 = time.perf_counter()
            preempted = preemption.reached(done) and done < tc.steps
            log_now, save_now = done % tc.log_every == 0 or done == tc.steps, done % tc.save_every == 0
            if log_now or save_now or preempted:
                fetched = [(n, {k: float(v) for k, v in m.items()}) for n, m in jax.device_get(pending)]
                pending = []
                bad = first_nonfinite(fetched)
                if bad is not None:
                    ckpts.wait()
                    last = ckpts.latest_step()
                    last = f"step {last} in {ckpts.directory}" if last is not None else "none yet"
                    raise FloatingPointError(
                        f"non-finite {', '.join(bad[1])} at step {bad[0]}: stopped without saving. Last good "
                        f"checkpoint: {last} (a rerun resumes there; lower optim.lr or check the data). "
                        f"Metrics of step {bad[0]}: {dict(fetched)[bad[0]]}")
                tokens += sum(int(m["batch_tokens"]) for n, m in fetched if n > start + 1)
                metrics = fetched[-1][1]
            if log_now:
                elapsed = time.perf_counter() - t0
                metrics["tokens_per_sec"] = tokens / elapsed if tokens else float("nan")
                tokens, t0 = 0, time.perf_counter()
                writer.write(done, metrics)
                history.append({"step": done, **metrics})
                if progress is not None:
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_sec']:.0f}")
            if progress is not None:
                progress.update(1)
            if (save_now or preempted) and done != tc.steps:
                ckpts.save(done, state, {**position, "step": done, "iterator": batches.state()}, force=preempted)
            if preempted:
                break
    finally:
        if progress is not None:
            progress.close()
        writer.close()
    summary = {"history": history, "export": str(workdir / "export"), "workdir": str(workdir), "source": source,
               "preempted": preempted, "params": state["params"]}
    if preempted:
        ckpts.close()
        log.warning("preempted (SIGTERM) at step %d: checkpoint saved in %s; run the same command again to "
                    "resume", int(jax.device_get(state["step"])), ckpts.directory)
        return summary
    if ckpts.latest_step() != tc.steps:
        ckpts.save(tc.steps, state, {**position, "step": tc.steps, "iterator": batches.state()}, force=True)
    ckpts.close()
    export_dir = workdir / "export"
    existing = checkpoint.export_metadata(export_dir)
    if start == tc.steps and existing is not None and existing.get("step") == tc.steps:
        log.info("phase already complete at step %d; keeping its export %s", tc.steps, export_dir)
        return summary
    checkpoint.export_params(export_dir, state["params"], {
        "phase": config.phase, "step": tc.steps, "model": dataclasses.asdict(setup.model_def.cfg),
        "init_from": config.init_from,
        "resumed_from": source, "loss": dict(config.loss), "data": dict(config.data),
        **(extra_metadata(state["params"]) if extra_metadata else {}),
    })
    log.info("exported params to %s", export_dir)
    return summary


def main(argv) -> None:
    del argv
    logs.configure()
    distributed.initialize(_CONFIG.value)  # before anything starts JAX's backend
    logs.configure(process_index=jax.process_index(), process_count=jax.process_count())
    summary = run(_CONFIG.value)
    last = summary["history"][-1] if summary["history"] else {}
    if distributed.is_leader():
        print(json.dumps({"export": None if summary["preempted"] else summary["export"],
                          "preempted": summary["preempted"], "final": last}, indent=2))


if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config .py file.", lock_config=True)
    app.run(main)
