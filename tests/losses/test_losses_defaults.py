"""Every loss hyperparameter's default lives in one place: `pjax.losses.defaults.DEFAULTS`."""

import ast
from pathlib import Path

from ml_collections import ConfigDict

from configs import base
from pjax.losses import defaults

LOSSES = Path(defaults.__file__).parent


def test_the_base_config_is_built_from_the_defaults():
    loss = base.get_config().loss
    assert set(loss) == {"name", "names", "weights", *defaults.DEFAULTS}
    assert {k: loss[k] for k in defaults.DEFAULTS} == defaults.DEFAULTS


def test_option_reads_the_config_then_the_default():
    assert defaults.option(ConfigDict({"beta": 0.3}), "beta") == 0.3
    assert defaults.option(ConfigDict({}), "beta") == defaults.DEFAULTS["beta"]


def test_no_objective_writes_a_default_of_its_own():
    """No `cfg.get("key", value)` in the objectives: a second default would drift from the table."""
    found = []
    for path in sorted(LOSSES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "cfg" and len(node.args) > 1
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value not in ("names", "weights")):
                found.append(f"{path.name}:{node.lineno} cfg.get({node.args[0].value!r}, ...)")
    assert found == []
