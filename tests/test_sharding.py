"""Mesh construction, the logical rules, and sharded == single-device training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.base import RULES
from pjax import sharding

REPO = Path(__file__).resolve().parents[1]


def test_mesh_shape_resolution():
    assert sharding.resolve_mesh_shape((1, -1, 1), 8) == (1, 8, 1)
    assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="does not divide"):
        sharding.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError, match="needs 4 devices"):
        sharding.resolve_mesh_shape((2, 2, 1), 8)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.resolve_mesh_shape((-1, -1, 1), 8)


def test_logical_to_mesh():
    rules = sharding.rules_dict(RULES)
    spec = sharding.logical_to_mesh(("layers", "embed", "mlp"), rules)
    assert tuple(spec) == (None, "fsdp", "tensor")
    assert tuple(sharding.logical_to_mesh(("batch", None), rules)) == (("data", "fsdp"), None)
    with pytest.raises(ValueError, match="'bogus' has no entry"):
        sharding.logical_to_mesh(("bogus",), rules)
    with pytest.raises(ValueError, match=r"layers\.mlp\.up.*size 9.*not divisible"):
        sharding.logical_to_mesh(("embed", "mlp"), rules, shape=(8, 9), mesh_shape={"data": 1, "fsdp": 2, "tensor": 2},
                                 name="layers.mlp.up")


JOB = r"""
import json, logging, sys
import jax
from tests.conftest import tiny
from configs import sft_tiny, dpo_tiny
from pjax import train
mesh, root = json.loads(sys.argv[1]), sys.argv[2]
sft = tiny(sft_tiny.get_config(), root + "/sft", root + "/cache", steps=3)
dpo = tiny(dpo_tiny.get_config(), root + "/dpo", root + "/cache", steps=3)
dpo.init_from = root + "/sft/export"
for cfg in (sft, dpo):
    cfg.mesh.shape = tuple(mesh)
out = {"devices": jax.device_count()}
for cfg in (sft, dpo):
    out[cfg.phase] = [row["loss"] for row in train.run(cfg)["history"]]
print("RESULT" + json.dumps(out))
"""


def _run_job(mesh, devices, root):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", JOB, json.dumps(mesh), str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_sharded_training_equals_single_device(tmp_path):
    """(2,2,2) over 8 simulated CPU devices vs 1 device: same SFT and DPO losses over 3 steps."""
    sharded = _run_job([2, 2, 2], 8, tmp_path / "sharded")
    single = _run_job([1, 1, 1], 1, tmp_path / "single")
    assert sharded["devices"] == 8 and single["devices"] == 1
    for phase in ("sft", "dpo"):
        assert len(sharded[phase]) == len(single[phase]) == 3
        for a, b in zip(sharded[phase], single[phase]):
            assert abs(a - b) <= 1e-5, (phase, sharded[phase], single[phase])
    # the steps really trained (the comparison is not of constants)
    assert sharded["sft"][0] != sharded["sft"][-1]
