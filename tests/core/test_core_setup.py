"""The setup's jitted helpers are compiled once per setup, not once per call."""

from __future__ import annotations

import numpy as np

import pjax
from pjax.core import setup as core_setup


def _run(tmp_path):
    return pjax.Run(pjax.config("sft_tiny", workdir=str(tmp_path / "w"), data__cache_dir=str(tmp_path / "cache")))


def test_map_rows_traces_its_function_once(tmp_path):
    traced = []

    def fn(params, tokens):
        traced.append(tokens.shape)
        return tokens.sum(-1)

    with _run(tmp_path) as run:
        rows = {"tokens": np.arange(40 * 6, dtype=np.int32).reshape(40, 6)}
        # a closure made per call, as callers make them (e.g. the held-out figures)
        first = run.setup.map_rows("sums", lambda p, t: fn(p, t), rows, ("tokens",), None)
        second = run.setup.map_rows("sums", lambda p, t: fn(p, t), rows, ("tokens",), None)
    np.testing.assert_array_equal(first, rows["tokens"].sum(-1))
    np.testing.assert_array_equal(second, first)
    assert len(traced) == 1  # one trace for both calls, every batch of both


def test_heldout_scores_trace_the_model_once(tmp_path, monkeypatch):
    from pjax import models
    from pjax.phases import heldout

    traced = []
    original = models.sequence_token_logprobs

    def counting(*args, **kwargs):
        traced.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(models, "sequence_token_logprobs", counting)
    with _run(tmp_path) as run:
        params = run.init()["params"]
        rows = {"tokens": np.ones((16, 2, 12), np.int32), "mask": np.ones((16, 2, 12), np.int32),
                "completion_mask": np.ones((16, 2, 12), np.int32)}
        a = heldout.heldout_scores(run.setup, params, rows)
        b = heldout.heldout_scores(run.setup, params, rows)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 2) and len(traced) == 1


def test_init_state_and_state_around_compile_once(tmp_path, monkeypatch):
    traced = []
    original = core_setup.Setup.state_from_params

    def counting(self, params):
        traced.append(1)
        return original(self, params)

    monkeypatch.setattr(core_setup.Setup, "state_from_params", counting)
    with _run(tmp_path) as run:
        n = len(traced)  # make_setup's eval_shape traces it once
        a, b = run.init(0), run.init(0)
        assert len(traced) == n + 1
        around = [run.setup.state_around(a["params"]) for _ in range(2)]
        assert len(traced) == n + 2
    np.testing.assert_array_equal(np.asarray(a["params"]["embed"]),
                                  np.asarray(b["params"]["embed"]))
    assert int(around[1]["step"]) == 0
