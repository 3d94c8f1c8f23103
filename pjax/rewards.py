"""Rewards from trained reward models: one export or an ensemble, standardised and aggregated.

Each export of an `rm` phase records the mean and std of every reward head over its training data's
completions (`reward_stats`, see `pjax.phases.offline.reward_statistics`). A `RewardModel` scores token
sequences (prompt + completion, padded on either side: the head reads the last real token) with
every head of every export, standardises each head with its recorded statistics
(`reward.normalize`), and aggregates the heads into one reward with `reward.aggregate`: the mean, the
minimum (worst-case optimisation) or the mean minus `reward.uwo_lambda` times their variance
(uncertainty-weighted optimisation; Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from pjax import checkpoint, losses, models, sharding
from pjax.models import ModelDef


@dataclasses.dataclass
class Member:
    """One reward-model export: its model, params, and per-head reward mean/std (`[E]`, or None)."""

    export: str
    model_def: ModelDef
    params: Any
    mean: np.ndarray | None
    std: np.ndarray | None


class RewardModel:
    """`rm(tokens, mask) -> [N]` rewards (float64 numpy) of `N` sequences `[N, T]`."""

    def __init__(self, members: Sequence[Member], mesh: jax.sharding.Mesh, rules: Any, *, aggregate: str = "mean",
                 uwo_lambda: float = 0.5, normalize: bool = True, batch_size: int = 64):
        if not members:
            raise ValueError("reward.models: no reward-model export given")
        if aggregate not in losses.AGGREGATIONS:
            raise ValueError(f"reward.aggregate={aggregate!r}: expected one of {losses.AGGREGATIONS}")
        for m in members:
            if m.model_def.cfg.head != "scalar":
                raise ValueError(f"reward.models: {m.export} is a {m.model_def.cfg.head!r}-head export, not a "
                                 "reward model (model.head='scalar')")
            if normalize and m.mean is None:
                raise ValueError(f"reward.models: {m.export} records no reward statistics (an export of an rm "
                                 "phase does); set reward.normalize=False to use its raw rewards")
        self.members, self.mesh, self.rules = list(members), mesh, rules
        self.aggregate, self.uwo_lambda, self.normalize = aggregate, uwo_lambda, normalize
        self.batch_size = batch_size
        self._fns = [jax.jit(lambda p, t, m, md=m.model_def: models.sequence_rewards(md, p, t, m),
                             out_shardings=NamedSharding(mesh, PartitionSpec())) for m in members]

    @classmethod
    def load(cls, exports: Sequence[str], mesh: jax.sharding.Mesh, rules: Any, **kwargs: Any) -> "RewardModel":
        members = []
        for i, export in enumerate(exports):
            if checkpoint.export_metadata(export) is None:
                raise FileNotFoundError(f"reward.models[{i}]={str(export)!r}: no finished pjax export there")
            model_def, params, meta = checkpoint.load_export(export, mesh, rules)
            stats = meta.get("reward_stats")
            mean = None if stats is None else np.asarray(stats["mean"], np.float64)
            std = None if stats is None else np.asarray(stats["std"], np.float64)
            members.append(Member(str(export), model_def, params, mean, std))
        return cls(members, mesh, rules, **kwargs)

    @classmethod
    def from_config(cls, config: Any, mesh: jax.sharding.Mesh, rules: Any,
                    exports: Sequence[str] | None = None) -> "RewardModel":
        """From `config.reward` (the exports default to `reward.models`)."""
        r = config.reward
        return cls.load(tuple(exports if exports is not None else r.models), mesh, rules, aggregate=r.aggregate,
                        uwo_lambda=r.uwo_lambda, normalize=r.normalize, batch_size=config.train.batch_size)

    @property
    def num_heads(self) -> int:
        return sum(m.model_def.cfg.reward_heads for m in self.members)

    @property
    def vocab_size(self) -> int:
        return min(m.model_def.cfg.vocab_size for m in self.members)

    def head_rewards(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`[N, E]`: every head of every member (standardised when `normalize`)."""
        tokens, mask = np.asarray(tokens, np.int32), np.asarray(mask, np.int32)
        if tokens.ndim != 2 or tokens.shape != mask.shape:
            raise ValueError(f"reward model: tokens {tokens.shape} and mask {mask.shape} must both be [N, T]")
        if tokens.max(initial=0) >= self.vocab_size:
            raise ValueError(f"reward model: token id {int(tokens.max())} is outside the reward model's vocabulary "
                             f"({self.vocab_size}); it was trained with another tokenizer")
        n, bs = len(tokens), self.batch_size
        rules = sharding.rules_dict(self.rules)
        dp = int(np.prod([self.mesh.shape[a] for a in sharding.target_axes(rules.get("batch"))]))
        spec = sharding.batch_sharding(self.mesh, self.rules, 2) if bs % dp == 0 else \
            NamedSharding(self.mesh, PartitionSpec())
        columns = []
        for member, fn in zip(self.members, self._fns):
            parts = []
            for i in range(0, n, bs):
                idx = np.arange(i, i + bs) % n  # the last batch wraps around; its extra rows are dropped
                t, m = (jax.make_array_from_callback((bs, tokens.shape[1]), spec, lambda s, a=a: a[idx][s])
                        for a in (tokens, mask))
                parts.append(np.asarray(jax.device_get(fn(member.params, t, m)), np.float64))
            r = np.concatenate(parts)[:n].reshape(n, -1)
            if self.normalize:
                r = (r - member.mean) / np.maximum(member.std, 1e-8)
            columns.append(r)
        return np.concatenate(columns, axis=1)

    def __call__(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`[N]`: the heads aggregated with `reward.aggregate`."""
        heads = self.head_rewards(tokens, mask)
        return np.asarray(losses.aggregate_rewards(heads, self.aggregate, self.uwo_lambda), np.float64)
