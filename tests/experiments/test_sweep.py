"""`experiments.sweep`: a 2x2 sweep of 2-step DPO runs end to end (expansion, interruption and resume,
skip-finished, stale points, the table with mean ± s.e. over seeds, the curve and frontier plots)."""

import csv
import json
import math
import re

import numpy as np
import pytest

from configs import dpo_tiny, sft_tiny
from experiments import sweep
import pjax
from pjax import api, checkpoint, distributed
from tests.conftest import tiny


def test_grid_expansion_and_typed_overrides():
    grid = sweep.parse_grid(["loss.name=dpo,ipo", "loss.beta=0.05,0.5"])
    points = sweep.expand(grid, seeds=2, base_seed=7)
    assert len(points) == 8 and [p.seed for p in points[:2]] == [7, 8]
    assert {p.overrides for p in points} == {(("loss.name", a), ("loss.beta", b))
                                              for a in ("dpo", "ipo") for b in ("0.05", "0.5")}
    cfg = sweep.point_config(dpo_tiny.get_config(), points[3], sweep.Path("/tmp/s"))
    assert (cfg.loss.name, cfg.loss.beta, cfg.seed) == ("dpo", 0.5, 8) and isinstance(cfg.loss.beta, float)
    assert cfg.workdir == "/tmp/s/points/loss.name-dpo__loss.beta-0.5__seed-8"
    for bad, match in (("loss.bta=0.1", "unknown config key"), ("loss.beta", "expected key=value"),
                       ("loss.beta=0.1,0.1", "appears twice"), ("seed=1,2", "--seeds")):
        with pytest.raises(ValueError, match=match):
            points = sweep.expand(sweep.parse_grid([bad]), 1, 0)
            sweep.point_config(dpo_tiny.get_config(), points[0], sweep.Path("/tmp/s"))
    zipped = sweep.parse_grid(["loss.name,loss.beta=dpo:0.1,simpo:2.0", "data.label_noise=0,0.2"])
    assert sweep.grid_keys(zipped) == ["loss.name", "loss.beta", "data.label_noise"]
    assert [p.overrides for p in sweep.expand(zipped, 1, 0)] == [
        (("loss.name", n), ("loss.beta", b), ("data.label_noise", e))
        for n, b in (("dpo", "0.1"), ("simpo", "2.0")) for e in ("0", "0.2")]
    with pytest.raises(ValueError, match="2 parts joined by ':'"):
        sweep.parse_grid(["loss.name,loss.beta=dpo:0.1,simpo"])
    with pytest.raises(ValueError, match=r"--grid train.steps='x': not a int"):
        sweep.set_value(dpo_tiny.get_config(), "train.steps", "x")


def test_summary_mean_and_standard_error_match_numpy():
    rows = [{"a": "x", "seed": s, "status": "finished", "m": v} for s, v in enumerate([1.0, 2.0, 4.0])]
    rows.append({"a": "y", "seed": 0, "status": "pending"})
    table = sweep.summarize(rows, ["a"], ["m"])
    x = np.array([1.0, 2.0, 4.0])
    assert table[0]["seeds"] == 3 and table[0]["m"][0] == pytest.approx(x.mean())
    assert table[0]["m"][1] == pytest.approx(x.std(ddof=1) / math.sqrt(3))
    assert table[1] == {"a": "y", "seeds": 0, "of": 1, "m": None}
    assert sweep.best_direction("loss") == "min" and sweep.best_direction("heldout/accuracy") == "max"


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    sft = tiny(sft_tiny.get_config(), root / "sft", root / "cache", steps=2)
    pjax.train(sft)
    return root


def test_two_by_two_sweep_end_to_end(sft_export, tmp_path, monkeypatch):
    base = tiny(dpo_tiny.get_config(), tmp_path / "unused", sft_export / "cache", steps=2)
    base.init_from = str(sft_export / "sft" / "export")
    grid = sweep.parse_grid(["loss.name=dpo,ipo", "loss.beta=0.1,0.5"])
    root = tmp_path / "sweep"
    kw = dict(evaluate=True, num_prompts=8)

    # 1. interrupted: a preemption notice during the first point (SIGTERM -> save and stop) ends the sweep
    original = distributed.PreemptionWatch.reached
    monkeypatch.setattr(distributed.PreemptionWatch, "reached", lambda self, step: step >= 1)
    first = sweep.run_sweep(base, grid, 1, root, **kw)
    monkeypatch.setattr(distributed.PreemptionWatch, "reached", original)
    assert first["finished"] == 0 and first["pending"] == 4
    point0 = root / "points" / "loss.name-dpo__loss.beta-0.1__seed-0"
    assert (point0 / "checkpoints").exists() and not (point0 / "export").exists()

    # 2. the same command again: the interrupted point resumes from its checkpoint, the others run
    second = sweep.run_sweep(base, grid, 1, root, **kw)
    assert second["finished"] == 4 and second["pending"] == 0
    assert checkpoint.export_metadata(point0 / "export")["resumed_from"] == "checkpoint:1"  # not retrained
    steps = [json.loads(line)["step"] for line in (point0 / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    with open(root / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["loss.name"], r["loss.beta"]) for r in rows] == [("dpo", "0.1"), ("dpo", "0.5"), ("ipo", "0.1"),
                                                                 ("ipo", "0.5")]
    for r in rows:  # final and best metrics from the point's own metrics.jsonl
        logged = [json.loads(line) for line in (root / "points" / r["point"] / "metrics.jsonl").read_text().splitlines()]
        assert float(r["final/loss"]) == pytest.approx(logged[-1]["loss"])
        assert float(r["best/loss"]) == pytest.approx(min(x["loss"] for x in logged))
        assert float(r["eval/kl_to_reference"]) == float(r["eval/kl_to_reference"])  # evaluated (not NaN)
    table = (root / "sweep.md").read_text()
    assert table.count("\n| dpo |") + table.count("\n| ipo |") == 4 and "final/loss" in table
    for metric in ("loss", "rewards_margins"):  # the loss and the implicit reward, by default
        svg = (root / f"curves_{metric}.svg").read_text()
        assert len(re.findall(r'id="curve-\d+"', svg)) == 4  # one line per grid point
    frontier = (root / "frontier.svg").read_text()
    assert len(re.findall(r'id="frontier-\d+-\d+"', frontier)) == 4  # 2 curves (loss.name) x 2 betas
    assert (root / "frontier.png").stat().st_size > 0

    # 3. again: everything finished is skipped (no training)
    monkeypatch.setattr(api, "train", lambda cfg: pytest.fail(f"trained {cfg.workdir} again"))
    third = sweep.run_sweep(base, grid, 1, root, **kw)
    assert third["finished"] == 4

    # 4. another config for every point: the old points are moved aside (nothing is lost) and trained again
    base.optim.lr = base.optim.lr * 2
    collected = sweep.run_sweep(base, grid, 1, root, collect_only=True, **kw)  # only reads: nothing moved
    assert collected["finished"] == 0 and not list((root / "points").glob("*.stale-*"))
    trained = []
    monkeypatch.setattr(api, "train", lambda cfg: trained.append(cfg.workdir) or {"preempted": False, "history": []})
    sweep.run_sweep(base, grid, 1, root, **kw)
    assert len(trained) == 4
    assert len(list((root / "points").glob("*.stale-*"))) == 4

def test_submit_launcher_hands_each_command_to_the_scheduler(sft_export, tmp_path):
    """`--launcher=submit`: each pending point's command line goes through the template as one shell word
    (as `sbatch --wrap {command}` needs it); here the "scheduler" writes it down, or runs it: the point
    then trains in its own process with exactly the sweep's config for it."""
    from pjax import config_io

    base = tiny(dpo_tiny.get_config(), tmp_path / "unused", sft_export / "cache", steps=2)
    base.init_from = str(sft_export / "sft" / "export")
    out = tmp_path / "submitted.txt"
    grid = sweep.parse_grid(["loss.beta=0.1,0.2"])
    summary = sweep.run_sweep(base, grid, 2, tmp_path / "s", launcher="submit",
                              submit=f"printf '%s\\n' {{name}} {{command}} >> {out}")
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and summary["pending"] == 4  # name, then the command as one word, per point
    name, cmd = lines[0], lines[1].split(" ")
    assert name == "loss.beta-0.1__seed-0" and cmd[1:3] == ["-m", "pjax.train"]
    flag, _, path = cmd[3].partition(":")
    assert flag.endswith("pjax/config_io.py") and path == str(tmp_path / "s" / "points" / name / "point_config.json")
    point = config_io.load_run_config(path)
    assert (point.loss.beta, point.seed, point.train.steps) == (0.1, 0, 2)

    ran = sweep.run_sweep(base, grid[:0] + sweep.parse_grid(["loss.beta=0.3"]), 1, tmp_path / "r", launcher="submit",
                          submit="bash -c {command} > {workdir}/train.log 2>&1")
    assert ran["finished"] == 1, (tmp_path / "r" / "points" / "loss.beta-0.3__seed-0" / "train.log").read_text()[-3000:]
    workdir = tmp_path / "r" / "points" / "loss.beta-0.3__seed-0"
    assert config_io.load_run_config(workdir / "config.json") == config_io.load_run_config(workdir / "point_config.json")
    with pytest.raises(ValueError, match="must contain"):
        sweep.run_sweep(base, [], 1, tmp_path / "t", launcher="submit", submit="sbatch")
