"""Every registered objective trains end to end on the synthetic task: a few steps lower its loss."""

import jax
import numpy as np
import pytest

from configs import dpo_tiny
import pjax
from pjax import losses
from pjax.data import loader

OBJECTIVES = sorted(name for name in losses.REGISTRY if name != "sft")
OPTIONS = {"exo_pair": {"label_smoothing": 1e-3}, "cdpo": {"label_smoothing": 0.1},
           "robust": {"label_smoothing": 0.1}, "ld_dpo": {"ld_alpha": 0.5},
           "f_dpo": {"f_divergence": "js_divergence"}, "rdpo_length": {"length_alpha": 0.05}}
LEARNING_RATES = {"sppo_hard": 3e-4}  # a squared loss with a large target: smaller steps


def _config(name, tmp_path):
    c = dpo_tiny.get_config()
    c.init_from = ""
    c.workdir = str(tmp_path / name)
    c.loss.name = name
    c.loss.beta = 0.5
    if losses.get(name).trains == "reward":  # a reward model: the rm phase, a scalar head
        c.phase, c.model.head = "rm", "scalar"
    for key, value in OPTIONS.get(name, {}).items():
        c.loss[key] = value
    c.model.update(dict(n_layers=1, d_model=32, d_ff=64, n_heads=2, n_kv_heads=1))
    c.data.update(dict(num_pairs=16, num_sft=16, num_heldout_prompts=4, num_heldout_pairs=4, max_len=40,
                       cache_dir=str(tmp_path / "cache")))
    c.train.batch_size = 16  # the whole data set every step: the loss is comparable across steps
    c.optim.update(dict(lr=LEARNING_RATES.get(name, 3e-3), warmup_steps=0, schedule="constant"))
    return c


@pytest.mark.parametrize("name", OBJECTIVES)
def test_a_few_steps_lower_the_loss(name, tmp_path):
    config = _config(name, tmp_path)
    config.mesh.shape = (1, 1, 1)
    with pjax.Run(config) as run:
        arrays = run.data().arrays
        state = run.init(0)
        ref = jax.tree.map(lambda x: x.copy(), state["params"]) if losses.needs_reference(config.loss) else None
        history = []
        for i in range(6):
            state, metrics = run.step(state, run.setup.device_batch(loader.global_batch(arrays, i, 16, 0)), ref)
            history.append(float(metrics["loss"]))
    assert np.isfinite(history).all(), history
    assert history[-1] < history[0] - 1e-3, history
