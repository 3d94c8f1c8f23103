"""The grain input pipeline: global order, per-host rows, iterator state, packing, the encoded cache."""

import numpy as np
import pytest

from pjax.data import loader


def test_global_order_is_a_fresh_permutation_each_epoch():
    n, bs = 10, 4
    arrays = {"x": np.arange(n), "y": np.arange(n) * 10}
    batches = [loader.global_batch(arrays, s, bs, seed=7) for s in range(5)]  # 20 rows = 2 epochs
    assert all((b["y"] == b["x"] * 10).all() for b in batches)
    flat = np.concatenate([b["x"] for b in batches])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:])
    assert not np.array_equal(loader.global_batch(arrays, 0, bs, seed=8)["x"], batches[0]["x"])
    with pytest.raises(ValueError, match="N=3"):
        loader.batch_indices(3, 0, 4, seed=0)
    with pytest.raises(ValueError, match="equal leading sizes"):
        loader.global_batch({"x": np.arange(3), "y": np.arange(4)}, 0, 2, seed=0)


def test_hosts_read_only_their_rows_and_together_the_global_batch():
    n, bs = 13, 8
    arrays = {"x": np.arange(n) * 3, "z": np.arange(n * 2).reshape(n, 2)}
    halves = [np.arange(0, 4), np.arange(4, 8)]
    streams = [loader.HostBatches(arrays, batch_size=bs, seed=3, rows=r) for r in halves]
    for step in range(6):
        parts = [next(s) for s in streams]
        want = loader.global_batch(arrays, step, bs, seed=3)
        for key in arrays:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key])


def test_iterator_state_resumes_exactly():
    arrays = {"x": np.arange(50)}
    it = loader.HostBatches(arrays, batch_size=6, seed=1)
    first = [next(it)["x"] for _ in range(4)]
    state = it.state()
    assert state == loader.start_state(4)
    rest = [next(it)["x"] for _ in range(3)]
    resumed = loader.HostBatches(arrays, batch_size=6, seed=1, state=state)
    for a, b in zip(rest, [next(resumed)["x"] for _ in range(3)]):
        np.testing.assert_array_equal(a, b)
    assert len({tuple(f) for f in first}) == 4


def test_packing_keeps_every_document_with_its_own_positions_and_segments():
    rng = np.random.default_rng(0)
    n, T = 40, 32
    lengths = rng.integers(3, 20, n)
    tokens = np.zeros((n, T), np.int32)
    mask = np.zeros((n, T), np.int32)
    completion = np.zeros((n, T), np.int32)
    for i, L in enumerate(lengths):
        tokens[i, :L] = rng.integers(5, 100, L)
        mask[i, :L] = 1
        completion[i, (L // 2) * (i % 2):L] = 1  # even rows: all completion (language modelling, no BOS)
    packed = loader.pack_sequences({"tokens": tokens, "mask": mask, "completion_mask": completion}, seed=0)
    m = len(packed["tokens"])
    assert m < n and m >= int(np.ceil(lengths.sum() / T))
    docs = []
    for b in range(m):
        seg = packed["segment_ids"][b]
        assert ((seg > 0) == (packed["mask"][b] > 0)).all()
        real = int(packed["mask"][b].sum())
        assert packed["mask"][b, :real].all() and not packed["mask"][b, real:].any()  # padding only at the end
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert (np.diff(where) == 1).all()
            np.testing.assert_array_equal(packed["positions"][b, where], np.arange(len(where)))
            docs.append((tuple(packed["tokens"][b, where]), tuple(packed["completion_mask"][b, where])))
    # the first token of a document has no prediction of its own (unpacked: position 0), so it is not scored
    want = sorted((tuple(tokens[i, :L]), (0, *completion[i, 1:L])) for i, L in enumerate(lengths))
    assert sorted(docs) == want  # every document exactly once, with its completion mask


def test_encoded_cache_builds_once(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"tokens": np.arange(12).reshape(3, 4)}, {"note": 1}

    a, _ = loader.encoded_cache(tmp_path, "k1", build)
    b, meta = loader.encoded_cache(tmp_path, "k1", build)
    assert len(calls) == 1 and isinstance(b["tokens"], np.memmap) and meta == {"note": 1}
    np.testing.assert_array_equal(a["tokens"], np.arange(12).reshape(3, 4))
    assert not list(tmp_path.glob(".k1.tmp-*"))
