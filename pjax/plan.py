"""Memory planning before renting a pod: per-device memory of the real train step on a target mesh,
without the hardware.

    python -m pjax.plan --config=configs/dpo_llama.py [--mesh=1,8,1] [--devices=8] [--hbm-gib=88]
        [--seq-len=T] [--topology=v5p:2x2x2] [--json=PATH] [--strict] [--config.key=value ...]

The step planned is exactly the phase's train step (`pjax.core.step.TrainStep`) for the config (objective, remat, dtypes, donated
state), lowered with ShapeDtypeStructs only (`jit(...).lower(abstract_state, abstract_ref,
abstract_batch).compile()`), so nothing is allocated. The target mesh is built from simulated CPU
devices (`jax_num_cpu_devices`, set before JAX's backend starts), or with `--topology` from a TPU
topology's compile-only devices (needs libtpu).

Per device, it reports:

* parameters, optimizer state, the frozen reference model (objectives with a reference, unless
  `data.precompute_ref`) and the batch: EXACT, from the shardings (the bytes of each device's shard of
  every array, summed per device, max over devices);
* activations and temporaries: the compiler's temp allocation for the step
  (`compiled.memory_analysis().temp_size_in_bytes`): gradients, remat recomputation, gathered FSDP
  weights, LM-head chunks, collectives' buffers. With simulated CPU devices this is the CPU
  compiler's figure, an ESTIMATE of what the TPU/GPU compiler will need (they fuse and schedule
  differently);
* other: the small rest of the train state (step counter, RNG, the objective's running state) and
  outputs not written in place (metrics).

The batch is `pjax.data.shapes.random_batch` with T = `data.max_len` (or `--seq-len`) tokens per
sequence, half prompt and half completion, `train.batch_size` rows (SFT) or pairs/lists (preference
objectives); with `data.precompute_ref` (and an objective that needs a reference) it carries the
float32 `ref_logps` instead of a reference model. The exit status is 0 whether or not it fits
(`--strict`: 1 when it does not); 2 for a bad config, mesh or flag.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pjax import losses, phases, sharding
from pjax.core import loop
from pjax.core.setup import make_setup, validate_for_mesh
from pjax.data.shapes import random_batch
from pjax.models.config import model_config

GIB = 1024 ** 3
DEFAULT_DEVICES = 8
DEFAULT_HBM_GIB = 88.0  # one TPU v5p chip: 95 GB (10^9 bytes) = 88.5 GiB, rounded down

ROWS = (  # key, label, how it is obtained
    ("params", "parameters", "exact (shardings)"),
    ("optimizer", "optimizer state", "exact (shardings)"),
    ("reference", "reference model", "exact (shardings)"),
    ("batch", "batch", "exact (shardings)"),
    ("activations", "activations + temporaries", "compiler"),
    ("other", "other (step, RNG, loss state, metrics)", "exact + compiler"),
)


# ------------------------------------------------------------------------------------------ devices
class PlanError(Exception):
    """A bad flag, mesh or target (reported without a traceback, exit status 2)."""


def simulated_cpu_devices(n: int) -> list:
    """`n` CPU devices to compile for. Call it before JAX's backend starts (it sets the CPU device
    count, and the platform to CPU so that no accelerator is touched); later, it works only if the
    CPU backend already has `n` devices."""
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:  # the backend already started (with another count): use what it has
        pass
    else:
        jax.config.update("jax_platforms", "cpu")
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise PlanError(f"need {n} simulated CPU devices but JAX's CPU backend already started with "
                        f"{len(devices)}; run `python -m pjax.plan` in a fresh process")
    return devices[:n]


def topology_devices(name: str) -> list:
    """Compile-only TPU devices of a topology such as `v5p:2x2x2` (needs libtpu; no TPU needed)."""
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(name, platform="tpu").devices)
    except Exception as e:  # no libtpu, an unknown name, ...: say so plainly
        raise PlanError(f"--topology={name}: cannot get the TPU topology ({type(e).__name__}: {e}). "
                        "It needs libtpu (`pip install -e '.[tpu]'`) and a topology name libtpu knows, "
                        "e.g. v5p:2x2x2 or v5e:4x4; without it, plan on simulated CPU devices "
                        "(--mesh/--devices)") from e


def parse_mesh(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--mesh={text!r}: expected comma-separated integers, e.g. 1,8,1") from None


def resolve_devices(mesh_shape: Sequence[int], devices_flag: int | None) -> tuple[int, str]:
    """How many devices to simulate for `mesh_shape`, and a sentence saying where the number came from."""
    shape = tuple(int(s) for s in mesh_shape)
    if -1 in shape:
        n = DEFAULT_DEVICES if devices_flag is None else devices_flag
        source = f"-1 filled from --devices={n}" + (" (the default)" if devices_flag is None else "")
    else:
        n = math.prod(shape)
        if devices_flag is not None and devices_flag != n:
            raise ValueError(f"--devices={devices_flag} but the mesh {shape} has {n} devices (use -1 in "
                             "--mesh to fill an axis from --devices)")
        source = "the product of the mesh"
    if n <= 0:
        raise ValueError(f"--devices={n} must be positive")
    sharding.resolve_mesh_shape(shape, n)  # raises naming the shape and the device count
    return n, source


# ------------------------------------------------------------------------------------------ bytes
def _itemsize(dtype) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:  # extended dtypes (PRNG keys)
        return int(getattr(dtype, "itemsize", 0) or 8)


def per_device_bytes(tree: Any, devices: Sequence) -> dict[int, int]:
    """Bytes of each device's shards of every array in `tree` (ShapeDtypeStructs with shardings)."""
    totals = {d.id: 0 for d in devices}
    for leaf in jax.tree.leaves(tree):
        shape, itemsize = tuple(leaf.shape), _itemsize(leaf.dtype)
        sh = getattr(leaf, "sharding", None)
        if sh is None:  # unsharded: every device holds it all
            for d in totals:
                totals[d] += math.prod(shape) * itemsize
            continue
        for device, index in sh.devices_indices_map(shape).items():
            n = math.prod(len(range(*s.indices(dim))) for s, dim in zip(index, shape))
            totals[device.id] += n * itemsize
    return totals


def _compile_batch(config, seq_len: int) -> tuple[dict[str, np.ndarray], int, int]:
    prompt_len = seq_len // 2
    completion_len = seq_len - prompt_len
    batch = random_batch(config, prompt_len, completion_len, seed=0)
    if losses.needs_reference(config.loss) and config.data.precompute_ref:
        # the step reads precomputed per-token reference log-probs [..., T-1] float32 from the batch
        for prefix in ("", "kl_"):
            if f"{prefix}tokens" in batch:
                tokens = batch[f"{prefix}tokens"]
                batch[f"{prefix}ref_logps"] = np.zeros(tokens.shape[:-1] + (tokens.shape[-1] - 1,), np.float32)
    return batch, prompt_len, completion_len


# ------------------------------------------------------------------------------------------- plan
def analysis_dict(compiled) -> dict[str, int] | None:
    """The compiled executable's buffer sizes (argument, output, temp, alias, code) and their peak
    estimate argument + output + temp - alias; None where the backend does not say."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if ma is None:
        return None
    out = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in
           ("argument", "output", "temp", "alias", "generated_code")}
    out["peak_estimate"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def plan_memory(config, mesh_shape: Sequence[int], devices: Sequence, *, seq_len: int | None = None,
                hbm_gib: float = DEFAULT_HBM_GIB, target: str | None = None) -> dict[str, Any]:
    """Compile the train step of `config` for a mesh of `mesh_shape` over `devices` (no memory is
    allocated) and return the per-device memory plan as a JSON-able dict."""
    spec = phases.spec(config)
    loop.validate(config, spec)
    cfg = model_config(config)
    T = int(config.data.max_len if seq_len is None else seq_len)
    what = "--seq-len" if seq_len is not None else "data.max_len"
    if T < 2:
        raise ValueError(f"{what}={T}: a sequence needs at least 2 tokens")
    if T > cfg.max_seq_len:
        raise ValueError(f"{what}={T} exceeds model.max_seq_len={cfg.max_seq_len}")
    if hbm_gib <= 0:
        raise ValueError(f"--hbm-gib={hbm_gib} must be positive")
    if seq_len is not None and T != config.data.max_len:  # plan (and check) the length asked for
        config = copy.deepcopy(config)
        config.data.max_len = T
    mesh = sharding.make_mesh(mesh_shape, devices)
    needs_reference = losses.needs_reference(config.loss)
    reference_in_step = needs_reference and not config.data.precompute_ref
    with jax.set_mesh(mesh), sharding.use_rules(sharding.config_rules(config.sharding)):
        try:
            validate_for_mesh(config, mesh, *spec.step_rows(config))
        except ValueError as e:
            raise ValueError(f"{e} (data.max_len is --seq-len={T} here)" if what == "--seq-len" and
                             "data.max_len" in str(e) else str(e)) from None
        setup = make_setup(config, mesh, spec.optimizer_steps(config))
        host_batch, prompt_len, completion_len = _compile_batch(config, T)
        batch_shardings = setup.batch_sharding(host_batch)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k]) for k, v in host_batch.items()}
        state = setup.abstract_state
        ref = state["params"] if reference_in_step else None
        t0 = time.perf_counter()
        compiled = spec.make_step(setup).jitted(ref, batch).lower(state, ref, batch).compile()
        compile_s = time.perf_counter() - t0
    analysis = analysis_dict(compiled)
    if analysis is None:
        raise RuntimeError(f"the {devices[0].platform} compiler gave no memory_analysis() for the step")

    extras = {k: v for k, v in state.items() if k not in ("params", "opt_state")}  # step, RNG, loss state
    exact = {
        "params": per_device_bytes(state["params"], devices),
        "optimizer": per_device_bytes(state["opt_state"], devices),
        "reference": per_device_bytes(ref, devices) if ref is not None else {d.id: 0 for d in devices},
        "batch": per_device_bytes(batch, devices),
        "state_extras": per_device_bytes(extras, devices),
    }
    not_in_place = max(analysis["output"] - analysis["alias"], 0)  # outputs not aliased to donated inputs
    per_device = {}
    for d in devices:
        row = {k: exact[k][d.id] for k in ("params", "optimizer", "reference", "batch")}
        row["activations"] = analysis["temp"]
        row["other"] = exact["state_extras"][d.id] + not_in_place
        row["total"] = sum(row.values())
        per_device[d.id] = row
    worst = max(per_device, key=lambda i: per_device[i]["total"])
    rows = {k: max(r[k] for r in per_device.values()) for k in per_device[worst]}
    rows["total"] = per_device[worst]["total"]
    arguments_exact = max(sum(exact[k][d.id] for k in exact) for d in devices)

    platform = devices[0].platform
    if target is None:
        plural = "s" if len(devices) > 1 else ""
        target = (f"{len(devices)} simulated CPU device{plural} (XLA CPU compiler)" if platform == "cpu" else
                  f"{len(devices)} {devices[0].device_kind} device{plural} ({platform.upper()} compiler)")
    tokens = host_batch["tokens"]
    rows_per_device = batch["tokens"].sharding.shard_shape(tokens.shape)[0]
    grad_accum = config.train.get("grad_accum")
    notes = [
        "parameters, optimizer state, reference and batch are exact: the bytes of each device's shards "
        "(from the shardings), max over devices.",
        f"activations + temporaries = the {platform.upper()} compiler's temp allocation for the step "
        "(memory_analysis().temp_size_in_bytes): gradients, remat recomputation, gathered FSDP weights, "
        "LM-head chunks, collective buffers.",
    ]
    if platform == "cpu":
        notes.append("compiled by the XLA CPU compiler: the temporaries are an ESTIMATE of what the TPU/GPU "
                     "compiler will need (it fuses and schedules differently). Measured on one H100 they ran "
                     "1.1-1.8x the GPU compiler's (README, Memory planning); still leave headroom.")
    if grad_accum is not None and grad_accum > 1:
        notes.append(f"train.grad_accum={grad_accum}: the batch row is the whole step's batch; the "
                     f"activations are the compiler's for the step as TrainStep builds it.")
    if abs(arguments_exact - analysis["argument"]) > max(1024, 0.001 * analysis["argument"]):
        notes.append(f"WARNING: the compiler's argument bytes ({analysis['argument']}) differ from the exact "
                     f"figure ({arguments_exact}).")
    return {
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "devices": len(devices),
        "platform": platform,
        "target": target,
        "model": {"preset": config.model.preset, "params": cfg.num_params, "layers": cfg.n_layers,
                  "d_model": cfg.d_model, "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads,
                  "head_dim": cfg.head_dim, "d_ff": cfg.d_ff, "vocab": cfg.vocab_size,
                  "tie_embeddings": cfg.tie_embeddings, "param_dtype": cfg.param_dtype, "dtype": cfg.dtype,
                  "remat": cfg.remat},
        "objective": {"loss": list(config.loss.names) or config.loss.name, "data_kind": losses.data_kind(config.loss),
                      "needs_reference": needs_reference, "precompute_ref": bool(config.data.precompute_ref),
                      "reference_in_step": reference_in_step},
        "batch": {"shapes": {k: list(v.shape) for k, v in host_batch.items()}, "seq_len": T,
                  "prompt_len": prompt_len, "completion_len": completion_len,
                  "batch_size": int(config.train.batch_size), "rows_per_device": int(rows_per_device)},
        "grad_accum": None if grad_accum is None else int(grad_accum),
        "per_device_bytes": {k: int(v) for k, v in rows.items()},
        "per_device_gib": {k: v / GIB for k, v in rows.items()},
        "exact_rows": ["params", "optimizer", "reference", "batch"],
        "estimated_rows": ["activations"],
        "compiler_memory_analysis_bytes": analysis,
        "arguments_exact_bytes": int(arguments_exact),
        **fit(rows["total"], hbm_gib),
        "compile_s": compile_s,
        "notes": notes,
        "jax_version": jax.__version__,
    }


def fit(total_bytes: int, hbm_gib: float) -> dict[str, Any]:
    """Whether `total_bytes` per device fits in `hbm_gib`, and the headroom (negative: the shortfall)."""
    hbm = int(hbm_gib * GIB)
    return {"hbm_gib": float(hbm_gib), "fits": total_bytes <= hbm, "headroom_bytes": hbm - total_bytes,
            "headroom_gib": (hbm - total_bytes) / GIB}


# ------------------------------------------------------------------------------------------ report
def format_report(plan: dict[str, Any], config_path: str | None = None, mesh_source: str = "") -> str:
    m, o, b = plan["model"], plan["objective"], plan["batch"]
    loss = ",".join(o["loss"]) if isinstance(o["loss"], list) else o["loss"]
    reference = ("frozen copy, forward inside the step" if o["reference_in_step"] else
                 "precomputed ref_logps in the batch" if o["needs_reference"] else "none (reference-free)")
    mesh = " ".join(f"{k}={v}" for k, v in plan["mesh"].items())
    shape = "x".join(str(s) for s in b["shapes"]["tokens"])
    lines = [
        f"pjax memory plan{': ' + config_path if config_path else ''}",
        f"  model      {m['preset']}: {m['params']:,} parameters ({m['param_dtype']}), compute {m['dtype']}, "
        f"remat {m['remat']}",
        f"  objective  {loss} ({o['data_kind']}); reference model: {reference}",
        f"  mesh       {mesh}: {plan['devices']} device{'s' if plan['devices'] > 1 else ''}"
        + (f"; {mesh_source}" if mesh_source else ""),
        f"  batch      tokens {shape} (T={b['seq_len']}: {b['prompt_len']} prompt + {b['completion_len']} "
        f"completion), {b['rows_per_device']} of {b['batch_size']} per device"
        + ("" if plan["grad_accum"] is None else f"; train.grad_accum={plan['grad_accum']}"
           + (f" (micro-batches of {b['rows_per_device'] // plan['grad_accum']} per device)"
              if plan["grad_accum"] > 1 else "")),
        f"  compiled   for {plan['target']} in {plan['compile_s']:.1f} s",
        "",
        f"  {'per device':<40}{'GiB':>9}",
    ]
    gib = plan["per_device_gib"]
    for key, label, how in ROWS:
        if key == "activations":
            how = "estimate (CPU compiler)" if plan["platform"] == "cpu" else f"{plan['platform'].upper()} compiler"
        lines.append(f"  {label:<40}{gib[key]:>9.3f}   {how}")
    lines.append(f"  {'total':<40}{gib['total']:>9.3f}")
    pct = 100 * plan["headroom_gib"] / plan["hbm_gib"]
    verdict = "FITS" if plan["fits"] else "DOES NOT FIT"
    word = "headroom" if plan["fits"] else "short by"
    lines += ["", f"  HBM {plan['hbm_gib']:.2f} GiB per device: {verdict} "
                  f"({word} {abs(plan['headroom_gib']):.2f} GiB, {abs(pct):.1f}% of HBM)", ""]
    lines += [f"  note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI
def _flag_values(argv: Sequence[str]):
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Path to a config .py file.", flag_values=fv, lock_config=True,
                                    sys_argv=list(argv))  # overrides are read from here, not sys.argv
    flags.DEFINE_string("mesh", None, "Target mesh over (data, fsdp, tensor), e.g. 1,8,1 (default: the "
                        "config's mesh.shape); one -1 is filled from --devices.", flag_values=fv)
    flags.DEFINE_integer("devices", None, f"Devices for a -1 mesh entry (default {DEFAULT_DEVICES}).", flag_values=fv)
    flags.DEFINE_float("hbm_gib", DEFAULT_HBM_GIB, "Memory of one device in GiB (88 = one TPU v5p chip's 95 GB; an "
                       "H100 80GB has about 79.6 GiB, of which JAX's GPU client preallocates 75% unless "
                       "XLA_PYTHON_CLIENT_MEM_FRACTION is raised).", flag_values=fv)
    flags.DEFINE_integer("seq_len", None, "Tokens per sequence (default data.max_len); half prompt, half "
                         "completion.", flag_values=fv)
    flags.DEFINE_string("topology", None, "Compile for a TPU topology (e.g. v5p:2x2x2) with the TPU "
                        "compiler; needs libtpu.", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the plan as JSON here.", flag_values=fv)
    flags.DEFINE_bool("strict", False, "Exit with status 1 when the plan does not fit.", flag_values=fv)
    return fv


def dashes_to_underscores(argv: Sequence[str]) -> list[str]:
    """Accept `--hbm-gib` as well as `--hbm_gib` for a command's own flags (not `--config.*`)."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("--config"):
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


def _fast_cpu_compile() -> None:
    """The CPU executable is never run: skip LLVM's optimisation passes (about half the compile time
    of an 8B step; the buffer assignment, hence the memory figures, is the same)."""
    flags_env = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags_env:
        os.environ["XLA_FLAGS"] = (flags_env + " --xla_backend_optimization_level=0").strip()


def main(argv: Sequence[str] | None = None) -> int:
    from absl import flags

    argv = dashes_to_underscores(sys.argv if argv is None else argv)
    fv = _flag_values(argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print(fv)
        return 0
    try:
        fv(argv)
        if fv.config is None:
            raise PlanError("--config is required, e.g. --config=configs/dpo_llama.py")
    except (KeyError, AttributeError) as e:  # an override of a key the config does not have
        key = e.args[0] if e.args else e
        key = key.args[0] if isinstance(key, KeyError) and key.args else key
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        print(f"error: unknown config key {str(key).strip(chr(39))!r} in {' '.join(overrides)}", file=sys.stderr)
        return 2
    except (flags.Error, PlanError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = fv.config
    mesh_from = f"--mesh={fv.mesh}" if fv.mesh else f"mesh.shape={tuple(config.mesh.shape)}"
    try:
        mesh_shape = parse_mesh(fv.mesh) if fv.mesh else tuple(int(s) for s in config.mesh.shape)
        if len(mesh_shape) != 3:
            raise PlanError(f"{mesh_from}: expected 3 entries, over the mesh axes (data, fsdp, tensor)")
        if fv.topology:
            devices = topology_devices(fv.topology)
            if fv.devices is not None and fv.devices != len(devices):
                raise PlanError(f"--devices={fv.devices} but --topology={fv.topology} has {len(devices)} chips")
            try:
                sharding.resolve_mesh_shape(mesh_shape, len(devices))
            except ValueError as e:
                raise PlanError(f"{e} (from {mesh_from})") from None
            source = f"{mesh_from} over the {len(devices)} chips of --topology={fv.topology}"
            target = (f"TPU topology {fv.topology}: {len(devices)} compile-only {devices[0].device_kind} devices "
                      "(TPU compiler)")
        else:
            try:
                n, how = resolve_devices(mesh_shape, fv.devices)
            except ValueError as e:
                raise PlanError(f"{e} (from {mesh_from})") from None
            source = f"{mesh_from}, {how}"
            _fast_cpu_compile()
            print(f"compiling the train step for {n} simulated CPU devices ...", file=sys.stderr, flush=True)
            devices, target = simulated_cpu_devices(n), None
        plan = plan_memory(config, mesh_shape, devices, seq_len=fv.seq_len, hbm_gib=fv.hbm_gib, target=target)
    except (PlanError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan["config"] = fv["config"].config_filename
    plan["overrides"] = {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
                         for k, v in dict(fv["config"].override_values).items()}
    plan["mesh_source"] = source
    print(format_report(plan, plan["config"], source))
    if fv.json:
        Path(fv.json).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(fv.json).expanduser().write_text(json.dumps(plan, indent=2) + "\n")
    return 1 if fv.strict and not plan["fits"] else 0


if __name__ == "__main__":
    sys.exit(main())
