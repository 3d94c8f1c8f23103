"""Each online algorithm from the same SFT export on the synthetic review task, evaluated on held-out
prompts: gold reward of samples (mean ± s.e.), win rate against the SFT policy, KL to it.

`python -m experiments.online_results --sft=runs/demo/sft/export --workdir=runs/online_results
[--iterations=100] [--rm=runs/demo/rm/export]` prints a markdown table (and writes it beside the runs).
With `--rm`, each algorithm is also run on the learned reward model's reward instead of the gold one.
GRPO on the arithmetic task's verifiable reward: `experiments/arithmetic.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from configs import grpo_tiny, ppo_tiny
from pjax import eval as evaluation
from pjax import api, logs

ALGORITHMS = {  # name -> (base config, overrides of config keys)
    "ppo": (ppo_tiny, {}),
    "ppo (separate value model)": (ppo_tiny, {"model.value_backbone": "separate"}),
    "grpo": (grpo_tiny, {}),
    "grpo (dr_grpo, k3 KL 0.05)": (grpo_tiny, {"online.loss_aggregation": "dr_grpo", "online.scale_rewards": "none",
                                              "online.kl_coef": 0.05}),
    "rloo": (grpo_tiny, {"online.algorithm": "rloo"}),
    "online_dpo (dpo)": (grpo_tiny, {"online.algorithm": "online_dpo", "loss.name": "dpo"}),
    "xpo (dpo, alpha 1e-4)": (grpo_tiny, {"online.algorithm": "xpo", "online.samples_per_prompt": 1,
                                          "online.xpo_alpha": 1e-4, "loss.name": "dpo"}),
    "raft": (grpo_tiny, {"online.algorithm": "raft"}),
    "nash_md (KL 0.1, mixture 0.5)": (grpo_tiny, {"online.algorithm": "nash_md", "online.kl_coef": 0.1,
                                                  "online.mixture_coef": 0.5}),
}


def train_and_evaluate(cfg, name: str, reward: str, num_prompts: int) -> dict:
    """Run the online phase `cfg`, then its held-out figures against its parent (`cfg.init_from`)."""
    t0 = time.perf_counter()
    out = api.train(cfg)
    seconds = time.perf_counter() - t0
    with api.on_mesh(cfg) as (mesh, rules):
        heldout = evaluation.load_heldout(cfg, num_prompts)
        result = evaluation.evaluate_policy(cfg, out["export"], cfg.init_from, heldout,
                                            evaluation.Exports(mesh, rules), evaluation.Options())
    row = {"algorithm": name, "reward": reward, "seconds": round(seconds, 1),
           **{k: result.get(k) for k in ("gold_reward", "reference_gold_reward", "win_rate_gold", "kl_to_reference",
                                         "rm_reward", "mean_length")}}
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True)
    parser.add_argument("--workdir", default="runs/online_results")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--rm", default="", help="also run every algorithm on this reward model's reward")
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--only", default="", help="algorithm names (see ALGORITHMS) to run, separated by ';'")
    args = parser.parse_args()
    logs.configure()
    root = Path(args.workdir).resolve()
    rewards = ["gold"] + (["rm"] if args.rm else [])
    rows = []
    for reward in rewards:
        for name, (base, overrides) in ALGORITHMS.items():
            if args.only and name not in args.only.split(";"):
                continue
            cfg = base.get_config()
            slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
            cfg.workdir, cfg.init_from = str(root / f"{reward}-{slug}"), args.sft
            cfg.train.steps, cfg.train.progress, cfg.train.save_every = args.iterations, False, args.iterations
            for key, value in overrides.items():
                section, field = key.split(".")
                cfg[section][field] = value
            cfg.online.reward = reward
            if reward == "rm":
                cfg.reward.models = (args.rm,)
            rows.append(train_and_evaluate(cfg, name, reward, args.num_prompts))
    pm = lambda v: f"{v[0]:+.3f} ± {v[1]:.3f}"  # noqa: E731
    lines = [f"| algorithm | trained on | gold reward, held-out (SFT {pm(rows[0]['reference_gold_reward'])}) | "
             "win rate vs SFT (gold) | KL to SFT (nats/seq) | wall time (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['reward']} | {pm(r['gold_reward'])} | {pm(r['win_rate_gold'])} | "
                     f"{pm(r['kl_to_reference'])} | {r['seconds']:.0f} |")
    table = "\n".join(lines)
    (root / "online_results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
