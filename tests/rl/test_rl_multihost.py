"""The online phase over several processes (`jax.distributed` over 127.0.0.1, CPU devices)."""

import numpy as np

from tests.procs import metric_rows, multi_process, spawn, task_cache, tiny_flags, train_command, wait_all


def test_two_processes_roll_out_and_train_like_one(tmp_path):
    """Multi-host rollouts: two processes of 4 CPU devices run Nash-MD (policy samples, geometric-mixture
    samples of policy and reference, reference log-probs: each on the training mesh, the prompts placed
    from every host's own rows) and log the rewards and losses that one process of 8 devices logs."""
    flags = lambda workdir, **kw: tiny_flags(  # noqa: E731
        workdir, tmp_path / "cache", 2, init_from="", online__algorithm="nash_md", online__kl_coef=0.1,
        online__prompts_per_iteration=4, online__samples_per_prompt=4, online__num_minibatches=2,
        generate__max_new_tokens=8, **kw)
    task_cache(tmp_path / "cache")  # the tokenizer, once for all
    one_log = tmp_path / "one.log"  # the one-process run trains beside the two-process one
    single = spawn(train_command("grpo_tiny.py", flags(tmp_path / "one", distributed__cpu_devices=8,
                                                       logging__tensorboard=False)), one_log)
    logs = [tmp_path / f"two_{i}.log" for i in range(2)]
    try:
        wait_all(multi_process("grpo_tiny.py", flags(tmp_path / "two"), logs, 4), logs)
        assert single.wait(300) == 0, one_log.read_text()[-3000:]
    finally:
        single.kill()
    one, two = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]  # train.log_every=1: every iteration
    for key in ("reward/mean", "reward/opponent_mean", "kl", "loss", "nash_md/preference"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-4, atol=1e-5, err_msg=key)
    assert (tmp_path / "two" / "export" / "pjax.json").exists()
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.is_dir()) == ["2"]
