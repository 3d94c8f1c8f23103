"""The run's model config (`pjax.models.config.model_config`): `model.preset` switches the whole shape,
a field the config changed wins over the preset."""

import pytest

import pjax
from pjax.models.config import model_config


def test_preset_switch_and_field_override(tiny_configs):
    sft, _ = tiny_configs
    sft.model.preset = "llama3_1b"
    cfg = model_config(sft)
    assert (cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.rope_scaling) == (2048, 16, 128256, (32.0, 1.0, 4.0, 8192.0))
    sft.model.n_layers = 4  # a field changed by the config wins over the preset
    assert model_config(sft).n_layers == 4
    sft.model.preset = "nope"
    with pytest.raises(ValueError, match="model.preset='nope'"):
        pjax.validate(sft)
