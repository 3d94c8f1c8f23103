"""Padding-free batch layouts (`data.layout`): the same batch, fewer tokens through the model.

A batch arrives padded: `tokens`, `mask`, `completion_mask` `[B, T]` (SFT rows) or `[B, 2, T]`
(preference pairs, chosen first), right-padded, each row a sequence from position 0. A layout adds
`packed_*` arrays `[R, L]` that the step runs the model on instead, and `unpack_index` `[..., T-1]`
that puts every per-token log-prob back where the padded layout has it. The objectives see the
padded shapes, so every loss is unchanged.

* `padded` (default): nothing added; the model runs on all B x 2 x T positions.
* `packed`: every sequence's real tokens, back to back in rows of `data.pack_len` tokens (first fit,
  longest first); each is a segment of its own, with its own positions from 0.
* `shared_prompt`: a pair is one unit: the tokens its two sequences share from the start (the prompt,
  at least), then the rest of the chosen, then the rest of the rejected; the rejected tokens attend to
  the shared prefix and to themselves, never to the chosen (branch ids), and keep the positions they
  have in their own sequence. A pair costs P + C_chosen + C_rejected tokens instead of 2 (P + C). A
  pair whose unit does not fit in a row is laid out as in `packed`. Lists `[B, K, T]` alike (K
  branches); SFT rows `[B, T]` have nothing to share and are packed.

Arrays of a packed layout (R rows of L):
    packed_tokens, packed_positions      the tokens and their positions in their own sequence
    packed_segments                      1, 2, ... per unit within a row (0 = padding)
    packed_branches                      0 = shared by all sequences of a unit, k + 1 = sequence k's own
    packed_sources                       the index (in the row) of the token whose hidden state predicts this one
    unpack_index                         [..., T-1]: for padded entry t (the log-prob of token t + 1), its
                                         flat index r * L + j in the packed rows (0 where `mask` is 0)

A token attends to key k iff both are in the same unit, k is not later, and k's branch is 0 or its own
(`pjax.models.llama.attention_mask`).
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("padded", "packed", "shared_prompt")
KEYS = ("packed_tokens", "packed_positions", "packed_segments", "packed_branches", "packed_sources")


def validate(layout: str, pack_len: int, max_len: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"data.layout={layout!r}: expected one of {list(LAYOUTS)}")
    if pack_len and pack_len < max_len:
        raise ValueError(f"data.pack_len={pack_len} must be 0 (auto) or >= data.max_len={max_len}: "
                         "a sequence is never split across rows")


def row_length(layout: str, pack_len: int, max_len: int) -> int:
    """L: `data.pack_len`, or (0 = auto) `data.max_len` for `packed` and 3/2 of it for `shared_prompt`
    (a pair whose completions are as long as its prompt fits once, with nothing wasted)."""
    if pack_len:
        return pack_len
    return max_len if layout == "packed" else -(-3 * max_len // 2)


def _units(tokens: np.ndarray, mask: np.ndarray, layout: str, L: int) -> list[list[tuple[int, int, int, int]]]:
    """Units to place: lists of (sequence, start, end, branch) spans of the flattened `[N, T]` rows."""
    lengths = mask.sum(-1).astype(np.int64)
    if tokens.ndim == 2 or layout == "packed":
        n = lengths.reshape(-1)
        return [[(i, 0, int(n[i]), 0)] for i in range(len(n)) if n[i] > 0]
    units = []
    K = tokens.shape[1]
    for b in range(tokens.shape[0]):
        n = [int(x) for x in lengths[b]]
        rows = tokens[b, :, :min(n)]
        same = (rows == rows[:1]).all(0)
        s = int(np.argmin(same)) if not same.all() else min(n)  # the shared prefix's length
        if s == 0 or s + sum(n) - K * s > L:  # nothing shared, or too long for a row: as `packed`
            units += [[(K * b + k, 0, n[k], 0)] for k in range(K)]
        else:
            units.append([(K * b, 0, s, 0)] + [(K * b + k, s, n[k], k + 1) for k in range(K)])
    return units


def plan_rows(batch: dict[str, np.ndarray], layout: str, L: int) -> list[list[list[tuple[int, int, int, int]]]]:
    """The units of each packed row (first fit, longest unit first)."""
    units = _units(np.asarray(batch["tokens"]), np.asarray(batch["mask"]), layout, L)
    rows: list[list] = []
    free: list[int] = []
    for unit in sorted(units, key=lambda u: -sum(e - s for _, s, e, _ in u)):
        size = sum(e - s for _, s, e, _ in unit)
        if size > L:
            raise ValueError(f"a sequence of {size} tokens does not fit data.pack_len={L}")
        for r, room in enumerate(free):
            if size <= room:
                rows[r].append(unit)
                free[r] -= size
                break
        else:
            rows.append([unit])
            free.append(L - size)
    return rows


def micro_batches(batch: dict[str, np.ndarray], k: int) -> list[dict[str, np.ndarray]]:
    """The k micro-batches of `train.grad_accum=k`: rows j, j + k, j + 2k, ... (`pjax.core.step`)."""
    n = len(batch["tokens"])
    if n % k:
        raise ValueError(f"{n} rows do not split into train.grad_accum={k} micro-batches")
    return [{key: v[j::k] for key, v in batch.items()} for j in range(k)]


def rows_needed(batch: dict[str, np.ndarray], layout: str, L: int, k: int = 1) -> int:
    """Packed rows per micro-batch (the fullest of the k) that `batch` needs."""
    return max(len(plan_rows(micro, layout, L)) for micro in micro_batches(batch, k))


def pack(batch: dict[str, np.ndarray], layout: str, L: int, num_rows: int | None = None,
         row_offset: int = 0, k: int = 1) -> dict[str, np.ndarray]:
    """`batch` with the layout's arrays added (unchanged for `padded`). `num_rows`: R (at least the
    rows the plan needs; default exactly those); `row_offset`: the global index of this host's first
    packed row, added to `unpack_index` (a host packs its own rows of a global batch).

    With k micro-batches (`train.grad_accum`), micro-batch j (rows j, j + k, ...) is packed on its own
    into packed rows j, j + k, ... (R = k x its rows), so that the step's split of every array into
    micro-batches gives each its own packed rows, and its `unpack_index` counts within them."""
    if layout == "padded":
        return batch
    if k > 1:
        per = (rows_needed(batch, layout, L, k) if num_rows is None else num_rows // k)
        if num_rows is not None and (num_rows % k or row_offset % k):
            raise ValueError(f"{num_rows} packed rows at offset {row_offset} do not split into {k} micro-batches")
        parts = [pack(micro, layout, L, per, row_offset // k) for micro in micro_batches(batch, k)]
        out = {key: np.stack([p[key] for p in parts], axis=1).reshape(per * k, L) for key in KEYS}
        index = np.empty_like(np.asarray(batch["mask"])[..., 1:], dtype=np.int32)
        for j, p in enumerate(parts):
            index[j::k] = p["unpack_index"]
        return {**batch, **out, "unpack_index": index}
    tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["mask"])
    T = tokens.shape[-1]
    flat_tokens = tokens.reshape(-1, T)
    plan = plan_rows(batch, layout, L)
    R = len(plan) if num_rows is None else num_rows
    if R < len(plan):
        raise ValueError(f"the batch needs {len(plan)} packed rows, {R} were given")
    out = {k: np.zeros((R, L), np.int32) for k in KEYS}
    where = np.zeros(flat_tokens.shape, np.int64)  # packed flat index of every real token
    for r, units in enumerate(plan):
        j = 0
        for segment, unit in enumerate(units, start=1):
            shared_end = j  # row index of the shared prefix's last token (a unit starts with it)
            for seq, start, end, branch in unit:
                n = end - start
                if n == 0:  # a completion the pair's two sequences share entirely
                    continue
                span = slice(j, j + n)
                out["packed_tokens"][r, span] = flat_tokens[seq, start:end]
                out["packed_positions"][r, span] = np.arange(start, end)
                out["packed_segments"][r, span] = segment
                out["packed_branches"][r, span] = branch
                # each token is predicted by the one before it; a branch's first by the shared prefix's
                # last; a sequence's first token is never scored (its source is itself)
                sources = np.arange(j - 1, j + n - 1)
                sources[0] = shared_end if branch else j
                out["packed_sources"][r, span] = sources
                flat = (row_offset + r) * L + np.arange(j, j + n)
                where[seq, start:end] = flat
                if branch == 0 and len(unit) > 1:  # a shared prefix: every sequence of the unit reads it
                    where[[q for q, *_ in unit[1:]], start:end] = flat
                    shared_end = j + n - 1
                j += n
    scored = mask.reshape(-1, T)[:, 1:] > 0
    index = np.where(scored, where[:, 1:], 0).reshape(*tokens.shape[:-1], T - 1)
    return {**batch, **out, "unpack_index": index.astype(np.int32)}


def token_counts(batch: dict[str, np.ndarray], layout: str, L: int) -> dict[str, int]:
    """Real tokens of `batch`, and the positions the model runs on under `layout` (R x L, or all of
    the padded batch): the FLOPs saved by a layout are in this ratio."""
    tokens = np.asarray(batch["tokens"])
    real = int(np.asarray(batch["mask"]).sum())
    if layout == "padded":
        return {"real": real, "model": int(tokens.size), "placed": int(tokens.size)}
    plan = plan_rows(batch, layout, L)
    placed = sum(e - s for units in plan for unit in units for _, s, e, _ in unit)
    return {"real": real, "model": len(plan) * L, "placed": placed}
