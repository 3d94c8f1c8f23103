"""DPO vs IPO vs SimPO vs cDPO vs rDPO under label noise (the rDPO paper's claim: rDPO degrades least).

    python -m experiments.noise --workdir=runs/noise [--seeds=2] [--steps=150] [--publish]

One `experiments.sweep` of the tiny Llama's DPO-family phase from the demo SFT export, on the synthetic
task's preference pairs with 0%, 20% and 40% of the labels flipped (`data.label_noise`; the flips are
drawn from a stream independent of the rate, so the pairs are the same at every rate), each objective
with its own scale (zipped grid keys), cDPO and rDPO with eps = 0.2 (one guess of the flip rate, as a
practitioner would make it; the rDPO paper assumes eps known). Every policy is evaluated on 128
held-out prompts: gold reward of one sample each and KL to the SFT policy. Writes the sweep's table
and plots to the workdir, plus `noise.md` and `noise.png|svg` (gold reward against the noise rate, one
line per objective, ± s.e. over seeds); `--publish` copies them to `experiments/results/noise/`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from configs import dpo_tiny
from experiments import literature, sweep

OBJECTIVES = "loss.name,loss.beta,loss.label_smoothing,loss.simpo_gamma=" + ",".join([
    "dpo:0.1:0:0.5", "ipo:0.1:0:0.5", "simpo:2.0:0:1.0", "cdpo:0.1:0.2:0.5", "robust:0.1:0.2:0.5"])
NOISE = "data.label_noise=0,0.2,0.4"
NAMES = {"dpo": "DPO", "ipo": "IPO", "simpo": "SimPO (β 2, γ 1)", "cdpo": "cDPO (ε 0.2)", "robust": "rDPO (ε 0.2)"}


def plot(rows: list[dict], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for name, label in NAMES.items():
        points = sorted((float(r["data.label_noise"]), r["eval/gold_reward"]) for r in rows
                        if r["loss.name"] == name and r["eval/gold_reward"] is not None)
        if points:
            xs = [p[0] for p in points]
            ax.errorbar(xs, [p[1][0] for p in points], yerr=[p[1][1] for p in points], marker="o", capsize=3,
                        label=label)
    ax.set_xlabel("fraction of training labels flipped")
    ax.set_ylabel("gold reward of samples (held-out prompts)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return sweep._save(fig, stem)


def main() -> None:
    from pjax import logs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/noise")
    parser.add_argument("--parents", default="runs/literature", help="where the demo SFT phase runs (shared)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--publish", action="store_true", help="copy the results to experiments/results/noise/")
    args = parser.parse_args()
    logs.configure()
    root = Path(args.workdir).resolve()
    sft = literature.demo_phase(Path(args.parents).resolve(), "sft")
    base = literature.tiny_policy_config(dpo_tiny.get_config(), sft)
    base.train.steps = args.steps
    grid = sweep.parse_grid([OBJECTIVES, NOISE])
    summary = sweep.run_sweep(base, grid, args.seeds, root / "sweep", evaluate=True, num_prompts=args.num_prompts,
                              frontier_by="loss.name",
                              table_metrics=("eval/gold_reward", "eval/win_rate_gold", "eval/kl_to_reference",
                                             "final/loss"))
    table = summary["table"]
    files = plot(table, root / "noise")
    lines = ["| objective | labels flipped | seeds | gold reward of samples | win rate vs SFT | KL to SFT |",
             "|---|---|---|---|---|---|"]
    for e in table:
        if e["eval/gold_reward"] is None:  # no finished seed
            continue
        g, w, k = (e[m] for m in ("eval/gold_reward", "eval/win_rate_gold", "eval/kl_to_reference"))
        lines.append(f"| {NAMES[e['loss.name']]} | {float(e['data.label_noise']):.0%} | {e['seeds']} | "
                     f"{g[0]:+.3f} ± {g[1]:.3f} | {w[0]:.3f} ± {w[1]:.3f} | {k[0]:.2f} ± {k[1]:.2f} |")
    drop = {}
    for name in NAMES:
        by_noise = {float(e["data.label_noise"]): e["eval/gold_reward"][0] for e in table
                    if e["loss.name"] == name and e["eval/gold_reward"] is not None}
        if 0.0 in by_noise and 0.4 in by_noise:
            drop[name] = by_noise[0.0] - by_noise[0.4]
    lines += ["", "Drop in gold reward from 0% to 40% flipped: " +
              ", ".join(f"{NAMES[n]} {d:+.3f}" for n, d in sorted(drop.items(), key=lambda x: x[1]))]
    text = "\n".join(lines) + "\n"
    (root / "noise.md").write_text(text)
    (root / "noise.json").write_text(json.dumps({"table": table, "drop_0_to_40": drop}, indent=2, default=str))
    print(text)
    if args.publish:
        literature.publish([root / "noise.md", root / "noise.json", *files, root / "sweep" / "sweep.csv"], "noise")


if __name__ == "__main__":
    main()
