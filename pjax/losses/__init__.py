"""Pure objectives `(LossInputs, cfg) -> (loss, metrics)` and their registry."""

from pjax.losses import pairwise, sft  # noqa: F401  (registers the objectives)
from pjax.losses.registry import REGISTRY, LossInputs, Objective, get, markdown_table, register

__all__ = ["REGISTRY", "LossInputs", "Objective", "get", "markdown_table", "register"]
