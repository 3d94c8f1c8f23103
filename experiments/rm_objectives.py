"""Reward-model objectives side by side on the synthetic task, each from the same SFT export.

`python -m experiments.rm_objectives --sft=runs/demo/sft/export --workdir=runs/rm_objectives`
trains one rm phase per variant (the `rm` phase of `configs/pipeline_tiny.py` with a few overrides)
and reports, on the task's held-out pairs, the reward model's accuracy against the (Bradley-Terry
sampled) labels and its agreement with the gold reward's ordering, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from configs import pipeline_tiny
from pjax import eval as evaluation
from pjax import api, logs

VARIANTS = {  # name -> overrides of the rm phase
    "bradley_terry": {},
    "bradley_terry, label_smoothing 0.1": {"loss.label_smoothing": 0.1},
    "bradley_terry, center_rewards 0.01": {"loss.center_rewards_coefficient": 0.01},
    "bradley_terry, 3 heads, uwo": {"model.reward_heads": 3, "reward.aggregate": "uwo"},
    "plackett_luce, lists of 4 (gold scores)": {"loss.name": "plackett_luce", "data.list_size": 4},
    "reward_mse, scored rows (gold scores)": {"loss.name": "reward_mse"},
}


def configure(cfg, overrides: dict) -> None:
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[leaf] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="the SFT export the reward models start from")
    parser.add_argument("--workdir", default="runs/rm_objectives")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--only", default="", help="comma-separated variant numbers to run (default: all)")
    args = parser.parse_args()
    logs.configure()
    root = Path(args.workdir).resolve()
    rows = []
    only = {int(i) for i in args.only.split(",") if i}
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        if only and i not in only:
            continue
        cfg = pipeline_tiny.get_config().rm
        cfg.workdir, cfg.init_from, cfg.train.steps = str(root / f"v{i}"), args.sft, args.steps
        configure(cfg, overrides)
        t0 = time.perf_counter()
        out = api.train(cfg)
        seconds = time.perf_counter() - t0
        with api.on_mesh(cfg) as (mesh, rules):
            heldout = evaluation.load_heldout(cfg, 1)
            result = evaluation.evaluate_reward_model(cfg, out["export"], heldout, evaluation.Exports(mesh, rules))
        rows.append({"variant": name, "seconds": round(seconds, 1), **{k: result.get(k) for k in (
            "reward_accuracy", "gold_agreement", "reward_accuracy_per_head", "num_pairs")}})
        print(json.dumps(rows[-1]))
    lines = ["| objective | held-out accuracy (labels) | agreement with gold ordering |", "|---|---|---|"]
    for r in rows:
        heads = f" (heads {', '.join(f'{a:.3f}' for a in r['reward_accuracy_per_head'])})" \
            if r["reward_accuracy_per_head"] else ""
        lines.append(f"| {r['variant']} | {r['reward_accuracy']:.3f}{heads} | {r['gold_agreement']:.3f} |")
    table = "\n".join(lines)
    (root / "rm_objectives.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
