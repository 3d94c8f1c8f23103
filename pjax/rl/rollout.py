"""The rollout of an online iteration: the prompts, and the samplers that run on the training mesh
(prompt rows split like a training batch, parameters where they are, results replicated so that every
host scores the whole iteration): the policy's samples (`pjax.generate`: KV cache, at
`online.temperature`), the opponents' (the reference's, or the geometric mixture's), the reference's
log-probs and the value head's values of the samples."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from ml_collections import ConfigDict

from pjax import generate, models
from pjax.core.setup import Setup
from pjax.data import batching, chat, load, sources, tasks


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
    d = config.data
    if d.path:
        tok = load.load_tokenizer(config) if d.tokenizer else tasks.build_task(config).tokenizer
        rows, _ = sources.load_records(d.path, "PROMPT", split=d.split, bad_rows=d.bad_rows,
                                       data_dir=d.tfds_data_dir or None, format=d.format,
                                       max_row_bytes=d.max_row_bytes)
        texts = [r["prompt"] for r in rows]
        template = chat.resolve_template(tok, d.chat_template) if (d.chat_template or tok.chat_template) else None
        enc = batching.encode_prompts(tok, texts, d.max_prompt_len, template=template)
        shown = [t if isinstance(t, str) else tok.decode(e[m > 0]) for t, e, m in zip(texts, enc["tokens"], enc["mask"])]
        return tok, Prompts(enc["tokens"], enc["mask"], shown, None)
    task = tasks.build_task(config)
    texts = list(dict.fromkeys(p for p, _ in task.sft))
    if getattr(task, "reward", None) is not None:  # verifiable: the reward reads the prompt and the completion
        gold = lambda ps, cs: np.array([task.reward(p, c) for p, c in zip(ps, cs)], np.float64)  # noqa: E731
    else:
        gold = lambda ps, cs: np.array([task.gold_reward(c) for c in cs], np.float64)  # noqa: E731
    enc = batching.encode_prompts(task.tokenizer, texts, d.max_prompt_len)
    return task.tokenizer, Prompts(enc["tokens"], enc["mask"], texts, gold)


class Samplers:
    """The rollout's jitted functions, built once per phase."""

    def __init__(self, setup: Setup, ref_def: models.ModelDef, tokenizer: Any, opponent: str | None):
        config, o = setup.config, setup.config.online
        T = float(o.temperature)
        kw = dict(max_new_tokens=config.generate.max_new_tokens, eos_id=tuple(tokenizer.stop_ids),
                  pad_id=tokenizer.pad_id, temperature=T, top_k=o.top_k, top_p=o.top_p)
        model_def, chunk = setup.model_def, config.train.logprob_chunk

        def policy(params, ref_params, tokens, mask, rng_data, it):
            rng = jax.random.fold_in(jax.random.wrap_key_data(rng_data), it)
            return generate.generate(model_def, params, tokens, mask, rng, **kw)

        def opponents(params, ref_params, tokens, mask, rng_data, it):
            rng = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng_data), it), 1)
            if opponent == "reference":
                return generate.generate(ref_def, ref_params, tokens, mask, rng, **kw)
            return generate.generate_mixture(model_def, params, ref_def, ref_params, o.mixture_coef, tokens, mask,
                                             rng, **kw)

        out = dict(out_shardings=setup.replicated)
        self.policy, self.opponents = jax.jit(policy, **out), jax.jit(opponents, **out)
        self.ref_logps = jax.jit(lambda p, t, m: models.sequence_token_logprobs(
            ref_def, p, t, m, chunk_size=chunk, temperature=T), **out)
        self.values = jax.jit(lambda p, t, m: models.sequence_logprobs_and_values(
            model_def, p, t, m, chunk_size=chunk, temperature=T)[1], **out)
