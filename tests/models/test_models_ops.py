"""`pjax.models.ops.dense`: the einsum forward, a backward of plain contractions, the same gradients as
autodiff of the einsum (alone, and through the whole model under every remat policy, scanned or not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjax import models
from pjax.models import llama
from pjax.models.ops import dense

SPECS = {  # every projection of the model, with small shapes
    "btd,dhk->bthk": ((2, 5, 8), (8, 3, 4)),
    "bthk,hkd->btd": ((2, 5, 3, 4), (3, 4, 8)),
    "btd,df->btf": ((2, 5, 8), (8, 12)),
    "btf,fd->btd": ((2, 5, 12), (12, 8)),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_gradients_equal_autodiff_of_the_einsum(spec, dtype):
    xs, ws = SPECS[spec]
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(kx, xs).astype(dtype), jax.random.normal(kw, ws).astype(dtype)
    cot = jax.random.normal(ky, jnp.einsum(spec, x, w).shape).astype(jnp.float32)

    def loss(f):
        return lambda x, w: (f(x, w).astype(jnp.float32) * cot).sum()

    ours = jax.grad(loss(lambda x, w: dense(spec, x, w)), argnums=(0, 1))(x, w)
    want = jax.grad(loss(lambda x, w: jnp.einsum(spec, x, w)), argnums=(0, 1))(x, w)
    np.testing.assert_array_equal(np.asarray(dense(spec, x, w), np.float32),
                                  np.asarray(jnp.einsum(spec, x, w), np.float32))
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    for a, b in zip(ours, want):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)
    # and the float64 formula: dx = cot . w over the output axes, dw = x . cot over the kept axes of x
    inputs, out = spec.split("->")
    xi, wi = inputs.split(",")
    x64, w64, c64 = (np.asarray(a, np.float64) for a in (x, w, cot))
    np.testing.assert_allclose(np.asarray(ours[0], np.float64), np.einsum(f"{out},{wi}->{xi}", c64, w64),
                               rtol=5 * tol, atol=5 * tol * np.abs(x64).max() * 10)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
@pytest.mark.parametrize("scan", [True, False])
def test_model_gradients_equal_autodiff_of_plain_einsums(remat, scan, monkeypatch):
    cfg = models.preset("tiny", vocab_size=64, n_layers=2, remat=remat, scan_layers=scan)
    model_def = models.build(cfg)
    params = model_def.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 64, (3, 10)), jnp.int32)
    mask = jnp.ones_like(tokens).at[0, :3].set(0)

    def grads():
        f = lambda p: models.sequence_token_logprobs(model_def, p, tokens, mask).sum()  # noqa: E731
        return jax.device_get(jax.jit(jax.grad(f))(params))

    ours = grads()
    monkeypatch.setattr(llama, "dense", lambda spec, x, w: jnp.einsum(spec, x, w))
    want = grads()
    flat_ours, flat_want = jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(want)
    for (path, a), b in zip(flat_ours, flat_want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))
