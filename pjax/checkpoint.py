"""Orbax checkpoints, one directory per phase.

A phase directory holds `checkpoints/` (full train state: params, optimizer state, step, RNG, and
the data position; async saves, the latest N kept plus every M-th; each step's files checksummed once
on disk and checked before a restore; a checkpoint that fails the check or does not read back is moved
aside and the previous one used) and `export/` (params only, plus `pjax.json` metadata) that the next phase
initialises from. `resume` implements the resume order: own checkpoint, then the parent export, then
a fresh initialisation, and says which in the log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from pjax import distributed, models, sharding
from pjax.models.llama import LlamaConfig

log = logging.getLogger("pjax")

EXPORT_METADATA = "pjax.json"
CHECKSUMS = "pjax_checksums.json"  # in each saved step: SHA-256 of its files, checked before a restore


def _abs(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


class CorruptCheckpoint(RuntimeError):
    """A checkpoint that cannot be read back (partial, truncated or otherwise damaged)."""


class PhaseCheckpoints:
    """Full train-state checkpoints of one phase under `<workdir>/checkpoints`.

    Each step holds two items: `state` (params, optimizer state, step, RNG, objective state) and
    `data` (the data position, JSON). The latest `keep` steps are kept, plus every `keep_every`-th.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, keep_every: int = 0, async_save: bool = True):
        self.directory = _abs(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every or None,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
        self._unsealed: list[int] = []  # saved steps whose checksums are not written yet

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data: dict[str, Any], *, force: bool = False) -> None:
        """Save `step` (asynchronously if so configured). Its files' checksums are written once it is
        on disk: before the next save starts, or at `wait` / `close`."""
        self._seal()
        saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                data=ocp.args.JsonSave(data)), force=force)
        if saved:
            self._unsealed.append(step)

    def _seal(self) -> None:
        """Write `CHECKSUMS` (SHA-256 of every file) into each saved step that has none yet."""
        if not self._unsealed:
            return
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in self._unsealed:
                directory = self.directory / str(step)
                if directory.is_dir():  # not already rotated away
                    _write_json(directory / CHECKSUMS, _file_digests(directory))
        self._unsealed = []
        distributed.barrier("pjax-checkpoint-sealed")

    def verify(self, step: int) -> None:
        """Raise `CorruptCheckpoint` naming the first file of `step` whose bytes differ from its
        checksum (or that is missing). A step saved without checksums (older pjax; the process died
        before they were written) is not checked."""
        directory = self.directory / str(step)
        path = directory / CHECKSUMS
        if not path.exists():
            log.info("checkpoint %s has no %s: its bytes are not verified", directory, CHECKSUMS)
            return
        try:
            want = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorruptCheckpoint(f"checkpoint {directory}: unreadable {CHECKSUMS} ({e})") from e
        have = _file_digests(directory)
        for name, digest in sorted(want.items()):
            if name not in have:
                raise CorruptCheckpoint(f"checkpoint {directory}: {name} is missing")
            if have[name] != digest:
                raise CorruptCheckpoint(f"checkpoint {directory}: {name} does not match its checksum "
                                        "(its bytes changed after it was saved)")

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """(state, data position) of `step`, the arrays with the shardings of `abstract_state`, after
        checking the step's files against their checksums."""
        self._seal()
        self.verify(step)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises several types; name the checkpoint in the error
            raise CorruptCheckpoint(f"cannot restore checkpoint {self.directory / str(step)}: "
                                    f"{type(e).__name__}: {e}") from e
        return out["state"], dict(out["data"])

    def restore_latest_good(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """The newest checkpoint that restores, or None if there is none.

        A checkpoint whose saved tree differs from `abstract_state` (a changed model or objective) is
        a configuration error, raised at once. One that fails to read back is skipped for the previous
        one; once an older checkpoint has restored, the newer unreadable ones are moved aside to
        `checkpoints/corrupt-<step>` (kept, not deleted) with a warning. If none restores, nothing is
        moved and the newest one's error is raised. With several processes a checkpoint counts as
        readable only if every process read it.
        """
        steps = self.all_steps()
        failed: list[tuple[int, CorruptCheckpoint]] = []
        for step in reversed(steps):
            mismatch = self.structure_mismatch(step, abstract_state)
            if mismatch:
                raise ValueError(f"checkpoint {self.directory / str(step)} holds a different train state than the "
                                 f"config builds ({mismatch}); restore the config it was written with or use a "
                                 "new workdir")
            try:
                state, data = self.restore(step, abstract_state)
                error = None
            except CorruptCheckpoint as e:
                state = data = None
                error = e
            if not _everywhere(error is None):
                failed.append((step, error or CorruptCheckpoint(
                    f"checkpoint {self.directory / str(step)} did not read back on another process")))
                continue
            for bad, e in failed:
                log.warning("%s; moved aside to %s, resuming from the previous checkpoint (step %d)",
                            e, self.directory / f"corrupt-{bad}", step)
                self._quarantine(bad)
            return step, state, data
        if failed:
            raise failed[0][1]
        return None

    def structure_mismatch(self, step: int, abstract_state: Any) -> str:
        """What differs between the saved tree of `step` and `abstract_state` ("" if nothing, or if
        the metadata cannot be read: then the restore reports the damage)."""
        try:
            saved = self.manager.item_metadata(step)["state"]
            saved = getattr(saved, "tree", saved)
        except Exception:  # noqa: BLE001 - unreadable metadata is damage, found by the restore
            return ""
        flat_saved, flat_now = _flat_by_path(saved), _flat_by_path(abstract_state)
        if not flat_saved:
            return ""
        diffs = [(k, "only in the checkpoint") for k in set(flat_saved) - set(flat_now)]
        diffs += [(k, "only in the config") for k in set(flat_now) - set(flat_saved)]
        for k in set(flat_saved) & set(flat_now):
            a, b = flat_saved[k], flat_now[k]
            if getattr(a, "shape", None) is not None and tuple(a.shape) != tuple(b.shape):
                diffs.append((k, f"shape {tuple(a.shape)} saved vs {tuple(b.shape)} now"))
        # the parameters' differences first: the optimizer state's follow from them
        diffs.sort(key=lambda d: (d[0][:1] != ("params",), d[0]))
        text = [f"{_path_text(k)}: {what}" for k, what in diffs]
        return "; ".join(text[:5]) + (f"; and {len(text) - 5} more" if len(text) > 5 else "")

    def _quarantine(self, step: int) -> None:
        distributed.barrier(f"pjax-quarantine-{step}-begin")
        if jax.process_index() == 0:
            target = self.directory / f"corrupt-{step}"
            n = 1
            while target.exists():
                target, n = self.directory / f"corrupt-{step}.{n}", n + 1
            os.replace(self.directory / str(step), target)
        distributed.barrier(f"pjax-quarantine-{step}-end")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self._seal()
        self.manager.close()


def _file_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory` (the checksum file itself aside), by relative path."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != CHECKSUMS:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[str(path.relative_to(directory))] = digest.hexdigest()
    return out


def _flat_by_path(tree: Any) -> dict[tuple[str, ...], Any]:
    """Leaves by a path of plain names: a named tuple's field (an attribute now, a dict key in the saved
    metadata), a dict key and a sequence index all become the same string."""
    def name(entry: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    return {tuple(name(e) for e in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _path_text(path: tuple[str, ...]) -> str:
    return "".join(f"[{p}]" if p.isdigit() else f"['{p}']" for p in path)


def _everywhere(ok: bool) -> bool:
    """`ok` on every process (a collective when there are several)."""
    return not distributed.max_over_processes(int(not ok))


def export_params(directory: str | os.PathLike, params: Any, metadata: dict[str, Any]) -> Path:
    """Write a params-only export (synchronously) with a JSON metadata file beside it."""
    directory = _abs(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(directory / "params", params, force=True)
    ckpt.wait_until_finished()
    ckpt.close()
    if jax.process_index() == 0:
        _write_json(directory / EXPORT_METADATA, {**metadata, "export_id": uuid.uuid4().hex})
    distributed.barrier("export-metadata")  # every process reads it next (the pipeline, evaluation)
    return directory


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


PARENT_PIN = "parent.json"


def pin_parent(workdir: str | os.PathLike, init_from: str, resuming: bool) -> None:
    """Record which parent export a phase started from, and refuse to resume from a different one.

    A resumed DPO run must keep the reference it started with: if `init_from` was cleared, or the
    export there was rewritten since (a new `export_id`), resuming would silently change it.
    """
    path = _abs(workdir) / PARENT_PIN
    meta = export_metadata(init_from) if init_from else None
    current = {"init_from": str(_abs(init_from)) if init_from else "",
               "export_id": meta.get("export_id") if meta else None}
    if resuming and path.exists():
        pinned = json.loads(path.read_text())
        if pinned != current:
            raise ValueError(
                f"init_from={init_from!r} (export_id {current['export_id']}) differs from the parent export this "
                f"run started from ({pinned['init_from']!r}, export_id {pinned['export_id']}), recorded in {path}; "
                "resuming would change the initialisation and the reference. Restore init_from or use a new workdir."
            )
    elif jax.process_index() == 0:
        _write_json(path, current)


def export_metadata(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata of a complete export, or None if `directory` holds no finished export."""
    path = _abs(directory) / EXPORT_METADATA
    if not path.exists() or not (_abs(directory) / "params").exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RuntimeError(f"corrupt export metadata {path}: {e}") from e


def load_params(directory: str | os.PathLike, abstract_params: Any) -> Any:
    """Restore an export's params into arrays with the shardings of `abstract_params`."""
    path = _abs(directory) / "params"
    if not path.exists():
        raise FileNotFoundError(f"no params export at {path}")
    ckpt = ocp.StandardCheckpointer()
    try:
        return ckpt.restore(path, abstract_params)
    except Exception as e:
        raise RuntimeError(f"cannot restore params export {path}: {e}") from e
    finally:
        ckpt.close()


def export_model_config(directory: str | os.PathLike) -> Any:
    """The `LlamaConfig` an export was trained with (from its metadata)."""
    meta = export_metadata(directory)
    if meta is None:
        raise FileNotFoundError(f"{str(directory)!r}: no finished pjax export there (no {EXPORT_METADATA} + params/)")
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    return LlamaConfig(**{k: tuple(v) if k == "rope_scaling" else v for k, v in meta["model"].items() if k in fields})


def load_export(directory: str | os.PathLike, mesh: jax.sharding.Mesh, rules: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(model_def, params, metadata) of an export, its model built from the metadata and its params
    placed with the sharding `rules` on `mesh` (evaluation, reward models, partial restores)."""
    model_def = models.build(export_model_config(directory))
    shardings = sharding.tree_shardings(model_def.logical_specs, model_def.shapes, mesh, rules)
    abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), model_def.shapes,
                            shardings)
    return model_def, load_params(directory, abstract), export_metadata(directory)


def check_model_matches(export_dir: str | os.PathLike, model: dict[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """Fail clearly if an export was made with a different model shape than the config asks for
    (`ignore`: fields allowed to differ, e.g. the head of a reward model started from an SFT export)."""
    meta = export_metadata(export_dir)
    if meta is None:
        raise FileNotFoundError(f"init_from={str(export_dir)!r}: no finished export there "
                                f"(expected {EXPORT_METADATA} and params/)")
    theirs = meta.get("model", {})
    diff = {k: (theirs.get(k), v) for k, v in model.items()
            if k in theirs and k not in ("remat", "scan_layers", "attention", "dtype", *ignore) and _norm(theirs[k]) != _norm(v)}
    if diff:
        detail = ", ".join(f"model.{k}: export {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"init_from={str(export_dir)!r} does not match the config: {detail}")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def resume(ckpts: PhaseCheckpoints, init_from: str, abstract_state: dict[str, Any],
           fresh: Callable[[], dict[str, Any]], with_params: Callable[[Any], dict[str, Any]],
           import_from: str = "", imported: Callable[[], Any] | None = None,
           parent: Callable[[], Any] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Resume order: own checkpoint (the newest readable one), then the parent export, then an imported
    Hugging Face / GGUF checkpoint (`imported()` loads `import_from`), then fresh init. Returns (state,
    data position or None, source) and says which in the log.

    `fresh()` builds a new sharded state; `with_params(params)` builds one around loaded params;
    `parent()`, when given, loads the parent export's params instead of a plain restore (e.g. a
    partial restore: the backbone of an SFT export under a fresh reward head).
    """
    restored = ckpts.restore_latest_good(abstract_state)
    if restored is not None:
        step, state, data = restored
        log.info("resume: own checkpoint %s (step %d)", ckpts.directory, step)
        return state, data, f"checkpoint:{step}"
    if init_from:
        log.info("resume: no own checkpoint; initialising from parent export %s", init_from)
        params = parent() if parent is not None else load_params(init_from, abstract_state["params"])
        return with_params(params), None, f"export:{init_from}"
    if import_from and imported is not None:
        log.info("resume: no own checkpoint and no parent export; importing %s", import_from)
        return with_params(imported()), None, f"import:{import_from}"
    log.info("resume: no own checkpoint and no parent export; fresh initialisation")
    return fresh(), None, "fresh"
