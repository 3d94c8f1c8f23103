"""Evaluation of a policy against its reference: gold reward of samples, win rate, implicit-reward
accuracy on held-out pairs, and a Monte Carlo estimate of the sequence-level KL to the reference."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pjax import generate, models
from pjax.models import ModelDef


def mean_stderr(x: Sequence[float]) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


@functools.partial(jax.jit, static_argnames=("model_def", "temperature"))
def completion_logps(model_def: ModelDef, params: Any, tokens: jax.Array, mask: jax.Array,
                     completion_mask: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Summed log-probs of the completion tokens: `[...]` for `tokens` of shape `[..., T]`."""
    lp = models.sequence_token_logprobs(model_def, params, tokens, mask, temperature=temperature)
    return (lp * completion_mask[..., 1:]).sum(-1)


def sample(model_def: ModelDef, params: Any, prompts: dict[str, np.ndarray], *, seed: int, max_new_tokens: int,
           eos_id: int | tuple[int, ...], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> dict:
    """Sample one completion per (left-padded) prompt; numpy outputs."""
    out = generate.generate(model_def, params, jnp.asarray(prompts["tokens"]), jnp.asarray(prompts["mask"]),
                            jax.random.key(seed), max_new_tokens=max_new_tokens, eos_id=eos_id,
                            pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.device_get(out)


def kl_to_reference(model_def: ModelDef, params: Any, ref_params: Any, samples: dict) -> tuple[float, float]:
    """KL(pi || pi_ref) ~ mean over y ~ pi of log pi(y) - log pi_ref(y) (samples drawn at T=1)."""
    args = (samples["tokens"], samples["mask"], samples["completion_mask"])
    diff = completion_logps(model_def, params, *args) - completion_logps(model_def, ref_params, *args)
    return mean_stderr(np.asarray(diff))


def implicit_reward_accuracy(model_def: ModelDef, params: Any, ref_params: Any, pairs: dict[str, np.ndarray],
                             batch_size: int = 64) -> float:
    """Fraction of pairs with rho(chosen) > rho(rejected), rho = log pi/pi_ref (DPO's implicit reward)."""
    hits = []
    for i in range(0, len(pairs["tokens"]), batch_size):
        args = tuple(pairs[k][i:i + batch_size] for k in ("tokens", "mask", "completion_mask"))
        rho = np.asarray(completion_logps(model_def, params, *args) - completion_logps(model_def, ref_params, *args))
        hits.append(rho[:, 0] > rho[:, 1])
    return float(np.concatenate(hits).mean())


def decode_completions(tokenizer, samples: dict) -> list[str]:
    return [tokenizer.decode(row[: int(n)]) for row, n in zip(samples["completion"], samples["lengths"])]


def compare_policies(model_def: ModelDef, policy: Any, reference: Any, *, tokenizer, prompts: dict,
                     heldout_pairs: dict, gold_reward: Callable[[str], float], seed: int,
                     max_new_tokens: int) -> dict[str, Any]:
    """Before/after figures for a trained policy against its reference (e.g. DPO against SFT).

    Both sample at temperature 1 (the distributions themselves), which the KL estimate requires.
    """
    kw = dict(seed=seed, max_new_tokens=max_new_tokens, eos_id=tuple(tokenizer.stop_ids), pad_id=tokenizer.pad_id)
    ref_samples = sample(model_def, reference, prompts, **kw)
    pol_samples = sample(model_def, policy, prompts, **kw)
    ref_text, pol_text = decode_completions(tokenizer, ref_samples), decode_completions(tokenizer, pol_samples)
    ref_gold = np.array([gold_reward(t) for t in ref_text])
    pol_gold = np.array([gold_reward(t) for t in pol_text])
    wins = (pol_gold > ref_gold) + 0.5 * (pol_gold == ref_gold)
    return {
        "reference": {"gold_reward": mean_stderr(ref_gold), "mean_length": float(ref_samples["lengths"].mean())},
        "policy": {
            "gold_reward": mean_stderr(pol_gold),
            "mean_length": float(pol_samples["lengths"].mean()),
            "win_rate_vs_reference": mean_stderr(wins),
            "implicit_reward_accuracy": implicit_reward_accuracy(model_def, policy, reference, heldout_pairs),
            "kl_to_reference": kl_to_reference(model_def, policy, reference, pol_samples),
        },
        "examples": [{"reference": r, "policy": p} for r, p in zip(ref_text[:2], pol_text[:2])],
    }
