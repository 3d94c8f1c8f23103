"""Peer benchmark: the same DPO and SFT train step in pjax and in TRL, interleaved and probe-gated.

    python -m experiments.peer_bench [--rounds=5] [--max-rounds=8] [--steps=8] [--warmup=2]
        [--workloads=dpo,sft] [--gate=0.15] [--gate-reference=median|max] [--attn=eager|sdpa]
        [--out=peer_bench.json] [--pjax-flag=--config.data.layout=shared_prompt ...]  # repeatable
    python -m experiments.peer_bench --from-json=peer_bench.json [--gate=0.1 --gate-reference=max]

Needs the `bench` extra (`pip install -e '.[bench]'`: trl, accelerate, CPU torch, transformers).

Workload (issue 17): a random-init Llama, vocab 1000, d_model 256, d_ff 1024, 4 layers, 4 heads, 4 kv
heads (head_dim 64), untied LM head, fp32 params and compute, no gradient checkpointing, AdamW lr 1e-5
(b2 0.95, no weight decay, grad-norm clip 1.0 in both), 64 prompt + 64 completion tokens per sequence.

- DPO: 8 pairs per step (chosen and rejected rows: 8 x 2 x 128 = 2,048 tokens), beta 0.1, sigmoid loss,
  an explicit frozen reference model whose forward runs every step (pjax: `experiments.bench` keeps a
  copy of the initial params and the reference forward is inside the step; TRL: `ref_model=` a deep copy
  of the initial model, `precompute_ref_log_probs=False`).
- SFT: 16 rows of 128 tokens per step (2,048 tokens), next-token cross-entropy averaged over the 64
  completion targets of every row (1,024 per step) in both: pjax's `completion_mask[..., 1:]`, TRL's
  labels = -100 on the prompt (`completion_only_loss=True`).

Every run is a fresh subprocess (so no two thread pools ever share a process). Per round and workload
the order is: probe, pjax, probe, probe, TRL, probe. pjax: `python -m experiments.bench` (its step is
`pjax.core.step.TrainStep` on one random batch, `--warmup` calls discarded after compilation, the median
over `--steps` calls). TRL: `DPOTrainer` / `SFTTrainer` of `trl` on a dataset of random token ids,
`max_steps = warmup + steps`, each optimizer step timed from `on_step_begin` to `on_step_end` of a
`TrainerCallback` (forward + backward of the micro-batch, reference forward, grad clip, AdamW, lr
schedule, zero_grad; the collation of the next batch is outside, as pjax's timed step reuses one
device batch); the first `--warmup` steps discarded; torch with `torch.set_num_threads(2)`; the model's
`attn_implementation` is "eager" by default (`--attn=sdpa` for the other: in quick interleaved checks on
the 2-core EPYC at T = 128, not all of them probe-gated, eager took 0.60-0.75 s per DPO step (4 runs) and
0.45-0.47 s per SFT step (3) against sdpa's 0.71-0.85 s (4) and 0.51-0.53 s (4)). `--rounds` rounds are run; with `--max-rounds` more follow
(up to that many in all) while a workload has fewer than `--rounds` rounds whose two runs both count.

TRL's data: DPO goes through TRL's own text pipeline with a word-level tokenizer whose words are the
token ids ("t2" .. "t999", pad "<pad>" = 0, eos "</s>" = 1, nothing else added): prompt = 64 random ids,
chosen / rejected = 63 random ids each, to which TRL appends its EOS, so each row is exactly 64 + 64
tokens. SFT is given pre-tokenized `input_ids` (128 random ids) and `completion_mask` (64 x 0, 64 x 1),
which TRL uses as is (no EOS added). The worker checks the collated batch: shape, no padding, loss tokens.

Probe: a numpy float32 1024 x 1024 @ 1024 x 1024 matmul in its own subprocess, best of 10 timings
(after one untimed), as GFLOP/s = 2 * 1024^3 / best seconds. Gate: a run counts only if its probe before
and its probe after are within `--gate` of each other and each within `--gate` of the session's median
probe (relative difference |a - b| / max(a, b); `--gate-reference=max`: of the session's best probe,
i.e. only runs on an otherwise idle machine count). A round's ratio needs both of its runs to count.

Reported per workload: median s/step and tokens/s of each framework (over the runs that count), the
per-round ratio pjax tokens/s / TRL tokens/s (same tokens per step, so TRL s/step / pjax s/step) as
median [min - max], and achieved GFLOP/s as a fraction of the run's probe (the mean of its two probes),
with the model FLOPs per step that `experiments.bench` reports (its formula: 6N + 6A per trained token,
plus 2N + 2A per token for DPO's reference forward) used for both frameworks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]

# The issue-17 workload, in pjax config overrides (experiments.bench) and in transformers terms.
MODEL = dict(vocab_size=1000, d_model=256, d_ff=1024, n_layers=4, n_heads=4, n_kv_heads=4)
PROMPT_LEN = COMPLETION_LEN = 64
LR = 1e-5
BETA = 0.1
TORCH_THREADS = 2
WORKLOADS = {
    # name: (pjax config, rows per step: DPO pairs / SFT sequences)
    "dpo": ("configs/dpo_tiny.py", 8),
    "sft": ("configs/sft_tiny.py", 16),
}
PROBE_N = 1024
PROBE_REPEATS = 10
FRAMEWORKS = ("pjax", "trl")


# ------------------------------------------------------------------------------ gate and statistics
def rel_diff(a: float, b: float) -> float:
    """|a - b| / max(a, b): 0 when equal, 0.2 for 100 vs 80."""
    return abs(a - b) / max(a, b)


def gate_run(before: float | None, after: float | None, session: float, tol: float) -> str | None:
    """None when the run counts, else why not. Probes are GFLOP/s (None: the probe failed); `session` is
    the session's reference probe (its median by default)."""
    if before is None or after is None:
        return "probe failed"
    if rel_diff(before, after) > tol:
        return f"probes disagree: {before:.1f} vs {after:.1f} GFLOP/s"
    for name, p in (("before", before), ("after", after)):
        if rel_diff(p, session) > tol:
            return f"probe {name} {p:.1f} GFLOP/s vs session reference {session:.1f}"
    return None


def apply_gate(runs: list[dict[str, Any]], tol: float, reference: str = "median") -> float:
    """Sets `run['counted']` and `run['discard_reason']` on every run; returns the session's reference
    probe: the median (or with `reference='max'` the best) of every probe taken, before and after, of
    every run."""
    probes = [p for r in runs for p in (r.get("probe_before"), r.get("probe_after")) if p is not None]
    if reference not in ("median", "max"):
        raise ValueError(f"reference must be 'median' or 'max', not {reference!r}")
    ref = (statistics.median(probes) if reference == "median" else max(probes)) if probes else float("nan")
    for r in runs:
        reason = "run failed" if r.get("step_s") is None else gate_run(
            r.get("probe_before"), r.get("probe_after"), ref, tol)
        r["counted"] = reason is None
        r["discard_reason"] = reason
    return ref


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count (None for an empty list)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict[str, Any]], workload: str) -> dict[str, Any]:
    """Per-framework medians over the counted runs of `workload` and the per-round ratio
    pjax tokens/s / TRL tokens/s over the rounds whose pjax and TRL runs both count."""
    mine = [r for r in runs if r["workload"] == workload]
    out: dict[str, Any] = {"runs": len(mine), "discarded": sum(not r["counted"] for r in mine)}
    for fw in FRAMEWORKS:
        ok = [r for r in mine if r["framework"] == fw and r["counted"]]
        out[fw] = {
            "step_s": spread([r["step_s"] for r in ok]),
            "tokens_per_s": spread([r["tokens_per_step"] / r["step_s"] for r in ok]),
            "probe_fraction": spread([r["flops_per_step"] / r["step_s"] / 1e9
                                      / ((r["probe_before"] + r["probe_after"]) / 2)
                                      for r in ok if r.get("flops_per_step")]),
            "achieved_gflops": spread([r["flops_per_step"] / r["step_s"] / 1e9 for r in ok
                                       if r.get("flops_per_step")]),
        }
    ratios = []
    for rnd in sorted({r["round"] for r in mine}):
        pair = {r["framework"]: r for r in mine if r["round"] == rnd}
        if all(fw in pair and pair[fw]["counted"] for fw in FRAMEWORKS):
            p, t = pair["pjax"], pair["trl"]
            ratios.append((p["tokens_per_step"] / p["step_s"]) / (t["tokens_per_step"] / t["step_s"]))
    out["ratio_pjax_over_trl"] = spread(ratios)
    out["ratios"] = ratios
    return out


# ------------------------------------------------------------------------------------------ probe
def probe_worker() -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((PROBE_N, PROBE_N), dtype=np.float32)
    b = rng.standard_normal((PROBE_N, PROBE_N), dtype=np.float32)
    a @ b
    times = []
    for _ in range(PROBE_REPEATS):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return {"gflops": 2 * PROBE_N ** 3 / min(times) / 1e9, "times": times, "numpy": np.__version__}


# ---------------------------------------------------------------------------------------- TRL side
def _word_tokenizer():
    """Word-level tokenizer whose words are the ids: "t{i}" -> i (2 <= i < vocab), pad 0, eos 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, MODEL["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def trl_worker(workload: str, steps: int, warmup: int, attn: str = "eager", seed: int = 0) -> dict[str, Any]:
    import copy

    import numpy as np
    import torch

    torch.set_num_threads(TORCH_THREADS)
    import accelerate
    import transformers
    import trl
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=MODEL["vocab_size"], hidden_size=MODEL["d_model"], intermediate_size=MODEL["d_ff"],
        num_hidden_layers=MODEL["n_layers"], num_attention_heads=MODEL["n_heads"],
        num_key_value_heads=MODEL["n_kv_heads"], tie_word_embeddings=False, max_position_embeddings=2048,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, attn_implementation=attn, dtype="float32")
    model = LlamaForCausalLM(config).to(torch.float32)
    tokenizer = _word_tokenizer()
    rows = WORKLOADS[workload][1]
    n_examples = rows * (warmup + steps)
    rng = np.random.default_rng(seed)
    words = lambda n: " ".join(f"t{i}" for i in rng.integers(2, MODEL["vocab_size"], n))  # noqa: E731

    common = dict(
        output_dir=tempfile.mkdtemp(prefix="peer_bench_trl_"), per_device_train_batch_size=rows,
        gradient_accumulation_steps=1, learning_rate=LR, weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0,
        max_steps=warmup + steps, num_train_epochs=1, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to=[], dataloader_num_workers=0, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, disable_tqdm=True, seed=seed, max_length=None)

    if workload == "dpo":
        data = {"prompt": [], "chosen": [], "rejected": []}
        for _ in range(n_examples):
            data["prompt"].append(words(PROMPT_LEN))
            data["chosen"].append(" " + words(COMPLETION_LEN - 1))  # TRL appends "</s>": 64 tokens
            data["rejected"].append(" " + words(COMPLETION_LEN - 1))
        args = trl.DPOConfig(**common, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=False)
        ref_model = copy.deepcopy(model)
        trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=args,
                                 train_dataset=Dataset.from_dict(data), processing_class=tokenizer)
        lengths = {(len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) for e in trainer.train_dataset}
        assert lengths == {(PROMPT_LEN, COMPLETION_LEN, COMPLETION_LEN)}, lengths
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])
        expect_shape = (2 * rows, PROMPT_LEN + COMPLETION_LEN)
        loss_tokens = int(batch["completion_mask"].sum())
        assert trainer.ref_model is not None and trainer.precompute_ref_logps is False
    else:
        ids = rng.integers(2, MODEL["vocab_size"], (n_examples, PROMPT_LEN + COMPLETION_LEN)).tolist()
        mask = [[0] * PROMPT_LEN + [1] * COMPLETION_LEN] * n_examples
        args = trl.SFTConfig(**common, completion_only_loss=True, packing=False)
        trainer = trl.SFTTrainer(model=model, args=args, processing_class=tokenizer,
                                 train_dataset=Dataset.from_dict({"input_ids": ids, "completion_mask": mask}))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])
        expect_shape = (rows, PROMPT_LEN + COMPLETION_LEN)
        # labels are shifted inside the loss: targets = labels[:, 1:] != -100
        loss_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert not trainer.model.is_activation_checkpointing  # pjax runs with remat=none
    assert tuple(batch["input_ids"].shape) == expect_shape, batch["input_ids"].shape
    assert int(batch["attention_mask"].sum()) == expect_shape[0] * expect_shape[1]  # no padding

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin, self.step_s, self.ends = None, [], []

        def on_step_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_s.append(now - self.begin)
            self.ends.append(now)

    timer = Timer()
    trainer.add_callback(timer)
    t0 = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t0
    assert len(timer.step_s) == warmup + steps, len(timer.step_s)
    timed = timer.step_s[warmup:]
    intervals = [b - a for a, b in zip(timer.ends[warmup:], timer.ends[warmup + 1:])]
    tokens = expect_shape[0] * expect_shape[1]
    median = statistics.median(timed)
    return {
        "framework": "trl", "workload": workload, "warmup": warmup, "steps": steps,
        "step_s_median": median, "step_s_all": timed, "warmup_step_s": timer.step_s[:warmup],
        "interval_s_median": statistics.median(intervals) if intervals else None,
        "tokens_per_step": tokens, "tokens_per_s": tokens / median, "loss_tokens_per_step": loss_tokens,
        "batch_shape": list(expect_shape), "train_s": train_s, "train_loss": out.training_loss,
        "attn_implementation": model.config._attn_implementation, "optimizer": type(trainer.optimizer).__name__,
        "optim": str(args.optim), "torch_threads": torch.get_num_threads(),
        "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
        "params": sum(p.numel() for p in model.parameters()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "accelerate": accelerate.__version__},
    }


# --------------------------------------------------------------------------------------- pjax side
def pjax_command(workload: str, steps: int, warmup: int, out: str, extra: Iterable[str] = ()) -> list[str]:
    config, rows = WORKLOADS[workload]
    return [sys.executable, "-m", "experiments.bench", f"--config={config}", f"--steps={steps}",
            f"--warmup={warmup}", f"--prompt-len={PROMPT_LEN}", f"--completion-len={COMPLETION_LEN}",
            f"--out={out}", *(f"--config.model.{k}={v}" for k, v in MODEL.items()),
            "--config.model.tie_embeddings=False", f"--config.train.batch_size={rows}", "--config.init_from=",
            f"--config.optim.lr={LR}", *extra]


def trl_command(workload: str, steps: int, warmup: int, out: str, attn: str) -> list[str]:
    return [sys.executable, "-m", "experiments.peer_bench", f"--worker=trl-{workload}", f"--steps={steps}",
            f"--warmup={warmup}", f"--attn={attn}", f"--out={out}"]


# ------------------------------------------------------------------------------------ orchestrator
def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr[-3000:]


def probe(timeout: float = 120) -> float | None:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    rc, _ = _run([sys.executable, "-m", "experiments.peer_bench", "--worker=probe", f"--out={out}"], timeout)
    try:
        return json.loads(Path(out).read_text())["gflops"] if rc == 0 else None
    finally:
        Path(out).unlink(missing_ok=True)


def lscpu() -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info.setdefault("Model name", platform.processor() or platform.machine())
    info["os.cpu_count"] = os.cpu_count()
    return info


def one_run(framework: str, workload: str, rnd: int, args, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{workload}_{framework}_r{rnd}.json"
    cmd = (pjax_command(workload, args.steps, args.warmup, str(out), args.pjax_flag) if framework == "pjax"
           else trl_command(workload, args.steps, args.warmup, str(out), args.attn))
    run: dict[str, Any] = {"round": rnd, "workload": workload, "framework": framework, "command": cmd}
    run["probe_before"] = probe()
    t0 = time.perf_counter()
    try:
        rc, err = _run(cmd, args.run_timeout)
    except subprocess.TimeoutExpired:
        rc, err = -1, "timeout"
    run["wall_s"] = time.perf_counter() - t0
    run["probe_after"] = probe()
    if rc == 0 and out.exists():
        result = json.loads(out.read_text())
        run.update(step_s=result["step_s_median"], step_s_all=result["step_s_all"],
                   tokens_per_step=result["tokens_per_step"], flops_per_step=result.get("flops_per_step"))
        run["result"] = {k: v for k, v in result.items() if k not in ("flop_formula", "memory")}
    else:
        run.update(step_s=None, tokens_per_step=None, flops_per_step=None, error=f"rc={rc}: {err}")
    return run


def _fmt(s: dict[str, Any], spec: str = ".3f") -> str:
    if not s["n"]:
        return "n/a"
    return f"{s['median']:{spec}} [{s['min']:{spec}}-{s['max']:{spec}}] (n={s['n']})"


def orchestrate(args) -> dict[str, Any]:
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; choose from {sorted(WORKLOADS)}")
    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        print(f"WARNING: XLA_FLAGS={os.environ['XLA_FLAGS']!r} reaches the pjax runs", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="peer_bench_"))
    runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    max_rounds = max(args.rounds, args.max_rounds or 0)
    rnd = 0
    while rnd < max_rounds:
        if rnd >= args.rounds:  # extra rounds only while some workload has fewer than --rounds counted pairs
            apply_gate(runs, args.gate, args.gate_reference)
            if all(summarize(runs, w)["ratio_pjax_over_trl"]["n"] >= args.rounds for w in workloads):
                break
        for w in workloads:
            for fw in FRAMEWORKS:
                r = one_run(fw, w, rnd, args, workdir)
                runs.append(r)
                status = f"{r['step_s']:.3f} s/step" if r["step_s"] is not None else r.get("error", "failed")
                pb, pa = r["probe_before"], r["probe_after"]
                print(f"[round {rnd}] {w} {fw}: {status}; probe {pb and round(pb, 1)} -> {pa and round(pa, 1)} "
                      f"GFLOP/s ({r['wall_s']:.0f} s)", file=sys.stderr, flush=True)
        rnd += 1
    fl_by_workload = {w: next((r["flops_per_step"] for r in runs if r["workload"] == w and r["framework"] == "pjax"
                               and r.get("flops_per_step")), None) for w in workloads}
    for r in runs:  # TRL runs the same model on the same tokens: the same model FLOPs per step
        if r["framework"] == "trl" and r["step_s"] is not None:
            r["flops_per_step"] = fl_by_workload[r["workload"]]
    trl_versions = next((r["result"]["versions"] for r in runs if r["framework"] == "trl" and "result" in r), {})
    jax_version = next((r["result"]["jax_version"] for r in runs if r["framework"] == "pjax" and "result" in r), None)
    result = {
        "machine": lscpu(),
        "versions": {**trl_versions, "jax": jax_version, "python": platform.python_version()},
        "command": " ".join(["python", "-m", "experiments.peer_bench", *sys.argv[1:]]),
        "settings": {"rounds": args.rounds, "max_rounds": max_rounds, "rounds_run": rnd, "steps": args.steps,
                     "warmup": args.warmup, "attn": args.attn, "pjax_flags": list(args.pjax_flag),
                     "probe": f"numpy float32 {PROBE_N}^2 matmul, best of {PROBE_REPEATS}",
                     "torch_threads": TORCH_THREADS, "XLA_FLAGS": os.environ.get("XLA_FLAGS")},
        "total_s": time.perf_counter() - t_start,
        "workloads": workloads,
        "runs": runs,
    }
    return finish(result, args.gate, args.gate_reference)


def finish(result: dict[str, Any], gate: float, reference: str) -> dict[str, Any]:
    """Gate the runs of `result` (in place) and add the summaries."""
    runs = result["runs"]
    result["gate"] = {"tolerance": gate, "reference": reference,
                      "session_probe_gflops": apply_gate(runs, gate, reference)}
    result["probes_gflops"] = spread([p for r in runs for p in (r["probe_before"], r["probe_after"])
                                      if p is not None])
    result["summary"] = {w: summarize(runs, w) for w in result["workloads"]}
    return result


def print_report(result: dict[str, Any]) -> None:
    m, g = result["machine"], result["gate"]
    cores = (f"{m.get('CPU(s)', m['os.cpu_count'])} CPUs, {m.get('Core(s) per socket', '?')} cores/socket, "
             f"{m.get('Thread(s) per core', '?')} thread/core")
    print(f"machine (lscpu): {m['Model name']!r}, {cores}")
    print(f"versions: {result['versions']}")
    print(f"command: {result['command']}")
    print(f"probe: session {g['reference']} {g['session_probe_gflops']:.1f} GFLOP/s (gate {g['tolerance']:.0%}); "
          f"all probes {_fmt(result['probes_gflops'], '.1f')}")
    for w, s in result["summary"].items():
        print(f"\n{w.upper()} ({s['runs']} runs, {s['discarded']} discarded by the gate or failed)")
        for fw in FRAMEWORKS:
            f = s[fw]
            print(f"  {fw:5s} s/step {_fmt(f['step_s'])}  tokens/s {_fmt(f['tokens_per_s'], '.0f')}  "
                  f"GFLOP/s {_fmt(f['achieved_gflops'], '.1f')}  fraction of probe {_fmt(f['probe_fraction'])}")
        print(f"  ratio pjax/TRL tokens/s: {_fmt(s['ratio_pjax_over_trl'], '.2f')}")
    for r in result["runs"]:
        if not r["counted"]:
            print(f"discarded: round {r['round']} {r['workload']} {r['framework']}: {r['discard_reason']}")


def parse_args(argv: Sequence[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-rounds", type=int, default=None,
                   help="run extra rounds (up to this many in all) while a workload has fewer than --rounds "
                        "rounds whose two runs pass the gate")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (median over these)")
    p.add_argument("--warmup", type=int, default=2, help="discarded steps per run (after compilation)")
    p.add_argument("--workloads", default="dpo,sft")
    p.add_argument("--gate", type=float, default=0.15, help="max relative probe difference")
    p.add_argument("--gate-reference", default="median", choices=("median", "max"),
                   help="each probe must also be within --gate of the session's median (or best) probe")
    p.add_argument("--attn", default="eager", choices=("sdpa", "eager"),
                   help="transformers attention (eager was the faster at T=128 on the 2-core EPYC)")
    p.add_argument("--pjax-flag", action="append", default=[],
                   help="extra flag for every `experiments.bench` run, e.g. --pjax-flag=--config.x=y")
    p.add_argument("--run-timeout", type=float, default=900)
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--from-json", default=None,
                   help="run nothing: gate the runs of this earlier --out again (--gate, --gate-reference) and report")
    p.add_argument("--worker", default=None, choices=("probe", "trl-dpo", "trl-sft"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker == "probe":
        result = probe_worker()
    elif args.worker:
        result = trl_worker(args.worker.removeprefix("trl-"), args.steps, args.warmup, args.attn)
    elif args.from_json:
        result = finish(json.loads(Path(args.from_json).read_text()), args.gate, args.gate_reference)
        print_report(result)
    else:
        result = orchestrate(args)
        print_report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
