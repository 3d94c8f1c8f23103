"""What must not change the numbers: gradient accumulation, remat, scan, and the device layout.

For SFT, the reward model (RM) and DPO, one batch's loss and gradients are compared:

* k micro-batches of b rows (`train.grad_accum=k`) against one batch of k*b rows: rtol 1e-5;
* remat `full` with `lax.scan`, no remat with unrolled layers, and remat `dots` with the XLA attention
  kernel, against no remat with `lax.scan`: rtol 1e-5 (every remat policy and kernel is compared at
  the model level in tests/models);
* the padding-free batch layouts (`data.layout`: packed, shared_prompt) against padded rows: rtol 1e-5;
* 8 CPU devices (mesh (2, 2, 2)) under each parallelism preset (and fsdp_tp with 2 micro-batches, and
  with a packed layout) against 1 device: rtol 1e-4 (the 8-device programs sum in a different order).

Every program sums in its own order (XLA fuses each variant differently), so gradients of float32
parameters near zero also get atol 1e-6 (the largest gradients are about 0.3 to 0.5; the losses are
compared at rtol 1e-5 alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import base, dpo_tiny, rm_tiny, sft_tiny
import pjax
from pjax import sharding
from pjax.core.setup import validate_for_mesh
from pjax.data import load, loader
from pjax.phases import offline

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"sft": sft_tiny, "rm": rm_tiny, "dpo": dpo_tiny}
PRESETS = sorted(base.SHARDING_PRESETS)


def _config(phase: str, cache_dir: str, **train_overrides):
    c = PHASES[phase].get_config()
    c.init_from = ""
    c.data.cache_dir = cache_dir
    c.data.num_sft = c.data.num_pairs = 64
    c.data.num_heldout_prompts = c.data.num_heldout_pairs = 8
    c.train.batch_size = 8
    for key, value in train_overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def loss_and_grads(config, mesh_shape=(1, 1, 1)) -> tuple[float, dict[str, np.ndarray]]:
    """The loss and the gradients of the first batch, from freshly initialised params (and, for DPO,
    a reference initialised from another seed)."""
    config.mesh.shape = tuple(mesh_shape)
    with pjax.Run(config) as run:
        setup = run.setup
        arrays = run.data().arrays
        state = run.init()
        ref = run.init(config.seed + 1)["params"] if phase_needs_reference(config) else None
        whole = loader.global_batch(arrays, 0, config.train.batch_size, config.seed)
        rows = setup.local_rows(config.train.batch_size)
        batch = offline.put_batch(setup, {k: v[rows] for k, v in whole.items()})  # in the config's data.layout
        fn = jax.jit(lambda p, r, b, s: run.train_step.gradients(p, r, b, s))
        with sharding.use_rules(setup.rules):
            (loss, _), grads = fn(state["params"], ref, batch, state["loss_state"])
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(grads))[0]
        return float(loss), {jax.tree_util.keystr(path): np.asarray(g) for path, g in flat}


def phase_needs_reference(config) -> bool:
    from pjax import losses

    return losses.needs_reference(config.loss)


def _assert_same(a, b, rtol, atol=0.0, what=""):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    np.testing.assert_allclose(loss_a, loss_b, rtol=rtol, err_msg=f"{what}: loss")
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=rtol, atol=atol, err_msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cache"))
    load.load_data(_config("sft", path))  # builds the tokenizer before the 8-device job reads it
    return path


@pytest.fixture(scope="module", autouse=True)
def eight_device_job(cache_dir, tmp_path_factory):
    """The 8-device side of `test_eight_devices_equal_one_under_every_preset`, started first so that it
    compiles on the second core while the other tests run on the first."""
    out = tmp_path_factory.mktemp("eight") / "eight.json"
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"}
    code = (f"from pathlib import Path; from tests.test_invariance import _eight_device_results; "
            f"_eight_device_results({cache_dir!r}, Path({str(out)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    yield proc, out
    proc.kill()


@pytest.fixture(scope="module")
def plain(cache_dir):
    """`plain(phase)`: the loss and gradients of the configuration every variant is compared with (one
    batch, no micro-batches, no remat, scanned layers, one device), computed once per phase."""
    results = {}

    def get(phase: str) -> tuple[float, dict[str, np.ndarray]]:
        if phase not in results:
            results[phase] = loss_and_grads(_config(phase, cache_dir))
        return results[phase]

    return get


@pytest.mark.parametrize("phase", list(PHASES))
def test_gradient_accumulation_equals_one_big_batch(phase, cache_dir, plain):
    """Micro-batch j holds rows j, j+k, ... of the batch. SFT averages over the batch's tokens and its
    micro-batches hold different numbers of them (checked), so a plain mean of micro-batch losses
    would not pass: they are weighted by their tokens."""
    config = _config(phase, cache_dir)
    if phase == "sft":
        arrays = load.load_data(config).arrays
        tokens = loader.global_batch(arrays, 0, 8, config.seed)["completion_mask"][:, 1:].sum(axis=1)
        assert len({tokens[j::4].sum() for j in range(4)}) > 1  # k=4: micro-batches of unequal tokens
    whole = plain(phase)
    for k in (2, 4):
        _assert_same(loss_and_grads(_config(phase, cache_dir, train__grad_accum=k)), whole, rtol=1e-5, atol=1e-6,
                     what=f"{phase} grad_accum={k}")


@pytest.mark.parametrize("phase", list(PHASES))
def test_remat_and_scan_do_not_change_loss_or_gradients(phase, cache_dir, plain):
    base_result = plain(phase)
    for remat, scan, kernel in (("full", True, "einsum"), ("none", False, "einsum"), ("dots", True, "xla")):
        config = _config(phase, cache_dir)  # every remat policy and kernel: tests/models
        config.model.remat, config.model.scan_layers, config.model.attention = remat, scan, kernel
        _assert_same(loss_and_grads(config), base_result, rtol=1e-5, atol=1e-6,
                     what=f"{phase} remat={remat} scan={scan} attention={kernel}")


@pytest.mark.parametrize("phase, layout, k", [("sft", "packed", 1), ("dpo", "packed", 1), ("dpo", "shared_prompt", 1),
                                              ("sft", "packed", 4), ("dpo", "shared_prompt", 2)])
def test_padding_free_layouts_do_not_change_loss_or_gradients(phase, layout, k, cache_dir, plain):
    """The model runs on packed rows (pjax.data.layout; with k micro-batches, each packed on its own)
    and the objective sees the same numbers."""
    config = _config(phase, cache_dir, train__grad_accum=k)
    config.data.layout = layout
    with pjax.Run(config) as run:  # the layout really runs on fewer positions
        whole = loader.global_batch(run.data().arrays, 0, config.train.batch_size, config.seed)
        batch = offline.put_batch(run.setup, whole)
        assert batch["packed_tokens"].size < whole["tokens"].size or k > 1  # (4 micro-batches of 2 SFT rows fill theirs)
    _assert_same(loss_and_grads(config), plain(phase), rtol=1e-5, atol=1e-6,
                 what=f"{phase} layout={layout} grad_accum={k}")


def _eight_device_results(cache_dir: str, out: Path) -> None:
    results = {}
    for phase in PHASES:
        for preset in PRESETS:
            config = _config(phase, cache_dir)
            config.sharding.preset = preset
            loss, grads = loss_and_grads(config, (2, 2, 2))
            results[f"{phase}/{preset}"] = {"loss": loss, "grads": {k: v.tolist() for k, v in grads.items()}}
        config = _config(phase, cache_dir, train__grad_accum=2)  # micro-batches split over the devices too
        loss, grads = loss_and_grads(config, (2, 2, 2))
        results[f"{phase}/fsdp_tp+grad_accum=2"] = {"loss": loss, "grads": {k: v.tolist() for k, v in grads.items()}}
        if phase != "rm":  # packed micro-batches split over the devices (a multiple of the batch shards)
            config = _config(phase, cache_dir, data__layout="shared_prompt" if phase == "dpo" else "packed",
                             train__grad_accum=2)
            loss, grads = loss_and_grads(config, (2, 2, 2))
            results[f"{phase}/fsdp_tp+layout"] = {"loss": loss, "grads": {k: v.tolist() for k, v in grads.items()}}
    out.write_text(json.dumps(results))


def test_eight_devices_equal_one_under_every_preset(eight_device_job, plain):
    proc, out = eight_device_job
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]
    eight = json.loads(out.read_text())
    variants = PRESETS + ["fsdp_tp+grad_accum=2"]
    expected = [f"{p}/{s}" for p in PHASES for s in variants] + ["sft/fsdp_tp+layout", "dpo/fsdp_tp+layout"]
    assert sorted(eight) == sorted(expected)
    for phase in PHASES:
        one = plain(phase)
        for preset in variants + (["fsdp_tp+layout"] if phase != "rm" else []):
            r = eight[f"{phase}/{preset}"]
            _assert_same((r["loss"], {k: np.asarray(v, np.float32) for k, v in r["grads"].items()}), one,
                         rtol=1e-4, atol=1e-6, what=f"{phase} preset={preset} on 8 devices")


def test_presets_shard_what_they_say(cache_dir):
    """The preset tables: dp replicates every parameter, fsdp shards d_model over `fsdp`, fsdp_tp also
    splits heads over `tensor`, sequence splits activations' sequence over `tensor`."""
    from jax.sharding import PartitionSpec as P

    rules = {name: sharding.rules_dict(table) for name, table in base.SHARDING_PRESETS.items()}
    wq = ("embed", "q_heads", "head_dim")
    assert sharding.logical_to_mesh(wq, rules["dp"]) == P(None, None, None)
    assert sharding.logical_to_mesh(wq, rules["fsdp"]) == P("fsdp", None, None)
    assert sharding.logical_to_mesh(wq, rules["fsdp_tp"]) == P("fsdp", "tensor", None)
    assert sharding.logical_to_mesh(("act_batch", "act_seq", "act_embed"), rules["sequence"]) == \
        P(("data", "fsdp"), "tensor", None)
    config = _config("sft", cache_dir)
    config.sharding.preset = "sequence"
    config.data.max_len = 47
    with pytest.raises(ValueError, match="data.max_len=47 is not divisible by the sequence-parallel size 2"):
        validate_for_mesh(config, jax.sharding.AbstractMesh((1, 1, 2), sharding.MESH_AXES), 8, "train.batch_size")
    config.sharding.preset = "pipeline"
    with pytest.raises(ValueError, match="sharding.preset='pipeline'"):
        pjax.validate(config)
    config.sharding.preset = "fsdp"
    config.sharding.rules = (("act_sequence", "tensor"),)
    with pytest.raises(ValueError, match="sharding.rules: unknown logical axes \\['act_sequence'\\]"):
        pjax.validate(config)
