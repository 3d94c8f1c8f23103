"""The model config of a run: `config.model` (a preset plus the fields the run changed) -> `LlamaConfig`."""

from __future__ import annotations

from ml_collections import ConfigDict

from pjax.models import llama as presets
from pjax.models.llama import LlamaConfig


def model_config(config: ConfigDict) -> LlamaConfig:
    """The model config: `model.preset`, with every field that the config changed from the preset its
    fields were filled from (`model.base_preset`). So `--config.model.preset=llama3_1b` switches the
    whole shape, and `--config.model.d_model=256` changes one field, and both can be combined."""
    m = config.model
    try:
        preset_values, base_values = presets.resolved(m.preset), presets.resolved(m.base_preset)
    except ValueError as e:
        raise ValueError(f"model.preset: {e}") from e
    values = {}
    for f in LlamaConfig.__dataclass_fields__:
        current = tuple(m[f]) if f == "rope_scaling" else m[f]
        values[f] = current if current != base_values[f] else preset_values[f]
    try:
        return LlamaConfig(**values)
    except TypeError as e:
        raise ValueError(f"config.model: {e}") from e
