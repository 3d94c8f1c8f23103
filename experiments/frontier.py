"""The reward-KL frontier of DPO, IPO, PPO and best-of-N (the DPO paper's Figure 2, in miniature).

    python -m experiments.frontier --workdir=runs/frontier [--seeds=1] [--publish]

From the demo SFT export (and the demo reward model trained on the same synthetic preference pairs):
- DPO and IPO on the pairs, one policy per beta (`experiments.sweep` over `loss.name` x `loss.beta`);
- PPO on the reward model's reward, one policy per `online.kl_coef` (a sweep over it);
- best-of-N of the SFT policy's samples, selected by the reward model (and, as an upper bound, by the
  gold reward itself), N = 1 ... 64, at the analytic KL bound log N - (N - 1) / N.
Each policy is evaluated on held-out prompts: gold reward of one sample each and Monte Carlo KL to the
SFT policy. Writes `frontier.md` and `frontier.png|svg`; `--publish` copies them to
`experiments/results/frontier/`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from configs import dpo_tiny, ppo_tiny
from experiments import literature, sweep

DPO_GRID = ["loss.name=dpo,ipo", "loss.beta=0.03,0.1,0.3,1.0"]
PPO_GRID = ["online.kl_coef=0.01,0.03,0.1,0.3"]
BEST_OF_N = (1, 2, 4, 8, 16, 32, 64)


def best_of_n(sft: str, rm: str, num_prompts: int, plot: Path) -> dict:
    """Best-of-N curves of the SFT policy: the gold reward of the sample the RM (or gold) picks."""
    from pjax import api
    from pjax import eval as evaluation

    cfg = literature.tiny_policy_config(dpo_tiny.get_config(), sft)
    cfg.reward.models = (rm,)
    with api.on_mesh(cfg) as (mesh, rules):
        heldout = evaluation.load_heldout(cfg, num_prompts)
        return evaluation.best_of_n(cfg, sft, heldout, evaluation.Exports(mesh, rules),
                                    evaluation.Options(best_of_n=BEST_OF_N, best_of_n_prompts=num_prompts),
                                    plot)["curves"]


def main() -> None:
    from pjax import logs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/frontier")
    parser.add_argument("--parents", default="runs/literature", help="where the demo SFT and RM phases run (shared)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--dpo_steps", type=int, default=150)
    parser.add_argument("--ppo_iterations", type=int, default=60)
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--publish", action="store_true", help="copy the results to experiments/results/frontier/")
    args = parser.parse_args()
    logs.configure()
    root, parents = Path(args.workdir).resolve(), Path(args.parents).resolve()
    rm = literature.demo_phase(parents, "rm")
    sft = str(parents / "sft" / "export")

    dpo = literature.tiny_policy_config(dpo_tiny.get_config(), sft)
    dpo.train.steps = args.dpo_steps
    dpo_rows = sweep.run_sweep(dpo, sweep.parse_grid(DPO_GRID), args.seeds, root / "dpo_ipo", evaluate=True,
                               num_prompts=args.num_prompts, frontier_by="loss.name")["rows"]
    ppo = literature.tiny_policy_config(ppo_tiny.get_config(), sft)
    ppo.train.steps, ppo.train.log_every, ppo.train.save_every = args.ppo_iterations, 10, args.ppo_iterations
    ppo.online.reward, ppo.reward.models = "rm", (rm,)
    ppo_rows = sweep.run_sweep(ppo, sweep.parse_grid(PPO_GRID), args.seeds, root / "ppo", evaluate=True,
                               num_prompts=args.num_prompts, curve_metrics=("reward/mean", "kl"))["rows"]

    series = sweep.frontier_series(dpo_rows, "loss.name", ["loss.beta"], y="eval/gold_reward")
    series = {("DPO (β)" if k.endswith("dpo") else "IPO (τ)"): v for k, v in series.items()}
    series["PPO on the RM (KL coef)"] = sweep.frontier_series(
        [{**r, "algo": "ppo"} for r in ppo_rows], "algo", ["online.kl_coef"], y="eval/gold_reward")["algo=ppo"]
    curves = best_of_n(sft, rm, args.num_prompts, root / "best_of_n.png")
    for key, name in (("gold_selected_by_rm", "best-of-N, RM picks (KL bound)"),
                      ("gold_oracle", "best-of-N, gold picks (KL bound)")):
        series[name] = [{"label": f"N={c['n']}", "x": (c["kl_bound"], 0.0), "y": (c["mean"], c["stderr"]), "n": 1,
                         "y_key": "eval/gold_reward"} for c in curves[key]]
    files = sweep.plot_frontier(series, root / "frontier",
                                title="gold reward of samples vs KL to the SFT policy (tiny Llama, synthetic task)")
    lines = ["| method | setting | KL to SFT (nats/seq) | gold reward of samples |", "|---|---|---|---|"]
    for name, points in series.items():
        for p in points:
            lines.append(f"| {name} | {p['label']} | {p['x'][0]:.2f} ± {p['x'][1]:.2f} | "
                         f"{p['y'][0]:+.3f} ± {p['y'][1]:.3f} |")
    text = "\n".join(lines) + "\n"
    (root / "frontier.md").write_text(text)
    (root / "frontier.json").write_text(json.dumps(series, indent=2, default=str))
    print(text)
    if args.publish:
        literature.publish([root / "frontier.md", root / "frontier.json", *files], "frontier")


if __name__ == "__main__":
    main()
