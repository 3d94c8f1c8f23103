"""GRPO on the arithmetic task's verifiable reward: held-out accuracy before and after, paired by prompt.

    python -m experiments.arithmetic --workdir=runs/arithmetic [--samples=32] [--iterations=200]

Trains `configs/sft_arithmetic.py` then `configs/grpo_arithmetic.py` from its export (each resumed or
skipped when already finished in the workdir), then samples both policies `--samples` times at T = 1 on
each of the task's 512 held-out prompts (sums never seen in training): accuracy per prompt, the
difference GRPO − SFT with its standard error over prompts (paired: the same prompts), greedy accuracy,
and the Monte Carlo KL of GRPO's samples to the SFT policy. Prints a markdown table (also written to
`<workdir>/arithmetic.md`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from configs import grpo_arithmetic, sft_arithmetic
from pjax import api, checkpoint
from pjax import eval as evaluation
from pjax.data import batching, tasks


def accuracy(mesh_rules, cfg, export: str, task, prompts: dict, texts: list[str], samples: int, temperature: float,
             seed: int) -> tuple[np.ndarray, dict]:
    """Per-prompt accuracy `[P]` over `samples` completions (temperature 0: greedy, one), and the samples."""
    model_def, params, _ = checkpoint.load_export(export, *mesh_rules)
    tok = task.tokenizer
    out = evaluation.sample(model_def, params, prompts, seed=seed, max_new_tokens=cfg.generate.max_new_tokens,
                            eos_id=tuple(tok.stop_ids), pad_id=tok.pad_id, temperature=temperature,
                            num_samples=samples)
    completions = evaluation.decode_completions(tok, out)
    right = np.array([task.reward(texts[p], c) for p, c in zip(out["prompt_index"], completions)])
    return right.reshape(len(texts), samples).mean(1), out


def mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


def main() -> None:
    from pjax import logs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/arithmetic")
    parser.add_argument("--samples", type=int, default=32, help="samples per held-out prompt at T = 1")
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    logs.configure()
    root = Path(args.workdir).resolve()
    sft = sft_arithmetic.get_config()
    sft.workdir, sft.train.progress = str(root / "sft"), False
    grpo = grpo_arithmetic.get_config()
    grpo.workdir, grpo.init_from, grpo.train.progress = str(root / "grpo"), str(root / "sft" / "export"), False
    grpo.train.steps = args.iterations
    seconds = {}
    for name, cfg in (("sft", sft), ("grpo", grpo)):
        t0 = time.perf_counter()
        api.train(cfg)
        seconds[name] = time.perf_counter() - t0
    task = tasks.build_task(sft)
    texts = list(task.heldout_prompts)
    prompts = batching.encode_prompts(task.tokenizer, texts, sft.data.max_prompt_len)
    with api.on_mesh(sft) as (mesh, rules):
        figures = {}
        for name in ("sft", "grpo"):
            export = str(root / name / "export")
            sampled, out = accuracy((mesh, rules), sft, export, task, prompts, texts, args.samples, 1.0, seed=7)
            greedy, _ = accuracy((mesh, rules), sft, export, task, prompts, texts, 1, 0.0, seed=0)
            figures[name] = {"sampled": sampled, "greedy": greedy, "samples": out}
        ref_def, ref_params, _ = checkpoint.load_export(str(root / "sft" / "export"), mesh, rules)
        pol_def, pol_params, _ = checkpoint.load_export(str(root / "grpo" / "export"), mesh, rules)
        kl = evaluation.kl_to_reference(pol_def, pol_params, ref_params, figures["grpo"]["samples"], ref_def)
    diff = figures["grpo"]["sampled"] - figures["sft"]["sampled"]
    gdiff = figures["grpo"]["greedy"] - figures["sft"]["greedy"]
    pct = lambda v: f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}"  # noqa: E731
    lines = [f"| policy | accuracy, T = 1 ({args.samples} samples per prompt) | greedy accuracy | KL to SFT (nats/seq) "
             "| wall time (s) |", "|---|---|---|---|---|",
             f"| SFT | {pct(mean_se(figures['sft']['sampled']))}% | {pct(mean_se(figures['sft']['greedy']))}% | – | "
             f"{seconds['sft']:.0f} |",
             f"| GRPO, {args.iterations} iterations | {pct(mean_se(figures['grpo']['sampled']))}% | "
             f"{pct(mean_se(figures['grpo']['greedy']))}% | {kl[0]:.2f} ± {kl[1]:.2f} | {seconds['grpo']:.0f} |",
             f"| GRPO − SFT, same {len(texts)} prompts | {pct(mean_se(diff))} points | {pct(mean_se(gdiff))} points | | |"]
    text = "\n".join(lines) + "\n"
    (root / "arithmetic.md").write_text(text)
    (root / "arithmetic.json").write_text(json.dumps({
        "prompts": len(texts), "samples": args.samples, "kl": kl, "seconds": seconds,
        **{f"{n}_{k}": mean_se(figures[n][k]) for n in figures for k in ("sampled", "greedy")},
        "diff_sampled": mean_se(diff), "diff_greedy": mean_se(gdiff)}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
