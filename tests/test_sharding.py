"""Mesh construction and the logical rules (sharded == single-device numbers: tests/test_invariance.py,
tests/test_multihost.py)."""

import pytest

from configs.base import RULES
from pjax import sharding


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


def test_config_rules_preset_with_overrides():
    from configs.base import get_config

    c = get_config()
    assert sharding.config_rules(c.sharding) == RULES  # the default preset, fsdp_tp
    c.sharding.preset = "dp"
    c.sharding.rules = (("embed", "fsdp"), ("act_seq", ["tensor"]))
    rules = sharding.rules_dict(sharding.config_rules(c.sharding))
    assert rules["embed"] == "fsdp" and rules["act_seq"] == ("tensor",) and rules["mlp"] is None
    c.sharding.rules = (("embed", "fsdp"), ("embed", None))
    with pytest.raises(ValueError, match="sharding.rules: .*'embed' appears twice"):
        sharding.config_rules(c.sharding)
