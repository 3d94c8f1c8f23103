"""Best-of-N curve, plot and rejection-sampled rows, against brute-force / closed-form references."""

import itertools
import json
import math

import numpy as np
import pytest

from pjax import bestofn


def _tied_rewards(rng, p, m):
    return rng.integers(0, 4, size=(p, m)).astype(np.float64)  # few values: many ties


def _brute_best_of_n(rewards, n, selection=None):
    """Mean over all n-subsets of the reported reward of the subset's pick (argmax, first index)."""
    selection = rewards if selection is None else selection
    out = []
    for r, s in zip(rewards, selection):
        picks = [r[list(c)[int(np.argmax(s[list(c)]))]] for c in itertools.combinations(range(len(r)), n)]
        out.append(np.mean(picks))
    return np.array(out)


def test_kl_bound():
    assert bestofn.kl_bound(1) == 0.0
    assert bestofn.kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert bestofn.kl_bound(4) == pytest.approx(1.3862943611198906 - 0.75)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError):
            bestofn.kl_bound(bad)


@pytest.mark.parametrize("m", [1, 5, 7])
def test_expected_best_of_n_matches_enumeration(m):
    rng = np.random.default_rng(m)
    for rewards in (rng.normal(size=(6, m)), _tied_rewards(rng, 6, m)):
        for n in range(1, m + 1):
            np.testing.assert_allclose(bestofn.expected_best_of_n(rewards, n), _brute_best_of_n(rewards, n),
                                       rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bestofn.expected_best_of_n(rewards, 1), rewards.mean(1))
    np.testing.assert_allclose(bestofn.expected_best_of_n(rewards, m), rewards.max(1))


def test_expected_best_of_n_with_selection_matches_enumeration():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(5, 6))
    for proxy in (rng.normal(size=(5, 6)), _tied_rewards(rng, 5, 6)):  # ties: lowest index wins
        for n in range(1, 7):
            np.testing.assert_allclose(bestofn.expected_best_of_n(gold, n, proxy), _brute_best_of_n(gold, n, proxy),
                                       rtol=1e-12, atol=1e-12)
    # selecting by the reported reward itself is the plain curve
    np.testing.assert_allclose(bestofn.expected_best_of_n(gold, 3, gold), bestofn.expected_best_of_n(gold, 3))


def test_expected_best_of_n_errors():
    r = np.zeros((2, 3))
    for n in (0, 4):
        with pytest.raises(ValueError, match="n <= M"):
            bestofn.expected_best_of_n(r, n)
    with pytest.raises(ValueError, match="prompts, samples"):
        bestofn.expected_best_of_n(np.zeros(3), 1)
    with pytest.raises(ValueError, match="prompt 1, sample 2"):
        bestofn.expected_best_of_n(np.array([[0.0, 1, 2], [0, 1, np.nan]]), 1)
    with pytest.raises(ValueError, match="shape"):
        bestofn.expected_best_of_n(r, 1, np.zeros((2, 4)))


def test_best_of_n_curve():
    rng = np.random.default_rng(1)
    gold, proxy = rng.normal(size=(9, 8)), rng.normal(size=(9, 8))
    curve = bestofn.best_of_n_curve(proxy, ns=(1, 2, 4, 8))
    assert [p["n"] for p in curve] == [1, 2, 4, 8]
    for point in curve:
        per_prompt = _brute_best_of_n(proxy, point["n"])
        assert point["kl_bound"] == pytest.approx(math.log(point["n"]) - (point["n"] - 1) / point["n"])
        assert point["mean"] == pytest.approx(per_prompt.mean())
        assert point["stderr"] == pytest.approx(per_prompt.std(ddof=1) / 3.0)
    assert np.all(np.diff([p["mean"] for p in curve]) > 0)
    over = bestofn.best_of_n_curve(gold, ns=(2, 4), selection_rewards=proxy)
    assert over[1]["mean"] == pytest.approx(_brute_best_of_n(gold, 4, proxy).mean())
    one = bestofn.best_of_n_curve(proxy[:1], ns=(1, 2))
    assert one[0]["mean"] == pytest.approx(proxy[0].mean()) and math.isnan(one[0]["stderr"])
    with pytest.raises(ValueError):
        bestofn.best_of_n_curve(proxy, ns=(16,))


def test_plot_best_of_n(tmp_path):
    pytest.importorskip("matplotlib", reason="the best-of-n plot needs matplotlib")
    rng = np.random.default_rng(2)
    gold, proxy = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    curves = {"RM (proxy)": bestofn.best_of_n_curve(proxy, (1, 2, 4, 8)),
              "gold": bestofn.best_of_n_curve(gold, (1, 2, 4, 8), selection_rewards=proxy)}
    out = bestofn.plot_best_of_n(tmp_path / "plots" / "bon.png", curves, title="best-of-n")
    assert out == tmp_path / "plots" / "bon.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["bon.png"]  # no temp file left
    with pytest.raises(ValueError, match="lacks key"):
        bestofn.plot_best_of_n(tmp_path / "x.png", {"a": [{"n": 1, "mean": 0.0, "stderr": 0.0}]})


def test_best_and_worst():
    r = np.array([[1.0, 3, 3, 0, 0], [2, 2, 2, 2, 2]])
    best, worst = bestofn.best_and_worst(r)
    assert best.tolist() == [1, 0] and worst.tolist() == [3, 0]


def test_rso_large_beta_is_uniform_without_replacement():
    r = np.array([5.0, -3, 0, 1, 2])
    counts = np.zeros(5)
    for seed in range(1000):
        got = bestofn.statistical_rejection_sample(r, 3, 1e12, seed)
        assert len(got) == 3 and len(set(got)) == 3
        counts[got[0]] += 1
    np.testing.assert_allclose(counts / 1000, 0.2, atol=0.06)  # the reward plays no part
    assert sorted(bestofn.statistical_rejection_sample(r, 9, math.inf, 0)) == [0, 1, 2, 3, 4]  # runs out


def test_rso_tiny_beta_takes_the_top():
    r = np.array([1.0, 7, 3, 7, -2, 5])
    for seed in range(20):
        assert set(bestofn.statistical_rejection_sample(r, 2, 1e-9, seed)) == {1, 3}  # the two max
        got = bestofn.statistical_rejection_sample(r, 4, 1e-9, seed)
        assert set(got[:2]) == {1, 3} and got[2:] == [5, 2]  # then the next best, in order


def test_rso_acceptance_is_reward_tilted():
    """First pick ~ softmax(r/beta); the second ~ softmax over the rest (Plackett-Luce)."""
    r, beta = np.array([0.0, 0.5, 1.0, 2.0]), 0.8
    p = np.exp(r / beta) / np.exp(r / beta).sum()
    n = 4000
    joint = np.zeros((4, 4))
    rng = np.random.default_rng(3)
    for _ in range(n):
        a, b = bestofn.statistical_rejection_sample(r, 2, beta, rng)
        joint[a, b] += 1
    expected = p[:, None] * p[None, :] / (1 - p[:, None])
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(joint.sum(1) / n, p, atol=0.03)
    np.testing.assert_allclose(joint / n, expected, atol=0.025)


def test_rso_errors():
    with pytest.raises(ValueError, match="beta"):
        bestofn.statistical_rejection_sample([1.0, 2.0], 1, 0.0, 0)
    with pytest.raises(ValueError, match="non-finite"):
        bestofn.statistical_rejection_sample([1.0, np.inf], 1, 1.0, 0)
    assert bestofn.statistical_rejection_sample([1.0, 2.0], 0, 1.0, 0) == []


def _samples():
    prompts = ["p0", "p1", "p2", "p3"]
    completions = [["a", "b", "c"], ["x", "y", "z"], ["same", "same", "other"], ["u", "v", "w"]]
    rewards = np.array([[0.1, 0.9, -1.0], [1.0, 1.0, 1.0], [2.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    return prompts, completions, rewards


def test_rows_pairs_and_best():
    prompts, completions, rewards = _samples()
    stats = {}
    rows = bestofn.rows_from_samples(prompts, completions, rewards, "pairs", stats=stats)
    # p1: all rewards equal; p2: best (index 0) and worst (index 1) are both "same"
    assert rows == [{"prompt": "p0", "chosen": "b", "rejected": "c"}, {"prompt": "p3", "chosen": "v", "rejected": "u"}]
    assert stats == {"rows": 2, "skipped_equal_reward": 1, "skipped_identical_text": 1}
    best = bestofn.rows_from_samples(prompts, completions, rewards, "best")
    assert [r["completion"] for r in best] == ["b", "x", "same", "v"]
    assert all(set(r) == {"prompt", "completion"} for r in best)
    with pytest.raises(ValueError, match="mode"):
        bestofn.rows_from_samples(prompts, completions, rewards, "worst")
    with pytest.raises(ValueError, match=r"completions\[1\]"):
        bestofn.rows_from_samples(prompts, [["a", "b", "c"], ["x"], ["a", "b", "c"], ["a", "b", "c"]], rewards, "best")


def test_rows_rso():
    prompts, completions, rewards = _samples()
    with pytest.raises(ValueError, match="beta and rng"):
        bestofn.rows_from_samples(prompts, completions, rewards, "rso")
    # k = M accepts every candidate: the same pairs as "pairs"
    full = bestofn.rows_from_samples(prompts, completions, rewards, "rso", k=3, beta=1.0, rng=0)
    assert full == bestofn.rows_from_samples(prompts, completions, rewards, "pairs")
    # tiny beta, k = 2: the two highest rewards of each prompt
    stats = {}
    top2 = bestofn.rows_from_samples(prompts, completions, rewards, "rso", k=2, beta=1e-9, rng=1, stats=stats)
    assert top2 == [{"prompt": "p0", "chosen": "b", "rejected": "a"}, {"prompt": "p3", "chosen": "v", "rejected": "w"}]
    assert stats == {"rows": 2, "skipped_equal_reward": 2, "skipped_identical_text": 0}  # p2: top two tie at 2.0


def test_write_jsonl_round_trip(tmp_path):
    rows = [{"prompt": "héllo\n", "chosen": "a", "rejected": "b"}, {"prompt": "2", "score": np.float32(0.5)}]
    path = bestofn.write_jsonl(tmp_path / "d" / "rows.jsonl", rows)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert [json.loads(line) for line in lines] == [rows[0], {"prompt": "2", "score": 0.5}]
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]
    with pytest.raises(TypeError, match="row 1"):
        bestofn.write_jsonl(tmp_path / "d" / "rows.jsonl", [{"a": 1}, "bad"])
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == rows[0]  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]
