"""`experiments.peer_bench`: the probe gate and the ratio statistics on synthetic runs (no benchmark is run,
neither torch nor TRL is imported), and the pjax command line it builds."""

import math

import numpy as np
import pytest

from experiments import peer_bench


def run(rnd, framework, step_s, before, after, workload="dpo", tokens=2048, flops=None):
    return {"round": rnd, "workload": workload, "framework": framework, "step_s": step_s,
            "probe_before": before, "probe_after": after, "tokens_per_step": tokens, "flops_per_step": flops}


def test_rel_diff_and_gate_of_one_run():
    assert peer_bench.rel_diff(100.0, 80.0) == pytest.approx(0.2)
    assert peer_bench.rel_diff(80.0, 100.0) == pytest.approx(0.2)
    assert peer_bench.gate_run(100.0, 95.0, 100.0, 0.15) is None           # 5% apart: counts
    assert "disagree" in peer_bench.gate_run(100.0, 80.0, 100.0, 0.15)     # 20% apart
    assert "session reference" in peer_bench.gate_run(70.0, 72.0, 100.0, 0.15)  # agree, but 28-30% below
    assert peer_bench.gate_run(None, 100.0, 100.0, 0.15) == "probe failed"


def test_gate_discards_runs_whose_probes_disagree():
    runs = [
        run(0, "pjax", 0.8, 100.0, 104.0),
        run(0, "trl", 0.6, 98.0, 101.0),
        run(1, "pjax", 1.0, 102.0, 99.0),
        run(1, "trl", 0.8, 100.0, 75.0),     # probes 25% apart: discarded
        run(2, "pjax", 0.9, 60.0, 62.0),     # consistent but far below the session: discarded
        run(2, "trl", 0.7, 101.0, 103.0),
        run(3, "pjax", 0.85, 97.0, 100.0),
        run(3, "trl", None, 99.0, 100.0),    # the run itself failed
    ]
    all_probes = [100, 104, 98, 101, 102, 99, 100, 75, 60, 62, 101, 103, 97, 100, 99, 100]
    median = peer_bench.apply_gate(runs, 0.15)
    assert median == pytest.approx(float(np.median(all_probes)))  # 100.0
    assert [r["counted"] for r in runs] == [True, True, True, False, False, True, True, False]

    s = peer_bench.summarize(runs, "dpo")
    assert (s["runs"], s["discarded"]) == (8, 3)
    # Only round 0 has both runs counted: ratio = (2048 / 0.8) / (2048 / 0.6) = 0.6 / 0.8.
    assert s["ratios"] == pytest.approx([0.75])
    # Medians over the counted runs only.
    assert s["pjax"]["step_s"]["median"] == pytest.approx(0.85)  # of 0.8, 1.0, 0.85
    assert s["trl"]["step_s"]["median"] == pytest.approx(0.65)   # of 0.6, 0.7
    assert s["trl"]["tokens_per_s"]["max"] == pytest.approx(2048 / 0.6)


def test_gate_against_the_best_probe():
    # A loaded session: most probes near 70, one idle stretch near 190.
    runs = [run(0, "pjax", 1.5, 70.0, 68.0), run(0, "trl", 2.5, 69.0, 71.0),
            run(1, "pjax", 0.8, 188.0, 190.0), run(1, "trl", 0.7, 185.0, 187.0)]
    assert peer_bench.apply_gate(runs, 0.15, "median") == pytest.approx((71.0 + 185.0) / 2)  # 8 probes
    assert [r["counted"] for r in runs] == [False, False, False, False]  # 128 is far from both clusters
    assert peer_bench.apply_gate(runs, 0.15, "max") == 190.0
    assert [r["counted"] for r in runs] == [False, False, True, True]
    assert peer_bench.summarize(runs, "dpo")["ratios"] == pytest.approx([0.7 / 0.8])
    with pytest.raises(ValueError):
        peer_bench.apply_gate(runs, 0.15, "mean")


def test_ratio_median_and_spread():
    # Five rounds, every probe 200 GFLOP/s; SFT runs in another workload must not mix in.
    pjax_s = [0.50, 0.40, 0.80, 0.64, 0.55]
    trl_s = [0.40, 0.50, 0.60, 0.80, 0.55]
    runs = []
    for i, (p, t) in enumerate(zip(pjax_s, trl_s)):
        runs += [run(i, "pjax", p, 200.0, 200.0, flops=1e11), run(i, "trl", t, 200.0, 200.0, flops=1e11)]
    runs += [run(0, "pjax", 9.0, 200.0, 200.0, workload="sft"), run(0, "trl", 0.1, 200.0, 200.0, workload="sft")]
    peer_bench.apply_gate(runs, 0.15)
    s = peer_bench.summarize(runs, "dpo")
    # By hand: ratio of tokens/s = trl_s / pjax_s = 0.8, 1.25, 0.75, 1.25, 1.0.
    assert s["ratios"] == pytest.approx([0.8, 1.25, 0.75, 1.25, 1.0])
    r = s["ratio_pjax_over_trl"]
    assert (r["median"], r["min"], r["max"], r["n"]) == (pytest.approx(1.0), pytest.approx(0.75),
                                                         pytest.approx(1.25), 5)
    assert s["discarded"] == 0
    # Achieved = 1e11 FLOPs / step_s against the 200 GFLOP/s probe: fastest 0.40 s, median 0.55 s.
    f = s["pjax"]["probe_fraction"]
    assert f["max"] == pytest.approx(1e11 / 0.40 / 1e9 / 200.0)
    assert f["median"] == pytest.approx(1e11 / 0.55 / 1e9 / 200.0)
    assert peer_bench.summarize(runs, "sft")["ratios"] == pytest.approx([0.1 / 9.0])


def test_empty_spread():
    assert peer_bench.spread([]) == {"median": None, "min": None, "max": None, "n": 0}
    assert math.isnan(peer_bench.apply_gate([run(0, "pjax", 1.0, None, None)], 0.15))


def test_pjax_command_and_pass_through_flags():
    args = peer_bench.parse_args(["--rounds=2", "--pjax-flag=--config.data.layout=shared_prompt",
                                  "--pjax-flag=--config.train.logprob_chunk=64"])
    assert args.rounds == 2
    assert args.pjax_flag == ["--config.data.layout=shared_prompt", "--config.train.logprob_chunk=64"]
    dpo = peer_bench.pjax_command("dpo", 8, 2, "/tmp/x.json", args.pjax_flag)
    sft = peer_bench.pjax_command("sft", 8, 2, "/tmp/y.json")
    assert dpo[1:3] == ["-m", "experiments.bench"]
    assert dpo[-2:] == args.pjax_flag  # last, so they override the defaults
    for flag in ("--config=configs/dpo_tiny.py", "--config.train.batch_size=8", "--config.model.tie_embeddings=False",
                 "--config.model.d_model=256", "--prompt-len=64", "--completion-len=64", "--steps=8", "--warmup=2"):
        assert flag in dpo
    # SFT: 16 rows of 128 tokens = the 2,048 tokens of 8 DPO pairs.
    assert "--config=configs/sft_tiny.py" in sft and "--config.train.batch_size=16" in sft
