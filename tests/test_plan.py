"""The memory planner `python -m pjax.plan`: the exact per-device figures of Llama 3 8B DPO on a
simulated 8-device FSDP mesh against an independent count, FITS / DOES NOT FIT, mesh errors that name
the key, and a tiny case in-process.

The CLI runs in subprocesses: it sets its own simulated device count before JAX's backend starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
F32, I32 = 4, 4


def run_plan(args, tmp_path, name="plan.json"):
    out = tmp_path / name
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "pjax.plan", *args, f"--json={out}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def llama_counts(V, D, L, H, K, hd, F, tied):
    """(matrix parameters, norm-scale parameters) of a Llama, from its architecture numbers."""
    attention = D * H * hd + 2 * D * K * hd + H * hd * D  # wq, wk, wv, wo
    mlp = 3 * D * F  # gate, up, down
    matrices = L * (attention + mlp) + V * D * (1 if tied else 2)  # embedding (+ untied LM head)
    norms = L * 2 * D + D  # two RMSNorm scales per layer and the final one
    return matrices, norms


def adamw_bytes(param_bytes):
    """AdamW holds mu and nu per parameter (float32, like the params) plus two int32 step counts (Adam's
    and the learning-rate schedule's); global-norm clipping and the weight-decay mask hold no arrays."""
    return 2 * param_bytes + 2 * I32


def test_llama3_8b_dpo_on_1_8_1_matches_an_independent_count(tmp_path):
    # 8 GiB per device: the exact figures alone exceed it, so DOES NOT FIT whatever the compiler adds
    proc, plan = run_plan(["--config=configs/dpo_llama.py", "--mesh=1,8,1", "--hbm-gib=8"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # no --strict: exit 0 although it does not fit
    matrices, norms = llama_counts(V=128256, D=4096, L=32, H=32, K=8, hd=128, F=14336, tied=False)
    assert matrices + norms == 8_030_261_248 and matrices % 8 == 0
    assert plan["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and plan["devices"] == 8
    # every matrix has a d_model dimension, split 8 ways over fsdp; norm scales are replicated
    params = F32 * (matrices // 8 + norms)
    got = plan["per_device_bytes"]
    assert got["params"] == params == 4_016_062_464
    assert got["optimizer"] == adamw_bytes(params)
    assert got["reference"] == params  # DPO: the frozen float32 reference, sharded like the policy
    B, T = 64, 512  # train.batch_size pairs of data.max_len tokens: tokens, mask, completion_mask (int32)
    assert plan["batch"]["shapes"]["tokens"] == [B, 2, T]
    assert got["batch"] == 3 * (B // 8) * 2 * T * I32
    # the compiler's own argument size agrees with the exact figures (+ scalars: step counter, RNG) ...
    analysis = plan["compiler_memory_analysis_bytes"]
    assert 0 < analysis["argument"] - (params + adamw_bytes(params) + params + got["batch"]) < 1024
    # ... and the activations are its temporaries: the float32 gradient shards alone are params-sized
    assert got["activations"] == analysis["temp"] >= params
    assert got["total"] == sum(v for k, v in got.items() if k != "total")
    assert got["total"] == analysis["argument"] + analysis["output"] + analysis["temp"] - analysis["alias"]
    assert plan["fits"] is False and "DOES NOT FIT" in proc.stdout
    from configs import dpo_llama

    assert plan["grad_accum"] == dpo_llama.get_config().train.get("grad_accum")
    for label in ("parameters", "optimizer state", "reference model", "activations + temporaries", "total"):
        assert label in proc.stdout
    assert f"{params / GIB:.3f}" in proc.stdout
    assert "ESTIMATE" in proc.stdout  # CPU-compiled temporaries are flagged as an estimate


def test_tiny_fits_replicated_over_data_with_default_devices(tmp_path):
    proc, plan = run_plan(["--config=configs/dpo_tiny.py", "--mesh=2,-1,1", "--hbm-gib=1000"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert plan["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}  # -1 filled from the 8 default devices
    assert "--devices=8 (the default)" in proc.stdout
    matrices, norms = llama_counts(V=512, D=128, L=2, H=4, K=2, hd=32, F=352, tied=True)
    params = F32 * (matrices // 4 + norms)  # split over fsdp=4 only: replicated over data=2
    got = plan["per_device_bytes"]
    assert got["params"] == params and got["reference"] == params
    assert got["optimizer"] == adamw_bytes(params)
    assert got["batch"] == 3 * (16 // 8) * 2 * 48 * I32  # 16 pairs over data x fsdp = 8 devices
    assert plan["fits"] is True and plan["headroom_bytes"] == 1000 * GIB - got["total"]
    assert "FITS" in proc.stdout and "DOES NOT FIT" not in proc.stdout


def test_strict_exits_1_when_it_does_not_fit(tmp_path):
    proc, plan = run_plan(["--config=configs/dpo_tiny.py", "--hbm-gib=0.001", "--strict"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "DOES NOT FIT" in proc.stdout and plan["fits"] is False
    assert plan["headroom_bytes"] == int(0.001 * GIB) - plan["per_device_bytes"]["total"] < 0


@pytest.mark.parametrize("args, names", [
    # d_model 4096 is not divisible by fsdp=3: the error names the parameter and its logical axis
    (["--config=configs/dpo_llama.py", "--mesh=1,3,1", "--config.train.batch_size=3"],
     ("['embed']", "'embed'", "not divisible", "mesh.shape")),
    # 12 pairs do not split over 8 data-parallel devices
    (["--config=configs/dpo_llama.py", "--mesh=1,8,1", "--config.train.batch_size=12"],
     ("train.batch_size=12", "not divisible")),
])
def test_mesh_that_does_not_divide_fails_naming_the_key(tmp_path, args, names):
    proc, plan = run_plan(args, tmp_path)
    assert proc.returncode == 2 and plan is None, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name in names:
        assert name in proc.stderr, (name, proc.stderr)


def test_bad_flags_fail_naming_them(capsys):
    from pjax import plan as planner

    # parsing fails before the planner touches JAX's configuration, so main() can run in this process
    assert planner.main(["plan", f"--config={REPO}/configs/dpo_tiny.py", "--config.train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert planner.main(["plan", f"--config={REPO}/configs/dpo_tiny.py", "--mesh=1,a,1"]) == 2
    assert "--mesh" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--devices=4"):
        planner.resolve_devices((1, 8, 1), 4)
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        planner.resolve_devices((3, -1, 1), None)
    assert planner.resolve_devices((1, -1, 2), 16)[0] == 16 and planner.resolve_devices((2, 2, 2), None)[0] == 8


def test_tiny_plan_in_process():
    """`plan_memory` on this process's one CPU device: exact figures, the fit threshold, and a
    precomputed reference."""
    from configs import dpo_tiny
    from pjax import plan as planner

    config = dpo_tiny.get_config()
    devices = jax.devices("cpu")[:1]
    with pytest.raises(ValueError, match="--seq-len=100000 exceeds model.max_seq_len"):
        planner.plan_memory(config, (1, 1, 1), devices, seq_len=100_000)
    plan = planner.plan_memory(config, (1, 1, 1), devices)
    matrices, norms = llama_counts(V=512, D=128, L=2, H=4, K=2, hd=32, F=352, tied=True)
    got = plan["per_device_bytes"]
    assert got["params"] == got["reference"] == F32 * (matrices + norms)
    assert got["optimizer"] == adamw_bytes(got["params"])
    assert got["activations"] > 0 and plan["fits"] is True
    # exactly the total fits; a byte less does not
    total = got["total"]
    assert planner.fit(total, total / GIB)["fits"] is True
    below = {**plan, **planner.fit(total, (total - 1) / GIB)}
    assert below["fits"] is False and below["headroom_bytes"] < 0
    assert "DOES NOT FIT" in planner.format_report(below)
    assert "FITS" in planner.format_report(plan) and "DOES NOT FIT" not in planner.format_report(plan)
    # a precomputed reference: no reference model, float32 ref_logps [B, 2, T-1] in the batch instead
    config.data.precompute_ref = True
    pre = planner.plan_memory(config, (1, 1, 1), devices)
    assert pre["per_device_bytes"]["reference"] == 0
    assert pre["per_device_bytes"]["batch"] == got["batch"] + 16 * 2 * 47 * F32
