"""The objective a train step differentiates (`pjax.core.objective.make_loss_fn`), against NumPy."""

import jax
import numpy as np
import pytest

from pjax.core.objective import make_loss_fn
from pjax.models.config import model_config


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("heads", [1, 3])
def test_reward_loss_reads_margins_and_trains_each_head(heads):
    """The RM step's loss on a batch with TRL's per-pair margins: Bradley-Terry on the scalar head at the
    last real token, -log sigma(r_c - r_r - m), each of an ensemble's heads on its own and the loss
    their mean (NumPy on the rewards read straight from the model)."""
    from configs import rm_tiny
    from pjax import models

    rm = rm_tiny.get_config()
    rm.model.reward_heads = heads
    cfg = model_config(rm)
    model_def = models.build(cfg)
    params = model_def.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (6, 2, 10)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[:, 1, 7:] = 0  # the rejected rows right-padded: the head reads token 6
    completion = np.zeros_like(tokens)
    completion[..., 4:] = 1
    margins = rng.uniform(0, 2, 6).astype(np.float32)
    batch = {"tokens": tokens, "mask": mask, "completion_mask": completion * mask, "margins": margins}
    loss_fn = make_loss_fn(rm, model_def)
    loss, (metrics, _) = jax.jit(loss_fn)(params, None, batch, {})
    r = np.asarray(models.sequence_rewards(model_def, params, tokens, mask), np.float64).reshape(6, 2, heads)
    per_head = -_np_log_sigmoid(r[:, 0] - r[:, 1] - margins[:, None]).mean(0)
    np.testing.assert_allclose(float(loss), per_head.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(r[:, 0] > r[:, 1]), rtol=1e-6)
    if heads > 1:
        ensemble = r.mean(-1)
        np.testing.assert_allclose(float(metrics["ensemble/accuracy"]), np.mean(ensemble[:, 0] > ensemble[:, 1]))
        np.testing.assert_allclose(float(metrics["reward/min"]), r.min(), rtol=1e-5)
