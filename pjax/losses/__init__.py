"""Pure objectives `(LossInputs, cfg) -> (loss, metrics)` and their registry."""

from pjax.losses import listwise, pairwise, reference_free, reward, sft, unpaired  # noqa: F401  (registers them)
from pjax.losses.registry import (REGISTRY, LossInputs, Objective, combined, data_kind, get, init_state,
                                  markdown_table, needs_reference, register, terms, trains)
from pjax.losses.reward import AGGREGATIONS, aggregate_rewards

__all__ = ["AGGREGATIONS", "REGISTRY", "aggregate_rewards", "LossInputs", "Objective", "combined", "data_kind", "get", "init_state", "markdown_table",
           "needs_reference", "register", "terms", "trains"]
