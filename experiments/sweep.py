"""Ablation sweeps: the product of config overrides, each point a pjax run, collected into a table and plots.

    python -m experiments.sweep --config=configs/dpo_tiny.py \\
        --grid='loss.name=dpo,ipo,simpo' --grid='loss.beta=0.05,0.1,0.5' --seeds=3 --workdir=<dir> \\
        [--config.<key>=<value> ...]   # applies to every point
        [--launcher=sequential|processes|submit] [--parallel=N] [--submit='sbatch --wrap {command}']
        [--evaluate] [--collect_only]

Every point (one value per `--grid` key, times `--seeds` seeds: `seed` = the config's seed + i) runs in
`<workdir>/points/<name>/` as `python -m pjax.train` would run it. Run the same command again: points
whose export is at their final step (trained with the same config, from the same parent export) are
skipped; interrupted ones resume from their own checkpoint (pjax's resume); a point begun with another
config (e.g. other `--config.*` overrides) is moved aside to `<name>.stale-<time>` and trained again.

Launchers: `sequential` (in this process, one after another), `processes` (`--parallel` subprocesses at a
time, each logging to `<point>/train.log`), `submit` (each pending point's command line handed to a
cluster scheduler through the `--submit` template, `{command}` the command line as one shell word, e.g.
`sbatch --wrap {command}`, `{name}` the point's name, `{workdir}` its directory; then `--collect_only`
gathers whatever has finished, without moving anything). A point's command line is
`python -m pjax.train --config=pjax/config_io.py:<point>/point_config.json`: its whole resolved config.

Collected per point (`<point>/result.json`): the final and the best value of every logged metric
(best = lowest for losses, KL, NLL and times, else highest), the held-out figures of the phase
(`heldout.json`), and with `--evaluate` the policy's samples on held-out prompts against its parent
(`pjax.eval.evaluate_policy`: gold / reward-model reward, win rate, KL to the reference). Then:
`sweep.csv` (a row per point), `sweep.md` (mean ± standard error over seeds per grid point),
`curves_<metric>.png|svg` (the loss and the reward by default; per grid point, the seeds' mean with a
± s.e. band) and, with `--evaluate`,
`frontier.png|svg`: reward of samples against KL to the reference, one curve per value of
`--frontier_by` (default the first grid key) across the other keys' values.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from ml_collections import ConfigDict

log = logging.getLogger("pjax")

POINTS_DIR = "points"
POINT_FILE = "point.json"
RESULT_FILE = "result.json"
LAUNCHERS = ("sequential", "processes", "submit")
REWARD_CURVES = ("reward/mean", "rewards/margins", "margin", "accuracy")  # the first one logged is plotted
LOWER_IS_BETTER = ("loss", "nll", "kl", "time", "seconds", "perplexity", "error", "logp_diff")


# --- the grid -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the sweep: `(key, value text)` overrides in grid order, then the seed."""

    overrides: tuple[tuple[str, str], ...]
    seed: int

    @property
    def group(self) -> tuple[tuple[str, str], ...]:
        """The grid point without its seed (what seeds are averaged over)."""
        return self.overrides

    @property
    def name(self) -> str:
        parts = [f"{k}-{v}" for k, v in self.overrides] + [f"seed-{self.seed}"]
        name = "__".join("".join(c if c.isalnum() or c in ".-_" else "_" for c in p) for p in parts)
        if len(name) > 160 or name != "__".join(parts):  # too long for a file name, or characters replaced
            digest = hashlib.sha256(repr((self.overrides, self.seed)).encode()).hexdigest()[:10]
            name = f"{name[:140]}__{digest}"
        return name

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides) or "base"


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`['loss.name=dpo,ipo', 'loss.beta=0.1,0.5']` -> `[('loss.name', ['dpo', 'ipo']), ...]`.

    Keys that vary together (zipped, not crossed) share one flag, their values joined by ':':
    `'loss.name,loss.beta=dpo:0.1,simpo:2.0'` -> `[('loss.name,loss.beta', ['dpo:0.1', 'simpo:2.0'])]`."""
    grid: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for spec in specs:
        key, sep, values = spec.partition("=")
        keys = [k.strip() for k in key.split(",")]
        items = [v.strip() for v in values.split(",")]
        if not sep or not all(keys) or not all(items):
            raise ValueError(f"--grid={spec!r}: expected key=value1,value2,... (e.g. loss.beta=0.05,0.1)")
        if "seed" in keys:
            raise ValueError(f"--grid={spec!r}: seeds come from --seeds")
        if seen & set(keys) or len(set(keys)) != len(keys):
            raise ValueError(f"--grid={spec!r}: {sorted(seen & set(keys)) or keys} appears in two --grid flags")
        if any(len(v.split(":")) != len(keys) for v in items) and len(keys) > 1:
            raise ValueError(f"--grid={spec!r}: each value must give {len(keys)} parts joined by ':' ({','.join(keys)})")
        if len(set(items)) != len(items):
            raise ValueError(f"--grid={spec!r}: a value appears twice")
        seen.update(keys)
        grid.append((",".join(keys), items))
    return grid


def grid_keys(grid: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """Every config key the grid sets (zipped keys one by one)."""
    return [k for key, _ in grid for k in key.split(",")]


def expand(grid: Sequence[tuple[str, Sequence[str]]], seeds: int, base_seed: int) -> list[Point]:
    """The product of the grid's values, each with `seeds` seeds (base_seed, base_seed + 1, ...)."""
    if seeds < 1:
        raise ValueError(f"--seeds={seeds} must be >= 1")

    def overrides(combo):
        return tuple((k, v) for (key, _), value in zip(grid, combo)
                     for k, v in zip(key.split(","), value.split(":") if "," in key else [value]))

    return [Point(overrides(combo), base_seed + s)
            for combo in itertools.product(*(values for _, values in grid)) for s in range(seeds)]


def set_value(cfg: ConfigDict, key: str, text: str) -> None:
    """Set `cfg.<key>` from its text, parsed as the type the key already has (naming the key if unknown)."""
    from pjax import config_io

    try:
        node, field = config_io.find_key(cfg, key)
    except KeyError as e:
        raise ValueError(f"--grid {key}: unknown config key ({e.args[0]})") from None
    current = node[field]
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            value: Any = text.lower() in ("true", "1")
        elif isinstance(current, int):
            value = int(text)
        elif isinstance(current, float):
            value = float(text)
        elif isinstance(current, str):
            value = text
        else:
            raise ValueError(f"a grid cannot set a {type(current).__name__} (use --config.{key} for every point)")
    except ValueError as e:
        raise ValueError(f"--grid {key}={text!r}: not a {type(current).__name__} ({e})") from e
    node[field] = value


def point_config(base: ConfigDict, point: Point, root: Path) -> ConfigDict:
    cfg = copy.deepcopy(base)
    for key, text in point.overrides:
        set_value(cfg, key, text)
    cfg.seed = point.seed
    cfg.workdir = str(root / POINTS_DIR / point.name)
    cfg.train.progress = False
    return cfg


# --- one point ------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def identity(cfg: ConfigDict) -> dict[str, Any]:
    """What a point's training depends on: its config (paths aside) and its parent export."""
    from pjax import chain, checkpoint

    parent = checkpoint.export_metadata(cfg.init_from) if cfg.init_from else None
    return {"config": chain.config_hash(cfg), "parent_export_id": (parent or {}).get("export_id")}


def status(cfg: ConfigDict) -> str:
    """`finished` (export at the final step, same identity), `stale` (begun with another identity),
    `pending` (not begun, or interrupted: it resumes from its own checkpoint)."""
    from pjax import checkpoint

    workdir = Path(cfg.workdir)
    if not workdir.exists():
        return "pending"
    path = workdir / POINT_FILE
    if not path.exists() or json.loads(path.read_text()).get("identity") != identity(cfg):
        return "stale"
    meta = checkpoint.export_metadata(workdir / "export")
    return "finished" if meta is not None and meta.get("step") == cfg.train.steps else "pending"


POINT_CONFIG = "point_config.json"


def command(cfg: ConfigDict) -> list[str]:
    """The point's `python -m pjax.train` command line (what `processes` runs and `submit` hands over):
    its whole resolved config, saved as `<point>/point_config.json` and read back by `pjax.config_io`."""
    from pjax import config_io

    path = config_io.save_run_config(Path(cfg.workdir), cfg).rename(Path(cfg.workdir) / POINT_CONFIG)
    return [sys.executable, "-m", "pjax.train", f"--config={Path(config_io.__file__).resolve()}:{path}"]


def best_direction(metric: str) -> str:
    return "min" if any(word in metric.lower() for word in LOWER_IS_BETTER) else "max"


def collect(cfg: ConfigDict, evaluate: bool = False, num_prompts: int = 128) -> dict[str, Any]:
    """A finished point's figures (see the module docstring), also written to `<point>/result.json`."""
    from pjax.metrics import read_jsonl

    workdir = Path(cfg.workdir)
    rows = read_jsonl(workdir / "metrics.jsonl") if (workdir / "metrics.jsonl").exists() else []
    out: dict[str, Any] = {"steps_logged": len(rows)}
    if rows:
        keys = [k for k in rows[-1] if k != "step"]
        for k in keys:
            values = np.array([r[k] for r in rows if k in r and r[k] is not None], np.float64)
            values = values[np.isfinite(values)]
            out[f"final/{k}"] = float(rows[-1][k])
            if len(values):
                out[f"best/{k}"] = float(values.min() if best_direction(k) == "min" else values.max())
    heldout = workdir / "heldout.json"
    if heldout.exists():
        for when, figures in json.loads(heldout.read_text()).items():
            out.update({f"heldout/{when}/{k}": v for k, v in figures.items() if isinstance(v, (int, float))})
    if evaluate:
        out.update({f"eval/{k}": v for k, v in evaluate_point(cfg, num_prompts).items()})
    _write_json(workdir / RESULT_FILE, out)
    return out


def evaluate_point(cfg: ConfigDict, num_prompts: int) -> dict[str, float]:
    """Samples of the point's policy on held-out prompts against its parent (cached by export id)."""
    from pjax import api, checkpoint
    from pjax import eval as evaluation

    workdir = Path(cfg.workdir)
    export = str(workdir / "export")
    key = {"export_id": checkpoint.export_metadata(export)["export_id"], "num_prompts": num_prompts}
    cache = workdir / "sweep_eval.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["scalars"]
    with api.on_mesh(cfg) as (mesh, rules):
        heldout = evaluation.load_heldout(cfg, num_prompts)
        result = evaluation.evaluate_policy(cfg, export, cfg.init_from or None, heldout,
                                            evaluation.Exports(mesh, rules), evaluation.Options(num_prompts=num_prompts))
    figures = evaluation.scalars(result)
    _write_json(cache, {"key": key, "scalars": figures})
    return figures


# --- the sweep ------------------------------------------------------------------------------------------


def run_sweep(base: ConfigDict, grid: Sequence[tuple[str, Sequence[str]]], seeds: int, workdir: str | Path, *,
              launcher: str = "sequential", parallel: int = 1, submit: str = "", evaluate: bool = False,
              num_prompts: int = 128,
              collect_only: bool = False, curve_metrics: Sequence[str] = (), frontier_by: str = "",
              table_metrics: Sequence[str] = ()) -> dict[str, Any]:
    """Expand, run what is not finished, collect, and write `sweep.csv`, `sweep.md` and the plots."""
    from pjax import api, chain

    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher={launcher!r}: expected one of {LAUNCHERS}")
    if launcher == "submit" and "{command}" not in submit:
        raise ValueError(f"--submit={submit!r}: the template must contain {{command}}")
    if frontier_by and frontier_by not in grid_keys(grid):
        raise ValueError(f"--frontier_by={frontier_by!r}: not one of the grid keys {grid_keys(grid)}")
    root = Path(workdir).expanduser().resolve()
    points = expand(grid, seeds, int(base.seed))
    configs = {p: point_config(base, p, root) for p in points}
    for p, cfg in configs.items():
        try:
            api.validate(cfg)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"sweep point {p.name}: {e}") from e
    _write_json(root / "sweep.json", {"grid": [[k, list(v)] for k, v in grid], "seeds": seeds,
                                      "points": [p.name for p in points]})
    _write_json(root / "base_config.json", json.loads(base.to_json_best_effort()))
    pending, failed = [], []
    for p, cfg in configs.items():
        state = status(cfg)
        if state == "stale" and collect_only:
            log.warning("sweep: %s was begun with another config or parent export; not collected", p.name)
            continue
        if state == "stale":
            moved = chain.move_aside(Path(cfg.workdir))
            log.warning("sweep: %s was begun with another config or parent export; moved it to %s", p.name, moved)
        if state == "finished":
            log.info("sweep: %s finished earlier; skipping it", p.name)
        else:
            pending.append(p)
    log.info("sweep: %d points, %d to run (%s launcher)", len(points), 0 if collect_only else len(pending), launcher)
    if not collect_only and pending:
        for p in pending:
            _write_json(Path(configs[p].workdir) / POINT_FILE, {
                "name": p.name, "overrides": dict(p.overrides), "seed": p.seed, "identity": identity(configs[p]),
                "command": command(configs[p])})
        if launcher == "sequential":
            for p in pending:
                log.info("sweep: running %s", p.name)
                try:
                    preempted = api.train(configs[p])["preempted"]
                except Exception:  # noqa: BLE001 - the other points go on; raised again after collecting
                    log.exception("sweep: %s failed", p.name)
                    failed.append(p.name)
                    continue
                if preempted:
                    log.warning("sweep: preempted during %s; run the same command again to resume", p.name)
                    break
        elif launcher == "processes":
            failed = _run_processes([(p, command(configs[p])) for p in pending],
                                    {p: Path(configs[p].workdir) for p in pending}, parallel)
        else:
            for p in pending:
                line = submit.format(command=shlex.quote(shlex.join(command(configs[p]))), name=p.name,
                                     workdir=shlex.quote(configs[p].workdir))
                subprocess.run(["bash", "-c", line], check=True)
                log.info("sweep: submitted %s: %s", p.name, line)
    rows = []
    for p, cfg in configs.items():
        row = {"point": p.name, **dict(p.overrides), "seed": p.seed, "status": status(cfg)}
        if row["status"] == "finished":
            row.update(collect(cfg, evaluate, num_prompts))
        rows.append(row)
    keys = grid_keys(grid)
    write_csv(root / "sweep.csv", rows)
    table = summarize(rows, keys, table_metrics or default_table_metrics(rows))
    (root / "sweep.md").write_text(format_markdown(table, keys) + "\n")
    plots = []
    finished = [p for p in points if status(configs[p]) == "finished"]
    if not curve_metrics:  # the loss and the phase's reward: online samples', or the implicit reward margin
        logged = set().union(*(r.keys() for p in finished[:1] for r in _read_rows(Path(configs[p].workdir) / "metrics.jsonl")))
        curve_metrics = ["loss"] + [m for m in REWARD_CURVES if m in logged][:1]
    for metric in curve_metrics:
        curves = {}
        for p in finished:
            path = Path(configs[p].workdir) / "metrics.jsonl"
            curve = [(r["step"], r[metric]) for r in _read_rows(path) if metric in r]
            if curve:
                curves.setdefault(p.label(), []).append(curve)
        if curves:
            plots += plot_curves(curves, metric, root / f"curves_{_slug(metric)}")
    if evaluate and keys:
        by = frontier_by or keys[0]
        series = frontier_series(rows, by, [k for k in keys if k != by])
        if series:
            plots += plot_frontier(series, root / "frontier", title=f"reward vs KL, one curve per {by}")
    summary = {"workdir": str(root), "points": len(points), "finished": len(finished),
               "pending": len(points) - len(finished), "rows": rows, "table": table, "plots": [str(p) for p in plots]}
    log.info("sweep: %d of %d points finished; %s", len(finished), len(points), root / "sweep.md")
    if failed:
        raise RuntimeError(f"sweep: {len(failed)} point(s) failed: {failed} (their logs say why; run the same "
                           f"command again to resume them); the others are collected in {root / 'sweep.md'}")
    return summary


def _read_rows(path: Path) -> list[dict]:
    from pjax.metrics import read_jsonl

    return read_jsonl(path) if path.exists() else []


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _run_processes(jobs: list[tuple[Point, list[str]]], workdirs: dict[Point, Path], parallel: int) -> list[str]:
    """Run the commands, `parallel` at a time; returns the names of the points that failed (the others
    go on)."""
    running: list[tuple[Point, subprocess.Popen, Any]] = []
    failed = []
    queue = list(jobs)
    while queue or running:
        while queue and len(running) < max(1, parallel):
            p, cmd = queue.pop(0)
            out = open(workdirs[p] / "train.log", "a")  # noqa: SIM115 - closed when the process ends
            running.append((p, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), out))
            log.info("sweep: started %s", p.name)
        time.sleep(0.2)
        for item in list(running):
            p, proc, out = item
            if proc.poll() is not None:
                out.close()
                running.remove(item)
                if proc.returncode != 0:
                    failed.append(p.name)
                    log.error("sweep: %s exited %d (see %s)", p.name, proc.returncode, workdirs[p] / "train.log")
    return failed


# --- tables ---------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def mean_stderr(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value)."""
    x = np.asarray(list(values), np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def default_table_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The final loss, then the held-out figures after training, then the evaluation's means."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    chosen = [k for k in keys if k == "final/loss"]
    chosen += [k for k in keys if k.startswith("heldout/after/")]
    chosen += [k for k in keys if k.startswith("eval/") and not k.endswith("_se") and not k.startswith("eval/reference")]
    return chosen


def summarize(rows: list[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Per grid point (the `keys`' values), mean and standard error over its finished seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    table = []
    for values, members in groups.items():
        done = [r for r in members if r["status"] == "finished"]
        entry = {**dict(zip(keys, values)), "seeds": len(done), "of": len(members)}
        for m in metrics:
            xs = [r[m] for r in done if isinstance(r.get(m), (int, float))]
            entry[m] = mean_stderr(xs) if xs else None
        table.append(entry)
    return table


def format_markdown(table: list[dict[str, Any]], keys: Sequence[str]) -> str:
    if not table:
        return "(no points)"
    metrics = [k for k in table[0] if k not in (*keys, "seeds", "of")]
    lines = ["| " + " | ".join([*keys, "seeds", *metrics]) + " |", "|" + "---|" * (len(keys) + 1 + len(metrics))]
    for entry in table:
        cells = [str(entry[k]) for k in keys] + [f"{entry['seeds']}/{entry['of']}"]
        cells += ["–" if entry[m] is None else f"{entry[m][0]:.4g} ± {entry[m][1]:.2g}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------------------


def plot_curves(curves: dict[str, list[list[tuple[int, float]]]], metric: str, stem: Path) -> list[Path]:
    """One line per grid point: the mean over its seeds at each step, with a ± s.e. band (steps that
    every seed logged). Each line carries the SVG id `curve-<i>`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, runs) in enumerate(curves.items()):
        steps = sorted(set.intersection(*(set(s for s, _ in run) for run in runs)))
        ys = np.array([[dict(run)[s] for s in steps] for run in runs], np.float64)
        mean = ys.mean(0)
        se = ys.std(0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(mean)
        (line,) = ax.plot(steps, mean, label=f"{label} (n={len(runs)})")
        line.set_gid(f"curve-{i}")
        ax.fill_between(steps, mean - se, mean + se, alpha=0.2, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def frontier_series(rows: list[dict[str, Any]], by: str, along: Sequence[str], x: str = "eval/kl_to_reference",
                    y: str = "") -> dict[str, list[dict[str, Any]]]:
    """Per value of `by`, the points along the other grid keys: mean ± s.e. over seeds of KL (x) and of
    the samples' reward (y: gold when evaluated, else the reward model's); one seed: ± the evaluation's
    standard error over prompts."""
    done = [r for r in rows if r["status"] == "finished" and x in r]
    if not done:
        return {}
    y = y or ("eval/gold_reward" if any("eval/gold_reward" in r for r in done) else "eval/rm_reward")
    series: dict[str, list[dict[str, Any]]] = {}
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        groups.setdefault((r[by], *(r[k] for k in along)), []).append(r)
    def spread(key: str, members: list[dict]) -> tuple[float, float]:
        """Mean ± s.e. over seeds; with one seed, the evaluation's own s.e. over prompts when it has one."""
        mean, se = mean_stderr(r[key] for r in members if key in r)
        return (mean, float(members[0].get(f"{key}_se", 0.0))) if len(members) == 1 else (mean, se)

    for (value, *rest), members in groups.items():
        series.setdefault(f"{by}={value}", []).append({
            "label": ", ".join(f"{k}={v}" for k, v in zip(along, rest)), "x": spread(x, members),
            "y": spread(y, members), "n": len(members), "y_key": y})
    for points in series.values():
        points.sort(key=lambda p: p["x"][0])
    return series


def plot_frontier(series: dict[str, list[dict[str, Any]]], stem: Path, title: str = "") -> list[Path]:
    """Reward against KL to the reference, one curve per series (error bars: ± s.e. over seeds). Each
    point carries the SVG id `frontier-<series>-<i>`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    y_key = ""
    for s, (name, points) in enumerate(series.items()):
        xs = [p["x"][0] for p in points]
        ys = [p["y"][0] for p in points]
        (line,) = ax.plot(xs, ys, "-", label=name)
        for i, p in enumerate(points):
            bar = ax.errorbar(p["x"][0], p["y"][0], xerr=p["x"][1], yerr=p["y"][1], fmt="o", color=line.get_color(),
                              markersize=4, capsize=2)
            bar.lines[0].set_gid(f"frontier-{s}-{i}")
            if p.get("label"):
                ax.annotate(p["label"], (p["x"][0], p["y"][0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        y_key = points[0].get("y_key", y_key)
    ax.set_xlabel("KL(policy || reference), nats per sequence")
    ax.set_ylabel(f"{y_key.removeprefix('eval/').replace('_', ' ')} of samples" if y_key else "reward of samples")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def _save(fig, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


# --- command line ---------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    from pjax import logs

    del argv
    logs.configure()
    summary = run_sweep(
        _CONFIG.value, parse_grid(_GRID.value or []), _SEEDS.value, _WORKDIR.value, launcher=_LAUNCHER.value,
        parallel=_PARALLEL.value, submit=_SUBMIT.value, evaluate=_EVALUATE.value, num_prompts=_NUM_PROMPTS.value,
        collect_only=_COLLECT_ONLY.value, curve_metrics=_CURVES.value, frontier_by=_FRONTIER_BY.value,
        table_metrics=_TABLE.value or ())
    print((Path(summary["workdir"]) / "sweep.md").read_text())


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "The phase config file every point starts from.",
                                              lock_config=True)
    flags.mark_flag_as_required("config")
    _GRID = flags.DEFINE_multi_string("grid", None, "key=value1,value2,... (repeat for a product)")
    _SEEDS = flags.DEFINE_integer("seeds", 1, "seeds per grid point: the config's seed, +1, ...")
    _WORKDIR = flags.DEFINE_string("workdir", None, "the sweep's directory", required=True)
    _LAUNCHER = flags.DEFINE_enum("launcher", "sequential", list(LAUNCHERS), "how the points run")
    _PARALLEL = flags.DEFINE_integer("parallel", 1, "processes launcher: points at a time")
    _SUBMIT = flags.DEFINE_string("submit", "", "submit launcher: a shell template with {command}, {name}, {workdir}")
    _EVALUATE = flags.DEFINE_boolean("evaluate", False, "evaluate each policy's samples against its parent")
    _NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 128, "held-out prompts for --evaluate")
    _COLLECT_ONLY = flags.DEFINE_boolean("collect_only", False, "run nothing; collect, tabulate and plot")
    _CURVES = flags.DEFINE_list("curve_metrics", [], "metrics to plot against the step (default: the loss and "
                                "the reward: reward/mean online, rewards/margins offline)")
    _FRONTIER_BY = flags.DEFINE_string("frontier_by", "", "grid key with one frontier curve per value")
    _TABLE = flags.DEFINE_list("table_metrics", [], "columns of sweep.md (default: loss, held-out, eval)")
    app.run(main)
