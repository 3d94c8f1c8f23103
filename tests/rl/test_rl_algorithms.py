"""The online-algorithm registry (`pjax.rl.algorithms`): how each entry turns an iteration's rollout into
its training batch, and that the registry is the only place that dispatches on `online.algorithm`."""

import ast
from pathlib import Path

import numpy as np
import pytest

from configs import grpo_tiny
from pjax.rl import algorithms
from pjax.rl.algorithms import Rollout
from tests.rl.rl_helpers import fake_samples

PJAX = Path(__file__).resolve().parents[2] / "pjax"


def build(cfg, samples, rewards, ref, n_policy, values=None, carry=None):
    cfg.loss.name = "dpo" if cfg.online.algorithm in ("online_dpo", "xpo") else cfg.loss.name
    return algorithms.get(cfg.online.algorithm).build_batch(cfg, Rollout(samples, rewards, ref, n_policy, values),
                                                           carry or {})


def test_rollout_batches_place_log_probs_and_pair_samples():
    """The sampler's log-probs sit where the training path predicts each completion token (index P+i-1);
    online_dpo pairs the best and worst of each group (a tie: chosen = rejected); xpo pairs each prompt's
    policy sample with its reference sample; raft weights the best of groups that do not all tie;
    nash_md trains on the policy's samples with their preference over the mixture's."""
    samples = fake_samples([2, 4, 3, 1])
    old = algorithms.sampler_logps(samples)
    assert old.shape == (4, 6)
    np.testing.assert_array_equal(old[:, 2:], samples["logprobs"])  # P - 1 = 2
    assert not old[:, :2].any()

    cfg = grpo_tiny.get_config()
    ref = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    cfg.online.algorithm, cfg.online.samples_per_prompt = "online_dpo", 2
    pairs = build(cfg, samples, np.array([0.5, 1.5, 2.0, 2.0]), ref, 4)
    np.testing.assert_array_equal(pairs["tokens"][0], samples["tokens"][[1, 0]])  # group 0: row 1 beats row 0
    np.testing.assert_array_equal(pairs["tokens"][1], samples["tokens"][[2, 2]])  # group 1 ties
    np.testing.assert_array_equal(pairs["ref_logps"][0], ref[[1, 0]])
    np.testing.assert_array_equal(pairs["completion_mask"][1], samples["completion_mask"][[2, 2]])

    cfg.online.algorithm, cfg.online.samples_per_prompt = "xpo", 1
    xpo = build(cfg, samples, np.array([0.5, 1.5, 2.0, -1.0]), ref, 2)  # rows 0-1 policy, 2-3 reference
    np.testing.assert_array_equal(xpo["tokens"][0], samples["tokens"][[2, 0]])  # prompt 0: the reference won
    np.testing.assert_array_equal(xpo["tokens"][1], samples["tokens"][[1, 3]])
    np.testing.assert_array_equal(xpo["ref_logps"][0], ref[[2, 0]])
    np.testing.assert_array_equal(xpo["xpo_tokens"], samples["tokens"][[2, 3]])

    cfg.online.algorithm, cfg.online.samples_per_prompt = "raft", 2
    raft = build(cfg, samples, np.array([0.5, 1.5, 2.0, 2.0]), ref, 4)
    np.testing.assert_array_equal(raft["weights"], [0, 1, 0, 0])
    np.testing.assert_array_equal(raft["old_logps"], old)

    cfg.online.algorithm, cfg.online.samples_per_prompt = "nash_md", 1
    nash = build(cfg, samples, np.array([0.5, 1.5, 2.0, -1.0]), ref[:2], 2)  # rows 2-3: mixture samples
    np.testing.assert_array_equal(nash["tokens"], samples["tokens"][:2])
    np.testing.assert_array_equal(nash["ref_logps"], ref[:2])
    np.testing.assert_allclose(nash["preference"], 1 / (1 + np.exp(-np.array([0.5 - 2.0, 1.5 + 1.0]))), rtol=1e-6)


def test_group_algorithms_compare_the_samples_of_a_prompt():
    """grpo: (r - group mean) / group std; rloo: r minus the mean of the other samples of the group;
    ppo: GAE over the values with the score at the last completion token and the KL at every token."""
    samples = fake_samples([2, 4, 3, 1])
    rewards = np.array([0.0, 2.0, 1.0, 1.0])
    ref = algorithms.sampler_logps(samples)  # the policy is the reference: no KL
    cfg = grpo_tiny.get_config()
    cfg.online.samples_per_prompt = 2
    grpo = build(cfg, samples, rewards, ref, 4)
    np.testing.assert_allclose(grpo["advantages"][:2], np.array([-1.0, 1.0]) / np.sqrt(2), atol=1e-4)  # / std (ddof 1)
    np.testing.assert_allclose(grpo["advantages"][2:], 0.0, atol=1e-6)  # a tie: no signal

    cfg.online.algorithm = "rloo"
    rloo = build(cfg, samples, rewards, ref, 4)
    np.testing.assert_allclose(rloo["advantages"], [-2.0, 2.0, 0.0, 0.0], atol=1e-6)

    cfg.online.algorithm, cfg.online.kl_coef, cfg.online.whiten_advantages = "ppo", 0.1, False
    cfg.online.gamma, cfg.online.lam = 1.0, 1.0
    values = np.zeros((4, 6), np.float32)
    ppo = build(cfg, samples, rewards, ref, 4, values, {"kl_coef": 0.1})
    mask = samples["completion_mask"][:, 1:]
    # gamma = lam = 1, values 0, no KL: every completion token's advantage is the sequence's reward
    np.testing.assert_allclose(ppo["advantages"] * mask, rewards[:, None] * mask, atol=1e-6)
    np.testing.assert_allclose(ppo["returns"] * mask, rewards[:, None] * mask, atol=1e-6)
    np.testing.assert_array_equal(ppo["old_values"], values)


def _strings(node: ast.AST) -> bool:
    """A string constant, or a tuple / list / set of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and bool(node.elts) and all(map(_strings, node.elts))


def _names_algorithm(node: ast.AST) -> bool:
    """`x.algorithm`, `x["algorithm"]`, a variable `algorithm`, or `<...algorithm>.name`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "algorithm" or (node.attr == "name" and _names_algorithm(node.value))
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "algorithm"
    return isinstance(node, ast.Name) and node.id == "algorithm"


def algorithm_dispatch(source: str) -> list[int]:
    """Lines that branch on the algorithm's name: `o.algorithm == "ppo"`, `"ppo" != o.algorithm`,
    `o.algorithm in ("xpo", "nash_md")`, `match o.algorithm: case "ppo":`, `{"ppo": ...}[o.algorithm]`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(map(_names_algorithm, sides)) and any(map(_strings, sides)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Match) and _names_algorithm(node.subject):
            if any(isinstance(c.pattern, ast.MatchValue) and _strings(c.pattern.value) for c in node.cases):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and _names_algorithm(node.slice) and isinstance(node.value, ast.Dict):
            if any(k is not None and _strings(k) for k in node.value.keys):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("source,hit", [
    ('if o.algorithm == "ppo": pass', True),
    ('if "ppo" != config.online.algorithm: pass', True),
    ('x = cfg.online.algorithm in ("xpo", "nash_md")', True),
    ('x = o["algorithm"] not in ["raft"]', True),
    ('x = self.algorithm.name == "grpo"', True),
    ('match o.algorithm:\n    case "ppo":\n        pass', True),
    ('f = {"ppo": 1, "grpo": 2}[o.algorithm]', True),
    ('x = algorithms.get(o.algorithm).opponent == "reference"', False),
    ('x = o.algorithm == other.algorithm', False),
    ('x = {k: o[k] for k in ("algorithm", "epochs")}', False),
])
def test_the_dispatch_check_finds_name_comparisons(source, hit):
    assert bool(algorithm_dispatch(source)) == hit


def test_the_registry_is_the_only_dispatch_on_the_algorithm():
    """No module of pjax outside `pjax/rl/algorithms` branches on `online.algorithm`'s value: what differs
    between algorithms is an attribute or a method of their registry entry, so a new algorithm is one
    module there."""
    found = {}
    modules = sorted(PJAX.rglob("*.py"))
    assert len(modules) > 50 and PJAX / "rl" / "loop.py" in modules
    for path in modules:
        if (PJAX / "rl" / "algorithms") in path.parents:
            continue
        lines = algorithm_dispatch(path.read_text())
        if lines:
            found[str(path.relative_to(PJAX.parent))] = lines
    assert not found, f"branches on the online algorithm's name outside the registry: {found}"


def test_every_algorithm_is_registered_under_its_name():
    assert algorithms.REGISTRY and all(a.name == name for name, a in algorithms.REGISTRY.items())
    for name, a in algorithms.REGISTRY.items():
        assert type(a).build_batch is not algorithms.Algorithm.build_batch, name
        assert type(a).loss_fn is not algorithms.Algorithm.loss_fn, name
    with pytest.raises(ValueError, match="registered twice"):
        algorithms.register(type(algorithms.get("grpo")))
