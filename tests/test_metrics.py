"""Observability: metric sinks (JSONL, TensorBoard, W&B through a fake module), run_info.json and
the config round trip that reruns a point."""

import datetime
import importlib
import json
import platform
import socket
import struct
import sys
import tomllib
import types
from pathlib import Path

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from configs import base
import pjax
from pjax import config_io, runinfo
from pjax.metrics import MetricWriter, read_jsonl, validate_logging
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[1]


def tb_events(directory: Path) -> list[list]:
    """Every events file in `directory` (oldest first), parsed from the TFRecord framing by hand."""
    from tensorboardX.proto import event_pb2

    files = []
    for path in sorted(directory.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        data, events, i = path.read_bytes(), [], 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4  # length, its crc, the record, its crc
        files.append(events)
    return files


def scalars(events) -> list[tuple[int, str, float]]:
    return [(e.step, v.tag, v.simple_value) for e in events if e.HasField("summary") for v in e.summary.value]


class FakeWandb(types.ModuleType):
    """Records `wandb.init` kwargs and each run's `log`/`finish` calls."""

    def __init__(self):
        super().__init__("wandb")
        self.runs = []

    def init(self, **kwargs):
        run = types.SimpleNamespace(kwargs=kwargs, logged=[], finished=False)
        run.log = lambda values, step: run.logged.append((step, dict(values)))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_jsonl_always_tensorboard_off(tmp_path):
    config = base.get_config()
    config.logging.tensorboard = False
    writer = MetricWriter(tmp_path, config, resume_step=0)
    for step in (1, 2):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert not (tmp_path / "tb").exists()


def test_tensorboard_on_and_resume_purges_dropped_steps(tmp_path):
    config = base.get_config()  # tensorboard=True by default
    writer = MetricWriter(tmp_path, config, resume_step=0)
    for step in (1, 2, 3, 4):
        writer.write(step, {"loss": float(step)})
    writer.close()
    resumed = MetricWriter(tmp_path, config, resume_step=2)  # steps 3 and 4 are trained again
    resumed.write(3, {"loss": 30.0})
    resumed.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    first, second = tb_events(tmp_path / "tb")
    assert scalars(first) == [(s, "loss", float(s)) for s in (1, 2, 3, 4)]
    assert scalars(second) == [(3, "loss", 30.0)]
    # TensorBoard hides the earlier events at steps >= 3: a SessionLog START at that step
    starts = [e.step for e in second if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [3]


def test_wandb_gets_config_steps_and_resumes_the_same_run(tmp_path, fake_wandb):
    config = base.get_config()
    config.logging.update({"wandb": True, "tensorboard": False, "wandb_project": "proj", "wandb_tags": ("a", "b"),
                           "wandb_mode": "offline"})
    expected = json.loads(config.to_json())  # the resolved config, as W&B stores it
    writer = MetricWriter(tmp_path, config, resume_step=0)
    for step in (1, 2, 3):
        writer.write(step, {"loss": float(step)})
    writer.close()  # the run was interrupted after logging step 3; its checkpoint is at step 2
    config.train.steps = 5
    resumed = MetricWriter(tmp_path, config, resume_step=2)
    for step in (3, 4, 5):
        resumed.write(step, {"loss": 10.0 * step})
    resumed.close()

    first, second = fake_wandb.runs
    assert first.kwargs["config"] == expected
    assert first.kwargs["config"]["logging"]["wandb_project"] == "proj"
    assert first.kwargs["config"]["mesh"]["shape"] == [1, -1, 1]
    assert second.kwargs["config"]["train"]["steps"] == 5  # each start passes its resolved config
    for run in (first, second):
        assert (run.kwargs["project"], run.kwargs["tags"], run.kwargs["mode"]) == ("proj", ["a", "b"], "offline")
        assert run.kwargs["entity"] is None and run.kwargs["dir"] == str(tmp_path)
        assert run.kwargs["resume"] == "allow" and run.finished
    assert second.kwargs["id"] == first.kwargs["id"]
    assert first.logged == [(1, {"loss": 1.0}), (2, {"loss": 2.0}), (3, {"loss": 3.0})]
    assert second.logged == [(4, {"loss": 40.0}), (5, {"loss": 50.0})]  # step 3 is W&B's already
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]

    fresh = MetricWriter(tmp_path, config, resume_step=0)  # a start from step 0: a new W&B run
    fresh.write(1, {"loss": 0.5})
    fresh.close()
    assert fake_wandb.runs[2].kwargs["id"] != first.kwargs["id"]
    assert fake_wandb.runs[2].logged == [(1, {"loss": 0.5})]


def test_wandb_enabled_but_missing_fails_at_startup(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    config = tiny(base.get_config(), tmp_path / "run", tmp_path / "cache")
    config.logging.wandb = True
    with pytest.raises(ImportError, match=r"logging\.wandb=True .*pip install wandb"):
        pjax.validate(config)
    with pytest.raises(ImportError, match=r"logging\.wandb"):
        MetricWriter(tmp_path, config)
    config.logging.wandb = False
    pjax.validate(config)  # not imported when disabled


@pytest.mark.parametrize("key,value,match", [
    ("wandb_mode", "cloud", "logging.wandb_mode='cloud'"),
    ("wandb_tags", ("",), "logging.wandb_tags"),
])
def test_logging_validation_names_the_key(key, value, match):
    config = base.get_config()
    config.logging[key] = value
    with pytest.raises(ValueError, match=match):
        validate_logging(config)


def _git_head(root: Path) -> str | None:
    """HEAD's commit read from .git by hand (loose or packed ref)."""
    head = (root / ".git" / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[5:]
    loose = root / ".git" / ref
    if loose.exists():
        return loose.read_text().strip()
    for line in (root / ".git" / "packed-refs").read_text().splitlines():
        if line.endswith(" " + ref):
            return line.split()[0]
    return None


def test_run_info_records_versions_and_keeps_every_start(tmp_path):
    config = base.get_config()
    first = runinfo.write_run_info(tmp_path, config)
    config.train.steps += 1
    runinfo.write_run_info(tmp_path, config)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["starts"][0] == first["starts"][0] and len(info["starts"]) == 2
    start = info["starts"][1]
    assert start["pjax_version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert start["versions"]["jax"] == jax.__version__
    assert start["versions"]["flax"] == importlib.import_module("flax").__version__
    assert start["versions"]["optax"] == importlib.import_module("optax").__version__
    assert start["versions"]["jaxlib"] == importlib.import_module("jaxlib").__version__
    assert start["python"] == platform.python_version() and start["argv"] == sys.argv
    assert start["hostname"] == socket.gethostname() and start["process_count"] == 1
    assert datetime.datetime.fromisoformat(start["start_time"]).tzinfo is not None
    assert info["starts"][0]["config_sha256"] != start["config_sha256"]  # the config changed between starts
    if (ROOT / ".git").exists():
        assert start["git"]["commit"] == _git_head(ROOT) and isinstance(start["git"]["dirty"], bool)
    assert not list(tmp_path.glob("*.tmp*"))


def test_git_state_outside_a_checkout_is_none(tmp_path):
    assert runinfo.git_state(tmp_path) is None


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(value, (tuple, list)):
        yield prefix, type(value)
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix, (type(value), value)


@pytest.mark.parametrize("name", ["sft_tiny", "grpo_tiny", "dpo_llama", "pipeline_tiny"])
def test_config_round_trip(tmp_path, name):
    original = importlib.import_module(f"configs.{name}").get_config()
    config_io.save_run_config(tmp_path, original)
    loaded = config_io.load_run_config(tmp_path)
    assert loaded == original
    # same keys, values and container types everywhere (tuples stay tuples, ints stay ints)
    assert list(_leaves(loaded.to_dict())) == list(_leaves(original.to_dict()))
    assert config_io.config_json(loaded) == (tmp_path / "config.json").read_text().rstrip("\n")


def test_rerun_from_the_command_line(tmp_path):
    """`--config=pjax/config_io.py:<workdir>` plus an override, parsed by ml_collections' flag."""
    original = tiny(base.get_config(), tmp_path / "run", tmp_path / "cache")
    original.loss.names, original.loss.weights = ("sft",), (1.0,)
    config_io.save_run_config(original.workdir, original)
    argv = ["pjax.train", f"--config={ROOT / 'pjax' / 'config_io.py'}:{original.workdir}", "--config.train.steps=9"]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    expected = original.copy_and_resolve_references()
    expected.train.steps = 9
    expected.lock()  # the flag locks its config
    assert holder.value == expected
    assert isinstance(holder.value.loss.weights, tuple)


def test_older_config_keeps_new_defaults(tmp_path, caplog):
    saved = json.loads(config_io.config_json(base.get_config()))
    del saved["logging"], saved["train"]["grad_accum"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level("WARNING", logger="pjax"):
        loaded = config_io.load_run_config(tmp_path / "config.json")
    assert loaded == base.get_config()
    # the warning is the product here: the user must be told which keys the saved config lacked (their
    # values are the defaults, not what the original run used)
    assert "logging" in caplog.text and "train.grad_accum" in caplog.text


def test_train_run_writes_run_files_and_resumes_the_wandb_run(tmp_path, fake_wandb):
    """A tiny SFT run, then the same command again (it resumes at the final step): config.json
    reloads to the config, run_info.json has both starts, W&B continues the one run."""
    from configs import sft_tiny

    config = tiny(sft_tiny.get_config(), tmp_path / "sft", tmp_path / "cache", steps=2)
    config.logging.wandb = True
    config.logging.tensorboard = False
    pjax.train(config)
    workdir = Path(config.workdir)
    assert config_io.load_run_config(workdir) == config
    pjax.train(config)  # resumes from the final checkpoint: nothing to train, nothing logged again
    starts = runinfo.read_run_info(workdir)["starts"]
    assert len(starts) == 2 and all(s["argv"] == sys.argv for s in starts)
    first, second = fake_wandb.runs
    assert first.kwargs["id"] == second.kwargs["id"] and first.finished and second.finished
    assert first.kwargs["config"] == second.kwargs["config"] == json.loads(config.to_json())
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and second.logged == []
    assert [(r["step"], r["loss"]) for r in rows] == [(s, m["loss"]) for s, m in first.logged]
    assert not (workdir / "tb").exists()
