"""Best-of-N from sampled rewards: the N-vs-reward curve against its KL bound, its plot, and
rejection-sampled datasets (best/worst pairs, best-sample SFT rows, RSO pairs). Model-free: the
inputs are rewards `[P, M]` of M completions sampled per prompt (and their texts).

- KL of best-of-n to the base policy: log n - (n-1)/n (Stiennon et al. 2020), an upper bound
  (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy").
- E[max of n i.i.d. rewards] from M >= n samples: the average over all C(M, n) subsets of their
  max, in closed form from the sorted rewards (unbiased; Nakano et al. 2021 WebGPT, Gao et al. 2023).
- Over-optimisation (Gao et al. 2023, "Scaling laws for reward model overoptimization"): the
  reported (gold) reward of the sample chosen by the selecting (proxy) reward, same subset average.
- RSO (Liu et al. 2024, "Statistical rejection sampling improves preference optimization").
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("pjax")

MODES = ("pairs", "best", "rso")


def kl_bound(n: int) -> float:
    """KL(best-of-n || base) <= log n - (n-1)/n nats (exact for a continuous reward without ties)."""
    if int(n) != n or n < 1:
        raise ValueError(f"kl_bound: n must be an integer >= 1, got {n!r}")
    n = int(n)
    return math.log(n) - (n - 1) / n


def _rewards_2d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [prompts, samples] array, got shape {x.shape}")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        p, m = bad[0]
        raise ValueError(f"{name}: non-finite reward {x[p, m]} at prompt {p}, sample {m} ({len(bad)} in all)")
    return x


def _subset_max_weights(m: int, n: int) -> np.ndarray:
    """w_i = C(i-1, n-1) / C(m, n), i = 1..m: the share of n-subsets whose top element has rank i."""
    if int(n) != n or not 1 <= n <= m:
        raise ValueError(f"best-of-n needs an integer 1 <= n <= M = {m} samples per prompt, got n = {n!r}")
    n = int(n)
    total = math.comb(m, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, m + 1)])  # exact ints, one rounding


def expected_best_of_n(rewards: np.ndarray, n: int, selection_rewards: np.ndarray | None = None) -> np.ndarray:
    """Unbiased per-prompt estimate of E[reward of the best of n i.i.d. samples]: `[P]` from `[P, M]`.

    The average over all C(M, n) subsets of the M samples of the subset's best, in closed form:
    with a prompt's samples in ascending order y_(1..M), sum_i v(y_(i)) C(i-1, n-1) / C(M, n), since
    y_(i) is the best of exactly C(i-1, n-1) subsets. n = 1 is the mean; n = M the max.

    Without `selection_rewards` the best is the max reward (ties do not matter: tied values are equal).
    With them, the best is the sample with the highest selecting reward (e.g. a learned RM) and its
    `rewards` value (e.g. the gold reward) is averaged: the over-optimisation curve of Gao et al. 2023.
    Ties in the selecting reward go to the lowest sample index, as `np.argmax` over a subset would.
    """
    rewards = _rewards_2d(rewards, "rewards")
    w = _subset_max_weights(rewards.shape[1], n)
    if selection_rewards is None:
        return np.sort(rewards, axis=1) @ w
    sel = _rewards_2d(selection_rewards, "selection_rewards")
    if sel.shape != rewards.shape:
        raise ValueError(f"selection_rewards shape {sel.shape} != rewards shape {rewards.shape}")
    neg_index = np.broadcast_to(-np.arange(sel.shape[1]), sel.shape)
    order = np.lexsort((neg_index, sel), axis=1)  # by selecting reward, then lower index ranks higher
    return np.take_along_axis(rewards, order, axis=1) @ w


def _mean_stderr(x: np.ndarray) -> tuple[float, float]:
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se  # as pjax.eval.mean_stderr (not imported: that module pulls in jax)


def best_of_n_curve(rewards: np.ndarray, ns: Sequence[int] = (1, 2, 4, 8, 16),
                    selection_rewards: np.ndarray | None = None) -> list[dict[str, float]]:
    """Best-of-n reward per n: [{"n", "kl_bound", "mean", "stderr"}], mean and standard error
    (ddof=1; nan for one prompt) over prompts of :func:`expected_best_of_n` (see it for
    `selection_rewards`: the reported reward of the sample the selecting reward picks)."""
    if not ns:
        raise ValueError("best_of_n_curve: ns is empty")
    curve = []
    for n in ns:
        mean, se = _mean_stderr(expected_best_of_n(rewards, n, selection_rewards))
        curve.append({"n": int(n), "kl_bound": kl_bound(n), "mean": mean, "stderr": se})
    return curve


def _atomic_target(path: str | os.PathLike) -> tuple[Path, Path]:
    """(path, a temp name beside it): write the temp file, then os.replace it onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def plot_best_of_n(path: str | os.PathLike, curves: Mapping[str, Sequence[Mapping[str, float]]],
                   title: str = "") -> Path:
    """PNG of reward (mean +- stderr) against the KL bound (nats), one line per label (e.g.
    "RM (proxy)", "gold"), points annotated with their N. Written atomically; returns the path."""
    if not curves:
        raise ValueError("plot_best_of_n: no curves")
    # Lazy, and the Agg canvas on a bare Figure: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, curve in curves.items():
        if not curve:
            raise ValueError(f"plot_best_of_n: curve {label!r} has no points")
        try:
            x = np.array([p["kl_bound"] for p in curve], np.float64)
            y = np.array([p["mean"] for p in curve], np.float64)
            err = np.nan_to_num(np.array([p["stderr"] for p in curve], np.float64))  # nan (one prompt): none
            ns = [int(p["n"]) for p in curve]
        except KeyError as e:
            raise ValueError(f"plot_best_of_n: a point of curve {label!r} lacks key {e}") from None
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        for xi, yi, n in zip(x, y, ns):
            ax.annotate(f"N={n}", (xi, yi), textcoords="offset points", xytext=(4, 5), fontsize=8)
    ax.set_xlabel("KL bound log N - (N-1)/N (nats)")
    ax.set_ylabel("reward")
    if title:
        ax.set_title(title)
    ax.margins(x=0.08)  # room for the last N label
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path, tmp = _atomic_target(path)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def best_and_worst(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, the index of the highest and of the lowest reward `[P]` each (first index on ties)."""
    rewards = _rewards_2d(rewards, "rewards")
    return rewards.argmax(axis=1), rewards.argmin(axis=1)


def statistical_rejection_sample(rewards: Sequence[float] | np.ndarray, k: int, beta: float,
                                 rng: np.random.Generator | int) -> list[int]:
    """RSO sampling (Liu et al. 2024, Algorithm 1): up to k distinct candidate indices, in acceptance
    order, drawn towards pi_r(y) ∝ pi_sft(y) exp(r(y) / beta) from M candidates sampled from pi_sft.

    What is implemented, the process of the paper's derivation (eq. 13-17, A.2): with D the set
    accepted so far, repeatedly pick a candidate not in D uniformly at random (rejected candidates
    can be picked again) and accept it with probability exp((r - r_max) / beta), where
    r_max = max of r over the candidates not in D (the paper's M_D, recomputed after each acceptance,
    so the best remaining candidate is always accepted when picked and the loop ends); stop at k
    accepted or when every candidate is. Each acceptance is then exact rejection sampling from the
    candidates not yet accepted, i.e. the next index is drawn with probability softmax(r / beta) over
    them: sampling without replacement from the reward-tilted empirical distribution. beta -> 0: the
    top-k rewards (ties at random); beta -> inf (inf allowed): k uniform picks. The paper's Python
    listing instead sweeps the remaining candidates in a fixed order, accepting each with that
    probability and recomputing r_max between sweeps, which only approximates these probabilities.
    """
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"statistical_rejection_sample: rewards must be a non-empty [M] array, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"statistical_rejection_sample: non-finite reward at candidate {int(np.argmin(np.isfinite(r)))}")
    if int(k) != k or k < 0:
        raise ValueError(f"statistical_rejection_sample: k must be an integer >= 0, got {k!r}")
    if not beta > 0:
        raise ValueError(f"statistical_rejection_sample: beta must be > 0, got {beta!r}")
    rng = np.random.default_rng(rng)
    remaining = np.arange(r.size)
    accepted: list[int] = []
    while len(accepted) < k and remaining.size:
        rem = r[remaining]
        accept_p = np.exp((rem - rem.max()) / beta)  # in [0, 1]; 1 at the remaining max
        m = remaining.size
        while True:  # the sequential picks, drawn m at a time; the first accepted pick wins
            picks = rng.integers(m, size=m)
            hits = np.flatnonzero(rng.random(m) < accept_p[picks])
            if hits.size:
                j = int(picks[hits[0]])
                break
        accepted.append(int(remaining[j]))
        remaining = np.delete(remaining, j)
    return accepted


def rows_from_samples(prompts: Sequence[str], completions: Sequence[Sequence[str]], rewards: np.ndarray,
                      mode: str, *, k: int = 8, beta: float | None = None,
                      rng: np.random.Generator | int | None = None,
                      stats: dict[str, int] | None = None) -> list[dict[str, str]]:
    """Rejection-sampled training rows from M scored completions per prompt (plain text).

    mode "pairs": {"prompt", "chosen", "rejected"}, the best vs the worst sample (:func:`best_and_worst`).
    mode "best": {"prompt", "completion"}, the best sample (RAFT / best-of-n SFT; every prompt kept).
    mode "rso": pairs as "pairs" but among the k samples :func:`statistical_rejection_sample` accepts
    (needs `beta` and `rng`; k >= 2), the best and worst of them (first index on ties).

    Pair modes skip a prompt whose best and worst rewards are equal or whose best and worst texts are
    identical; the counts are logged and, when `stats` is given, added to it under "rows",
    "skipped_equal_reward" and "skipped_identical_text".
    """
    if mode not in MODES:
        raise ValueError(f"rows_from_samples: mode must be one of {MODES}, got {mode!r}")
    rewards = _rewards_2d(rewards, "rewards")
    p, m = rewards.shape
    if len(prompts) != p or len(completions) != p:
        raise ValueError(f"rows_from_samples: {len(prompts)} prompts and {len(completions)} completion lists "
                         f"for rewards of shape {rewards.shape}")
    for i, (prompt, texts) in enumerate(zip(prompts, completions)):
        if not isinstance(prompt, str):
            raise TypeError(f"rows_from_samples: prompt {i} is {type(prompt).__name__}, not str")
        if isinstance(texts, str) or len(texts) != m or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"rows_from_samples: completions[{i}] must be a list of {m} str")
    if mode == "rso":
        if beta is None or rng is None:
            raise ValueError("rows_from_samples: mode 'rso' needs beta and rng")
        if int(k) != k or k < 2:
            raise ValueError(f"rows_from_samples: mode 'rso' needs k >= 2 accepted samples per pair, got {k!r}")
        rng = np.random.default_rng(rng)

    best, worst = best_and_worst(rewards)
    if mode == "best":
        rows = [{"prompt": prompts[i], "completion": completions[i][best[i]]} for i in range(p)]
        counts = {"rows": len(rows)}
    else:
        rows, counts = [], {"rows": 0, "skipped_equal_reward": 0, "skipped_identical_text": 0}
        for i in range(p):
            b, w = int(best[i]), int(worst[i])
            if mode == "rso":
                idx = np.sort(statistical_rejection_sample(rewards[i], k, beta, rng))
                b, w = int(idx[rewards[i, idx].argmax()]), int(idx[rewards[i, idx].argmin()])
            if rewards[i, b] == rewards[i, w]:
                counts["skipped_equal_reward"] += 1
            elif completions[i][b] == completions[i][w]:
                counts["skipped_identical_text"] += 1
            else:
                rows.append({"prompt": prompts[i], "chosen": completions[i][b], "rejected": completions[i][w]})
        counts["rows"] = len(rows)
    log.info("bestofn: %s rows from %d prompts: %s", mode, p, counts)
    if stats is not None:
        for key, v in counts.items():
            stats[key] = stats.get(key, 0) + v
    return rows


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line (UTF-8), written atomically (temp file + os.replace); returns the path."""
    path, tmp = _atomic_target(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for number, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise TypeError(f"write_jsonl {path}: row {number} is {type(row).__name__}, not a dict")
                f.write(json.dumps(dict(row), ensure_ascii=False, default=_json_default) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
