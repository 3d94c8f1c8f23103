"""Online policy optimisation (`phase='online'`, `online.algorithm`): sample, score, update, repeat.

Each iteration (one of `train.steps`):
1. `online.prompts_per_iteration` prompts (a seeded order over the task's prompts; the iteration is the
   data position of a checkpoint), each sampled `online.samples_per_prompt` times at
   `online.temperature` with the *current* params (`pjax.generate`: KV cache, on the training mesh);
   the sampler's log-probs are the "old" log-probs (they equal the training path's, at logits / T).
2. Rewards: `online.reward` = `gold` (the task's gold or verifiable reward), `rm` (`reward.models`,
   standardised with their recorded statistics, ensembles aggregated) or `python:<module>:<function>`
   (`fn(prompts, completions) -> rewards`); minus `online.missing_eos_penalty` for a completion that
   hit the length limit without a stop token.
3. Advantages, by algorithm (`pjax.losses.online`):
   - `ppo`: the reward at the last token minus `online.kl_coef` x the KL estimate to the reference at
     every token (`online.kl_target` > 0: the coefficient adapts), GAE (`online.gamma`, `online.lam`)
     over the values of a value head (`model.value_head`) on the policy's backbone or on a separate value
     model's (`model.value_backbone='separate'`, its backbone from `online.value_from` or the parent), whitened; clipped
     policy and value losses (`online.vf_coef`, `online.vf_clip`);
   - `grpo`: group-normalised rewards (`online.scale_rewards`), PPO-clipped token ratios aggregated as
     `online.loss_aggregation` (grpo | dr_grpo | dapo), optional k3 KL to the reference (`online.kl_coef`);
   - `rloo`: leave-one-out baseline, sequence-level clipped ratio (Ahmadian et al. 2024);
   - `online_dpo`: the best and the worst sample of each prompt become a preference pair for any pairwise
     objective of the catalogue (`loss.name`, e.g. dpo, ipo; the reference's log-probs from the rollout);
     a prompt whose samples all score the same adds no gradient (RLHF Workflow; Guo et al. 2024);
   - `xpo`: one policy and one reference sample per prompt, ordered by the reward, the pairwise objective
     plus `online.xpo_alpha` x the policy's log-prob of the reference's sample (Xie et al. 2024; TRL's XPO);
   - `raft`: the best completion of each group is fine-tuned on (RAFT / best-of-N SFT, iterated);
   - `nash_md`: each policy sample y is compared with a sample y' of the geometric mixture
     pi^(1-beta) pi_ref^beta (`online.mixture_coef` = beta; `pjax.generate.generate_mixture`) by a pairwise
     judge built from the reward, P(y > y') = sigmoid(r(y) - r(y')); REINFORCE on P - 1/2 plus
     `online.kl_coef` x the KL to the reference (Munos et al. 2024; TRL's Nash-MD).
4. `online.epochs` passes over `online.num_minibatches` minibatches, each one optimizer step of the
   generic `pjax.train.TrainStep` with the algorithm's loss.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from pjax import checkpoint, distributed, generate, models
from pjax.losses import online as ol
from pjax.metrics import MetricWriter

log = logging.getLogger("pjax")

ALGORITHMS = ("ppo", "grpo", "rloo", "online_dpo", "xpo", "raft", "nash_md")
PAIRWISE = ("online_dpo", "xpo")  # train a pairwise objective of the catalogue on sampled pairs
OPPONENTS = ("xpo", "nash_md")  # each policy sample meets a sample of the reference (xpo) or of the mixture


def validate(config: ConfigDict) -> None:
    o = config.online
    if o.algorithm not in ALGORITHMS:
        raise ValueError(f"online.algorithm={o.algorithm!r}: expected one of {ALGORITHMS}")
    for key in ("prompts_per_iteration", "samples_per_prompt", "epochs", "num_minibatches"):
        if o[key] <= 0:
            raise ValueError(f"online.{key}={o[key]} must be positive")
    if o.samples_per_prompt < 2 and o.algorithm in ("grpo", "rloo"):
        raise ValueError(f"online.samples_per_prompt={o.samples_per_prompt}: {o.algorithm} compares the samples "
                         "of a prompt with each other; it needs at least 2")
    if o.samples_per_prompt < 2 and o.algorithm == "online_dpo":
        raise ValueError(f"online.samples_per_prompt={o.samples_per_prompt}: online_dpo pairs the best and the "
                         "worst sample of each prompt; it needs at least 2")
    if o.algorithm == "xpo" and o.samples_per_prompt != 1:
        raise ValueError(f"online.samples_per_prompt={o.samples_per_prompt}: xpo pairs one policy sample with one "
                         "reference sample per prompt; set it to 1")
    if o.algorithm in PAIRWISE:
        from pjax import losses

        kind = losses.data_kind(config.loss)
        if kind != "PAIR" or losses.trains(config.loss) != "policy":
            raise ValueError(f"online.algorithm={o.algorithm!r} trains a pairwise policy objective; loss.name="
                             f"{config.loss.name!r} has data shape {kind}")
        if o.prompts_per_iteration % o.num_minibatches:
            raise ValueError(f"online.num_minibatches={o.num_minibatches} does not divide the "
                             f"{o.prompts_per_iteration} pairs of an iteration (online.prompts_per_iteration)")
    rows = o.prompts_per_iteration * o.samples_per_prompt
    if rows % o.num_minibatches:
        raise ValueError(f"online.num_minibatches={o.num_minibatches} does not divide the {rows} samples of an "
                         f"iteration (online.prompts_per_iteration x online.samples_per_prompt)")
    if o.temperature <= 0:
        raise ValueError(f"online.temperature={o.temperature} must be positive (sampling, and log-probs at logits / T)")
    if not (o.reward in ("gold", "rm") or o.reward.startswith("python:")):
        raise ValueError(f"online.reward={o.reward!r}: expected 'gold', 'rm' or 'python:<module>:<function>'")
    if o.reward == "rm" and not config.reward.models:
        raise ValueError("online.reward='rm' needs reward.models (reward-model exports)")
    if o.loss_aggregation not in ol.AGGREGATIONS:
        raise ValueError(f"online.loss_aggregation={o.loss_aggregation!r}: expected one of {ol.AGGREGATIONS}")
    if o.algorithm == "ppo" and not config.model.value_head:
        raise ValueError("online.algorithm='ppo' needs a value head: set model.value_head=True (a per-token value "
                         "head, started fresh; on the policy's backbone, or model.value_backbone='separate')")
    if o.algorithm == "nash_md" and o.epochs != 1:
        raise ValueError(f"online.epochs={o.epochs}: nash_md is REINFORCE without importance ratios; a second pass "
                         "over the same samples would be off-policy (set it to 1)")
    if o.value_from and not Path(o.value_from).expanduser().exists():
        raise FileNotFoundError(f"online.value_from={o.value_from!r}: no such export")
    if o.value_from and config.model.value_backbone != "separate":
        raise ValueError(f"online.value_from={o.value_from!r} initialises a separate value model's backbone: set "
                         "model.value_backbone='separate'")
    if o.kl_estimator not in ol.KL_ESTIMATORS:
        raise ValueError(f"online.kl_estimator={o.kl_estimator!r}: expected one of {ol.KL_ESTIMATORS}")
    if o.scale_rewards not in ol.GROUP_SCALES:
        raise ValueError(f"online.scale_rewards={o.scale_rewards!r}: expected one of {ol.GROUP_SCALES}")
    if not 0.0 <= o.mixture_coef <= 1.0:
        raise ValueError(f"online.mixture_coef={o.mixture_coef}: nash_md's geometric-mixture weight of the "
                         "reference must be in [0, 1]")
    if o.kl_coef and o.algorithm in ("raft", *PAIRWISE):
        raise ValueError(f"online.kl_coef={o.kl_coef}: {o.algorithm} does not use it (pairwise objectives have "
                         "loss.beta; raft none); set it to 0")
    if o.kl_target and (o.algorithm != "ppo" or not o.kl_coef):
        raise ValueError(f"online.kl_target={o.kl_target} adapts PPO's online.kl_coef, which must then be > 0")
    if config.model.value_head and o.algorithm != "ppo":
        raise ValueError(f"model.value_head=True: only ppo trains a value head (online.algorithm={o.algorithm!r})")
    if (o.top_k or o.top_p < 1.0) and o.algorithm in ("ppo", "grpo", "rloo", "nash_md"):
        raise ValueError(f"online.top_k={o.top_k} / online.top_p={o.top_p}: {o.algorithm}'s importance ratios and "
                         "KL need samples from the policy itself (log-probs at logits / T); use top_k=0, top_p=1")
    if config.train.grad_accum != 1:
        raise ValueError("train.grad_accum: online phases split an iteration into online.num_minibatches instead")


def updates_per_iteration(config: ConfigDict) -> int:
    return int(config.online.epochs * config.online.num_minibatches)


def make_loss_fn(config: ConfigDict, model_def: models.ModelDef) -> Callable:
    """`loss_fn(params, ref_params, batch, loss_state) -> (loss, (metrics, loss_state))` of the online
    algorithm. The batch holds the rollout: tokens/mask/completion_mask `[B, L]`, the sampler's
    `old_logps` and the reference's `ref_logps` `[B, L-1]`, `advantages` `[B]` (grpo, rloo) or `weights`
    `[B]` (raft: 1 on the rows fine-tuned on)."""
    o = config.online
    T = float(o.temperature)
    max_new = int(config.generate.max_new_tokens)
    if o.algorithm in PAIRWISE:  # the catalogue's pairwise objective (loss.*) on sampled pairs
        from pjax import train

        offline = copy.deepcopy(config)
        offline.phase = "dpo"
        pairwise = train.make_loss_fn(offline, model_def, temperature=T)  # the reference's log-probs: the batch's
        if o.algorithm == "online_dpo":
            return pairwise

        def xpo_loss_fn(params, ref_params, batch, loss_state):
            """XPO (Xie et al. 2024): the pairwise loss plus alpha x the policy's log-prob of the reference's
            samples (summed over their tokens, averaged over prompts): exploration away from pi_ref."""
            pairs = {k: v for k, v in batch.items() if not k.startswith("xpo_")}
            loss, (metrics, state) = pairwise(params, ref_params, pairs, loss_state)
            lp = models.sequence_token_logprobs(model_def, params, batch["xpo_tokens"], batch["xpo_mask"],
                                                chunk_size=config.train.logprob_chunk, temperature=T)
            explore = (lp * batch["xpo_completion_mask"][:, 1:]).sum(-1).mean()
            return loss + o.xpo_alpha * explore, ({**metrics, "xpo/ref_sample_logp": explore}, state)

        return xpo_loss_fn

    def loss_fn(params, ref_params, batch, loss_state):
        if o.algorithm == "ppo":
            logps, values = models.sequence_logprobs_and_values(model_def, params, batch["tokens"], batch["mask"],
                                                                chunk_size=config.train.logprob_chunk, temperature=T)
        else:
            logps = models.sequence_token_logprobs(model_def, params, batch["tokens"], batch["mask"],
                                                   chunk_size=config.train.logprob_chunk, temperature=T)
        mask = batch["completion_mask"][:, 1:].astype(jnp.float32)
        # how far the params being trained are from those the samples were drawn with (0 at the first update)
        metrics = {"logp_diff_max": jax.lax.stop_gradient(jnp.abs(logps - batch["old_logps"]) * mask).max()}
        if o.algorithm == "raft":
            w = batch["weights"]
            tokens = (mask * w[:, None]).sum()
            loss = -(logps * mask * w[:, None]).sum() / jnp.maximum(tokens, 1.0)
            metrics["nll"] = loss
        elif o.algorithm == "ppo":  # token-level advantages (GAE); the value loss on the shared backbone
            policy_loss, m = ol.ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, o.clip_eps,
                                                o.clip_eps_high or o.clip_eps, "dapo")
            value_loss, vm = ol.ppo_value_loss(values, batch["old_values"], batch["returns"], mask, o.vf_clip)
            loss = policy_loss + o.vf_coef * value_loss
            metrics.update({**m, **vm, "policy_loss": policy_loss, "value_loss": value_loss})
        elif o.algorithm == "nash_md":
            loss, m = ol.nash_md_loss(logps, batch["ref_logps"], mask, batch["preference"], o.kl_coef)
            metrics.update(m)
        elif o.algorithm == "grpo":
            loss, m = ol.ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, o.clip_eps,
                                         o.clip_eps_high or o.clip_eps, o.loss_aggregation, max_len=max_new,
                                         ref_logp=batch["ref_logps"] if o.kl_coef else None, kl_coef=o.kl_coef,
                                         kl_kind=o.kl_estimator)
            metrics.update(m)
        else:  # rloo
            seq = (logps * mask).sum(-1)
            old = (batch["old_logps"] * mask).sum(-1)
            loss, m = ol.rloo_loss(seq, old, batch["advantages"], o.clip_eps, o.clip_eps_high or o.clip_eps)
            metrics.update(m)
        return loss, (metrics, loss_state)

    return loss_fn


@dataclasses.dataclass
class Prompts:
    """The task's prompts (left-padded `[N, P]`, with their text) and its reward of a completion."""

    tokens: np.ndarray
    mask: np.ndarray
    texts: list[str]
    gold: Callable[[list[str], list[str]], np.ndarray] | None


def load_prompts(config: ConfigDict) -> tuple[Any, Prompts]:
    """(tokenizer, prompts) of the phase: the built-in task's training prompts (`data.task`), or the
    prompts of `data.path` (any TRL format with a prompt; conversations rendered with the template)."""
    from pjax import train
    from pjax.data import batching, chat

    d = config.data
    if d.path:
        from pjax.data import sources

        tok = train.load_tokenizer(config) if d.tokenizer else train.build_task(config).tokenizer
        rows, _ = sources.load_records(d.path, "PROMPT", split=d.split, bad_rows=d.bad_rows,
                                       data_dir=d.tfds_data_dir or None, format=d.format)
        texts = [r["prompt"] for r in rows]
        template = chat.resolve_template(tok, d.chat_template) if (d.chat_template or tok.chat_template) else None
        enc = batching.encode_prompts(tok, texts, d.max_prompt_len, template=template)
        shown = [t if isinstance(t, str) else tok.decode(e[m > 0]) for t, e, m in zip(texts, enc["tokens"], enc["mask"])]
        return tok, Prompts(enc["tokens"], enc["mask"], shown, None)
    task = train.build_task(config)
    texts = list(dict.fromkeys(p for p, _ in task.sft))
    if getattr(task, "reward", None) is not None:  # verifiable: the reward reads the prompt and the completion
        gold = lambda ps, cs: np.array([task.reward(p, c) for p, c in zip(ps, cs)], np.float64)  # noqa: E731
    else:
        gold = lambda ps, cs: np.array([task.gold_reward(c) for c in cs], np.float64)  # noqa: E731
    enc = batching.encode_prompts(task.tokenizer, texts, d.max_prompt_len)
    return task.tokenizer, Prompts(enc["tokens"], enc["mask"], texts, gold)


def python_reward(spec: str) -> Callable[[list[str], list[str]], np.ndarray]:
    """`python:<module>:<function>` -> the function, called as fn(prompts, completions) -> rewards."""
    try:
        _, module, name = spec.split(":")
        fn = getattr(importlib.import_module(module), name)
    except (ValueError, ImportError, AttributeError) as e:
        raise ValueError(f"online.reward={spec!r}: cannot load it ({e}); expected python:<module>:<function>") from e
    return lambda ps, cs: np.asarray(fn(ps, cs), np.float64)


class Scorer:
    """Rewards of the rollouts: online.reward, minus online.missing_eos_penalty where it applies."""

    def __init__(self, config: ConfigDict, setup, prompts: Prompts, tokenizer):
        o = config.online
        self.penalty, self.stop_ids = float(o.missing_eos_penalty), np.asarray(tokenizer.stop_ids)
        if o.reward == "rm":
            from pjax.rewards import RewardModel

            rm = RewardModel.from_config(config, setup.mesh, setup.rules)
            self.fn = lambda ps, cs, samples: rm(samples["tokens"], samples["mask"])
        elif o.reward == "gold":
            if prompts.gold is None:
                raise ValueError("online.reward='gold': the task has no gold reward (data.path); use 'rm' or python:")
            self.fn = lambda ps, cs, samples: prompts.gold(ps, cs)
        else:
            fn = python_reward(o.reward)
            self.fn = lambda ps, cs, samples: fn(ps, cs)

    def __call__(self, prompts: list[str], completions: list[str], samples: dict) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, ended_with_a_stop_token) of each sample."""
        rewards = np.asarray(self.fn(prompts, completions, samples), np.float64)
        last = samples["completion"][np.arange(len(rewards)), np.maximum(samples["lengths"] - 1, 0)]
        ended = (samples["lengths"] > 0) & np.isin(last, self.stop_ids)
        return rewards - self.penalty * (~ended), ended


def sampler_logps(samples: dict) -> np.ndarray:
    """The sampler's log-probs `[B, L-1]` at the training path's positions (completion token i sits at
    P + i and is predicted at P + i - 1; 0 elsewhere)."""
    B, L = samples["tokens"].shape
    P = L - samples["completion"].shape[1]
    out = np.zeros((B, L - 1), np.float32)
    out[:, P - 1:] = samples["logprobs"]
    return out


def rollout_batch(config: ConfigDict, samples: dict, rewards: np.ndarray, ref_logps: np.ndarray | None,
                  values: np.ndarray | None = None, kl_coef: float = 0.0) -> dict[str, np.ndarray]:
    """The training batch of one iteration's samples: the sampler's log-probs placed at the training
    path's positions, and the algorithm's advantages (or RAFT's row weights). PPO: the score at the last
    completion token minus kl_coef x the KL estimate at every token, GAE over the values at rollout
    (`values`), advantages whitened over the batch's tokens."""
    o = config.online
    G = o.samples_per_prompt
    tokens = samples["tokens"]
    B = len(tokens)
    old = sampler_logps(samples)
    batch = {"tokens": tokens, "mask": samples["mask"], "completion_mask": samples["completion_mask"],
             "old_logps": old}
    r = jnp.asarray(rewards, jnp.float32)
    if o.algorithm in PAIRWISE:
        # [P, 2, L]: the best (chosen) and the worst (rejected) of each group: online_dpo's G policy samples,
        # xpo's policy sample (row p) and reference sample (row P + p), given here as groups of 2
        if o.algorithm == "xpo":
            half = B // 2
            order = np.stack([np.arange(half), half + np.arange(half)], 1).reshape(-1)
            batch = {k: v[order] for k, v in batch.items()}
            rewards, ref_logps, G = rewards[order], ref_logps[order], 2
        grouped = rewards.reshape(-1, G)
        best, worst = grouped.argmax(1) + np.arange(0, B, G), grouped.argmin(1) + np.arange(0, B, G)
        tie = grouped.max(1) == grouped.min(1)
        worst = np.where(tie, best, worst)  # no preference: chosen = rejected, whose log-ratio difference is 0
        pick = np.stack([best, worst], 1)  # (no gradient from a pairwise term; RPO/ORPO-style NLL terms remain)
        pairs = {k: batch[k][pick] for k in ("tokens", "mask", "completion_mask")}
        pairs["ref_logps"] = ref_logps[pick].astype(np.float32)
        if o.algorithm == "xpo":  # the reference's samples, for the exploration term
            pairs.update({f"xpo_{k}": batch[k][1::2] for k in ("tokens", "mask", "completion_mask")})
        return pairs
    if o.algorithm == "nash_md":  # rows [0, B/2): policy samples; [B/2, B): their mixture opponents
        half = B // 2
        batch = {k: v[:half] for k, v in batch.items()}
        batch["preference"] = np.asarray(ol.bradley_terry_preference(rewards[:half], rewards[half:]))
        batch["ref_logps"] = ref_logps[:half].astype(np.float32)
        return batch
    if o.algorithm == "ppo":
        mask = jnp.asarray(samples["completion_mask"][:, 1:], jnp.float32)
        token_rewards, _ = ol.ppo_token_rewards(r, jnp.asarray(old), jnp.asarray(ref_logps), mask, kl_coef,
                                                o.kl_estimator)
        adv, returns = ol.gae(token_rewards, jnp.asarray(values), mask, o.gamma, o.lam)
        if o.whiten_advantages:
            adv = ol.masked_whiten(adv, mask)
        batch.update(advantages=np.asarray(adv), returns=np.asarray(returns), old_values=values.astype(np.float32))
    elif o.algorithm == "grpo":
        batch["advantages"] = np.asarray(ol.group_advantages(r, G, scale=o.scale_rewards))
    elif o.algorithm == "rloo":
        if o.kl_coef:  # TRL's RLOO: the sequence KL to the reference folded into the reward
            mask = samples["completion_mask"][:, 1:]
            r, _ = ol.sequence_kl_rewards(r, jnp.asarray((old * mask).sum(-1)), jnp.asarray((ref_logps * mask).sum(-1)),
                                          o.kl_coef)
        batch["advantages"] = np.asarray(ol.rloo_advantages(r, G))
    else:
        grouped = rewards.reshape(-1, G)
        best = grouped.argmax(1) + np.arange(0, B, G)
        batch["weights"] = np.zeros(B, np.float32)
        batch["weights"][best] = grouped.max(1) > grouped.min(1)  # a group whose samples all tie teaches nothing
    if ref_logps is not None:
        batch["ref_logps"] = ref_logps.astype(np.float32)
    return batch


def run(config: ConfigDict, setup, workdir: Path, preemption) -> dict[str, Any]:
    """The online phase inside `pjax.train.run`'s mesh and rules (see the module docstring)."""
    from pjax import train

    o = config.online
    tok, prompts = load_prompts(config)
    ckpts = checkpoint.PhaseCheckpoints(workdir, keep=config.train.keep_checkpoints,
                                        keep_every=config.train.keep_every,
                                        async_save=config.train.async_checkpoint)
    has_own = ckpts.latest_step() is not None
    new_head = bool(config.init_from) and train.new_heads(config.init_from, setup.model_def.cfg)
    if config.init_from and not has_own:
        checkpoint.check_model_matches(config.init_from, dataclasses.asdict(setup.model_def.cfg),
                                       ignore=train.HEAD_FIELDS if new_head else ())
    checkpoint.pin_parent(workdir, config.init_from, resuming=has_own)
    state, saved, source = checkpoint.resume(
        ckpts, config.init_from, setup.abstract_state, fresh=lambda: setup.init_state(config.seed),
        with_params=setup.state_around,
        parent=(lambda: train.backbone_with_fresh_head(setup, config.init_from)) if new_head else None)
    position = {"seed": int(config.seed), "prompts": len(prompts.texts),
                "fingerprint": train.pipeline.fingerprint(prompts.tokens, prompts.mask),
                **{f"online.{k}": o[k] for k in ("algorithm", "prompts_per_iteration", "samples_per_prompt",
                                                 "epochs", "num_minibatches", "temperature")}}
    if saved is not None:
        train.check_data_position(saved, position, str(ckpts.directory))
    if o.prompts_per_iteration > len(prompts.texts):
        raise ValueError(f"online.prompts_per_iteration={o.prompts_per_iteration} exceeds the {len(prompts.texts)} "
                         "prompts of the task")
    if config.init_from:  # the reference (its KL is logged for every algorithm), as the parent exported it
        ref_def, ref_params, _ = checkpoint.load_export(config.init_from, setup.mesh, setup.rules)
    else:
        ref_def, ref_params = setup.model_def, setup.init_state(config.seed)["params"]
        log.warning("online: no init_from; the reference is the fresh initial params")
    kl_coef = float((saved or {}).get("kl_coef", o.kl_coef))
    scorer = Scorer(config, setup, prompts, tok)
    T, G, P = float(o.temperature), int(o.samples_per_prompt), int(o.prompts_per_iteration)
    stop_ids = tuple(tok.stop_ids)
    # every function of the rollout runs on the training mesh (rows split like a training batch, parameters
    # where they are) and returns its result replicated, so that every host scores the whole iteration
    replicated = NamedSharding(setup.mesh, PartitionSpec())
    kw = dict(max_new_tokens=config.generate.max_new_tokens, eos_id=stop_ids, pad_id=tok.pad_id, temperature=T,
              top_k=o.top_k, top_p=o.top_p)

    def policy_samples_fn(params, ref_params, tokens, mask, rng_data, it):
        rng = jax.random.fold_in(jax.random.wrap_key_data(rng_data), it)
        return generate.generate(setup.model_def, params, tokens, mask, rng, **kw)

    def opponent_samples_fn(params, ref_params, tokens, mask, rng_data, it):
        rng = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng_data), it), 1)
        if o.algorithm == "xpo":  # the reference's samples
            return generate.generate(ref_def, ref_params, tokens, mask, rng, **kw)
        return generate.generate_mixture(setup.model_def, params, ref_def, ref_params, o.mixture_coef, tokens, mask,
                                         rng, **kw)

    sample_policy = jax.jit(policy_samples_fn, out_shardings=replicated)
    sample_opponents = jax.jit(opponent_samples_fn, out_shardings=replicated)
    ref_fn = jax.jit(lambda p, t, m: models.sequence_token_logprobs(
        ref_def, p, t, m, chunk_size=config.train.logprob_chunk, temperature=T), out_shardings=replicated)
    value_fn = jax.jit(lambda p, t, m: models.sequence_logprobs_and_values(
        setup.model_def, p, t, m, chunk_size=config.train.logprob_chunk, temperature=T)[1], out_shardings=replicated)
    step_fn = train.TrainStep(setup)
    per_iteration = updates_per_iteration(config)
    step = int(jax.device_get(state["step"]))
    start = step // per_iteration
    if saved is not None and (saved.get("iteration") != start or step % per_iteration):
        raise ValueError(f"the checkpoint in {ckpts.directory} is at optimizer step {step} but iteration "
                         f"{saved.get('iteration')} ({per_iteration} steps an iteration): it is inconsistent")
    writer = MetricWriter(workdir, config, resume_step=start)
    history, preempted = [], False
    try:
        for it in range(start, config.train.steps):
            t0 = time.perf_counter()
            idx = train.pipeline.batch_indices(len(prompts.texts), it, P, config.seed)
            rows = np.repeat(idx, G)
            placed = setup.device_batch({"tokens": prompts.tokens[rows], "mask": prompts.mask[rows]})
            args = (state["params"], ref_params, placed["tokens"], placed["mask"], state["rng"], it)
            samples = jax.device_get(sample_policy(*args))
            policy_samples = samples
            if o.algorithm in OPPONENTS:  # one opponent per policy sample: the reference's or the mixture's
                opponents = jax.device_get(sample_opponents(*args))
                samples = {k: np.concatenate([samples[k], opponents[k]]) for k in samples}
            # the reference's log-probs: of every sample (xpo's reference samples too), of the policy's (nash_md)
            n_scored = len(policy_samples["tokens"]) if o.algorithm == "nash_md" else len(samples["tokens"])
            scored = setup.device_batch({k: samples[k][:n_scored] for k in ("tokens", "mask")})
            ref_logps = np.asarray(jax.device_get(ref_fn(ref_params, scored["tokens"], scored["mask"])))
            values = np.asarray(jax.device_get(value_fn(state["params"], scored["tokens"], scored["mask"]))) \
                if o.algorithm == "ppo" else None
            t_gen = time.perf_counter() - t0
            texts = [prompts.texts[i] for i in rows] * (2 if o.algorithm in OPPONENTS else 1)
            completions = [tok.decode(c[:n]) for c, n in zip(samples["completion"], samples["lengths"])]
            all_rewards, all_ended = scorer(texts, completions, samples)
            batch = rollout_batch(config, samples, all_rewards, ref_logps, values, kl_coef)
            # the figures below are of the policy's own samples
            n_policy = len(policy_samples["tokens"])
            rewards, ended, ref_logps = all_rewards[:n_policy], all_ended[:n_policy], ref_logps[:n_policy]
            samples = policy_samples
            t1 = time.perf_counter()
            step_metrics = []
            order_rng = np.random.default_rng([config.seed, it])
            n = len(batch["tokens"])  # samples, or pairs (online_dpo)
            mb = n // o.num_minibatches
            for _ in range(o.epochs):
                perm = order_rng.permutation(n)
                for m in range(o.num_minibatches):
                    sel = np.sort(perm[m * mb:(m + 1) * mb])
                    state, metrics = step_fn(state, None, setup.device_batch({k: v[sel] for k, v in batch.items()}))
                    step_metrics.append(metrics)
            fetched = [{k: float(v) for k, v in m.items()} for m in jax.device_get(step_metrics)]
            t_train = time.perf_counter() - t1
            cmask = samples["completion_mask"][:, 1:]
            old_logps = sampler_logps(samples)
            seq_kl = ((old_logps - ref_logps) * cmask).sum(-1)
            row = {("kl/loss_term" if k == "kl" else k): float(np.mean([f[k] for f in fetched]))
                   for k in fetched[0] if k != "logp_diff_max"}
            if "logp_diff_max" in fetched[0]:
                row.update({"sampling/logp_diff_first_update": fetched[0]["logp_diff_max"],
                            "sampling/logp_diff_last_update": fetched[-1]["logp_diff_max"]})
            row.update({
                "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
                "kl": float(seq_kl.mean()), "entropy": float(-(old_logps * cmask).sum() / max(cmask.sum(), 1)),
                "completions/mean_length": float(samples["lengths"].mean()),
                "completions/min_length": float(samples["lengths"].min()),
                "completions/max_length": float(samples["lengths"].max()),
                "completions/clipped_ratio": float(1.0 - ended.mean()),
                "time/generation_s": t_gen, "time/training_s": t_train,
            })
            if o.algorithm in OPPONENTS:
                row["reward/opponent_mean"] = float(all_rewards[n_policy:].mean())
            if o.algorithm == "ppo":
                row["kl_coef"] = kl_coef
                if o.kl_target > 0:  # adaptive: towards kl_target nats per sequence
                    kl_coef = float(ol.adaptive_kl_update(kl_coef, row["kl"], o.kl_target, o.kl_horizon, len(rows)))
            if not np.isfinite(row["loss"]):
                raise FloatingPointError(f"non-finite loss at iteration {it + 1}: stopped without saving ({row})")
            writer.write(it + 1, row)
            history.append({"step": it + 1, **row})
            log.info("online %s iteration %d: reward %.3f, kl %.3f, loss %.4f", o.algorithm, it + 1,
                     row["reward/mean"], row["kl"], row["loss"])
            done = it + 1
            preempted = preemption.reached(done) and done < config.train.steps
            if (done % config.train.save_every == 0 or preempted) and done != config.train.steps:
                ckpts.save(int(jax.device_get(state["step"])), state, {**position, "iteration": done, "kl_coef": kl_coef},
                           force=preempted)
            if preempted:
                break
    finally:
        writer.close()
    summary = {"history": history, "export": str(workdir / "export"), "workdir": str(workdir), "source": source,
               "preempted": preempted}
    if preempted:
        ckpts.close()
        return summary
    total = config.train.steps * per_iteration
    if ckpts.latest_step() != total:
        ckpts.save(total, state, {**position, "iteration": config.train.steps, "kl_coef": kl_coef}, force=True)
    ckpts.close()
    checkpoint.export_params(workdir / "export", state["params"], {
        "phase": config.phase, "step": config.train.steps, "model": dataclasses.asdict(setup.model_def.cfg),
        "init_from": config.init_from, "resumed_from": source, "online": dict(o), "data": dict(config.data)})
    if distributed.is_leader():
        (workdir / "online_summary.json").write_text(json.dumps(history[-1] if history else {}, indent=2))
    return summary
