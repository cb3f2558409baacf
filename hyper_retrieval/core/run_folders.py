"""What a training run's folder holds, and the guards that keep a command from writing over one.

A run folder is train.py's output_dir: checkpoints/step_N, final/, best/, adapter/, log.jsonl, train_config.yaml.
export.py never writes into one of its artefacts or over a folder that holds a run; train.py never starts a fresh run
over another run's traces unless told to move that run aside (never deleted).

Every command's output folder goes through :func:`check_output_folder`: it is never one of the command's inputs, never
inside or around one, never inside a training run's artefacts, a checkpoint, a saved model, an export or an
evaluation, and never is or holds one of those other than the kind the command itself writes (`folder_kind` tells
them apart by what they hold). train.py's own rules (fresh start, restart, resume, move aside) are
:func:`training_output_plan`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

RUN_ENTRIES = ("checkpoints", "final", "best", "adapter", "log.jsonl", "train_config.yaml")
STEP = re.compile(r"step_(\d+)$")
TRAIN_CONFIG = "train_config.yaml"
# The kinds of folder the commands write (folder_kind): train.py a run (with checkpoints, saved models inside),
# export.py an export, eval.py an evaluation.
TRAINING_RUN, CHECKPOINT, SAVED_MODEL, EXPORT, EVALUATION = (
    "a training run", "a training checkpoint", "a saved model", "an export", "an evaluation")


class RunFolderError(ValueError):
    """A command would write over a training run (its message names the run and what to do instead)."""


def is_run_folder(folder: Path) -> bool:
    """True when ``folder`` holds a training run: a checkpoints/ folder or a log.jsonl."""
    return (folder / "checkpoints").is_dir() or (folder / "log.jsonl").is_file()


def run_contents(folder: Path) -> list[str]:
    """What a run folder holds of a finished or resumable run: its step_N checkpoints (finished or not) and final/."""
    steps = sorted((int(m.group(1)), p.name) for p in (folder / "checkpoints").glob("step_*")
                   if p.is_dir() and (m := STEP.match(p.name)))
    return [f"checkpoints/{name}" for _, name in steps] + (["final/"] if (folder / "final").is_dir() else [])


def check_export_target(out: Path, model: Path,
                        inputs: Mapping[str, Iterable[str | os.PathLike | None]] | None = None) -> None:
    """Refuses an export folder that is the model itself, holds it, holds a training run anywhere below it, or lies
    inside a run's own artefacts (checkpoints/, final/, best/, adapter/); a new folder beside them (RUN/hub) is
    fine. Then check_output_folder: nor one of the other ``inputs`` ({option: paths}: --results, --baseline), nor
    inside or holding a checkpoint, saved model, export or evaluation, nor any of those but an export (replaced by
    --overwrite). Raises RunFolderError naming the run."""
    out, model = out.resolve(), model.resolve()
    if out == model or out in model.parents:
        raise RunFolderError(f"--out {out} is or holds the model being exported ({model}); choose a new folder")
    for folder in (out, *out.parents):
        if folder.name in RUN_ENTRIES and is_run_folder(folder.parent):
            raise RunFolderError(f"--out {out} lies inside {folder}, part of the training run {folder.parent}; "
                                 f"choose a folder outside it (e.g. {folder.parent / 'hub'})")
    if out.is_dir():
        runs = [out, *(p.parent for p in out.rglob("log.jsonl")), *(p.parent for p in out.rglob("checkpoints"))]
        held = sorted({str(r) for r in runs if is_run_folder(r)})
        if held:
            raise RunFolderError(f"--out {out} holds the training run {held[0]}"
                                 + (f" (and {len(held) - 1} more)" if len(held) > 1 else "")
                                 + "; an export never replaces a run: choose a new folder")
    check_output_folder(out, "--out", EXPORT, {"--model": [model], **(inputs or {})})


def moved_aside_name(folder: Path) -> Path:
    """Where ``--move-aside`` puts an old run: ``<folder>.old-<UTC time>`` (a counter added if that exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = folder.with_name(f"{folder.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    return target


def folder_kind(folder: Path) -> str | None:
    """What ``folder`` is, by what it holds: TRAINING_RUN (log.jsonl, train_config.yaml or a step_N checkpoint),
    CHECKPOINT (checkpoints/step_N, or what save_checkpoint writes), EXPORT (export.py's: config.json and handler.py,
    or an adapter with its card), SAVED_MODEL (config.json with weights, or an adapter), EVALUATION (eval.py's
    results.json with results.md, per_query.json or runs/); None for anything else (or no folder)."""
    if not folder.is_dir():
        return None
    if (folder / "log.jsonl").is_file() or (folder / TRAIN_CONFIG).is_file() or run_contents(folder):
        return TRAINING_RUN
    step = STEP.match(folder.name) or folder.name.startswith(".partial_step_")
    if (folder / "train_state.json").is_file() or (folder.parent.name == "checkpoints" and step):
        return CHECKPOINT
    has_config, has_adapter = (folder / "config.json").is_file(), (folder / "hyper_prompt_config.json").is_file()
    if (has_config and (folder / "handler.py").is_file()) or (
            has_adapter and not has_config and (folder / "README.md").is_file()):
        return EXPORT
    if has_adapter or (has_config and (any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file())):
        return SAVED_MODEL
    if (folder / "results.json").is_file() and any(
            (folder / f).exists() for f in ("results.md", "per_query.json", "runs")):
        return EVALUATION
    return None


def held_below(folder: Path, skip: Iterable[str] = ()) -> list[str]:
    """The runs, checkpoints, saved models, exports and evaluations anywhere below ``folder`` (not looking inside
    them, nor into its entries named in ``skip``), as "relative/path/ (kind)"."""
    found, skip = [], set(skip)
    for root, dirs, _ in os.walk(folder):
        keep = []
        for name in sorted(dirs):
            path = Path(root) / name
            kind = None if (root == str(folder) and name in skip) else folder_kind(path)
            if kind:
                found.append(f"{path.relative_to(folder)}/ ({kind})")
            elif not (root == str(folder) and name in skip):
                keep.append(name)
        dirs[:] = keep
    return found


def _listed(found: list[str], limit: int = 3) -> str:
    return ", ".join(found[:limit]) + (f" and {len(found) - limit} more" if len(found) > limit else "")


def check_inputs(out: Path, option: str, inputs: Mapping[str, Iterable[str | os.PathLike | None]]) -> None:
    """Refuses an output that is one of the command's local inputs ({option: paths}; Hub ids and None are skipped),
    lies inside one or holds one."""
    out = Path(out).resolve()
    for name, paths in inputs.items():
        for given in paths:
            if given is None or not Path(given).exists():
                continue
            path = Path(given).resolve()
            if path == out:
                raise RunFolderError(f"{option} {out} is {name} {path}, an input of this command: an output never "
                                     "replaces an input; choose another folder")
            if path in out.parents:
                raise RunFolderError(f"{option} {out} lies inside {name} {path}, an input of this command; choose a "
                                     "folder outside it")
            if out in path.parents:
                raise RunFolderError(f"{option} {out} holds {name} {path}, an input of this command; choose a folder "
                                     "that does not hold it")


def check_output_folder(out: str | os.PathLike, option: str, own: str | None,
                        inputs: Mapping[str, Iterable[str | os.PathLike | None]] | None = None, *,
                        inside_run: bool = True, holding: bool = True) -> None:
    """Refuses (RunFolderError, naming ``option``) an output folder that is, lies inside or holds one of the
    command's ``inputs``; that lies inside a training run's artefacts (checkpoints/, final/, best/, adapter/), a
    checkpoint, a saved model, an export or an evaluation (inside a training run beside its artefacts, RUN/eval or
    RUN/hub, only where ``inside_run``); that is a run, checkpoint, saved model, export or evaluation other than
    ``own`` (the kind the command writes: its own earlier output); or, where ``holding`` and it is no such folder
    itself, that holds one anywhere below it."""
    out = Path(out).resolve()
    check_inputs(out, option, inputs or {})
    for folder in (out, *out.parents):
        if folder.name in RUN_ENTRIES and is_run_folder(folder.parent):
            raise RunFolderError(f"{option} {out} lies inside {folder}, part of the training run {folder.parent}; "
                                 "choose a folder outside it")
        kind = folder_kind(folder) if folder != out else None
        if kind == TRAINING_RUN and inside_run:
            continue
        if kind:
            raise RunFolderError(f"{option} {out} lies inside {folder}, {kind}: "
                                 + ("a run never goes inside another (moving that one aside would carry it off)"
                                    if kind == TRAINING_RUN else "what writes that again would delete or mix with it")
                                 + "; choose a folder outside it")
    kind = folder_kind(out)
    if kind and kind != own:
        raise RunFolderError(f"{option} {out} is {kind}"
                             + (f", not {own}" if own else "") + "; choose another folder")
    if holding and kind is None and out.is_dir():
        found = held_below(out)
        if found:
            raise RunFolderError(f"{option} {out} holds {_listed(found)}; choose a folder that holds none")


def fresh_start_blockers(folder: Path) -> list[str]:
    """What ``folder`` holds of another run that a fresh start would write into, replace or append to: its
    checkpoints and final/ (run_contents), its other artefacts (best/, adapter/, log.jsonl, train_config.yaml, an
    evaluation's results.json) and any run, checkpoint, model, export or evaluation below it."""
    held = run_contents(folder)
    held += [name + ("/" if (folder / name).is_dir() else "")
             for name in ("best", "adapter", "log.jsonl", TRAIN_CONFIG, "results.json", "config.json")
             if (folder / name).exists()]
    if (folder / "checkpoints").is_dir() and not any(h.startswith("checkpoints/") for h in held):
        held.append("checkpoints/")
    return held + (held_below(folder, skip=RUN_ENTRIES) if folder.is_dir() else [])


def is_restart(folder: Path, config: str) -> bool:
    """True when ``folder`` holds only what this very run (its train_config.yaml is ``config``, word for word) wrote
    before it was killed ahead of its first checkpoint: no step_N checkpoint, no final/, nothing below it of
    another kind. Starting it again starts over from step 0."""
    path = folder / TRAIN_CONFIG
    own = {"checkpoints/", "best/", "adapter/", "log.jsonl", TRAIN_CONFIG}
    return path.is_file() and path.read_text() == config and set(fresh_start_blockers(folder)) <= own


def check_fresh_start(folder: Path, config: str | None = None) -> None:
    """Refuses to start a new run in a folder that holds another run's traces (fresh_start_blockers); the traces of
    this very run killed before its first checkpoint (is_restart, given its ``config``) are not another run's."""
    held = fresh_start_blockers(folder)
    if not held or (config is not None and is_restart(folder, config)):
        return
    resumable = run_contents(folder)
    if resumable:
        shown = ", ".join(resumable[-3:]) + (f" and {len(resumable) - 3} more" if len(resumable) > 3 else "")
        raise RunFolderError(f"{folder} holds a training run ({shown}); continue it with --resume, or pass "
                             "--move-aside to keep it as "
                             f"{folder.name}.old-<time> beside it and start afresh (nothing is deleted)")
    path = folder / TRAIN_CONFIG
    why = " of another config" if config is not None and path.is_file() and path.read_text() != config else ""
    raise RunFolderError(f"{folder} holds another run's {_listed(held)}{why} and no checkpoint to continue from; pass "
                         f"--move-aside to keep it as {folder.name}.old-<time> beside it and start afresh (nothing "
                         "is deleted), or choose another output_dir")


def training_output_plan(out: Path, *, resume: bool, move_aside: bool, config: str,
                         inputs: Mapping[str, Iterable[str | os.PathLike | None]] | None = None) -> str:
    """How train.py may use its output folder: "resume" (--resume; train.py then needs a checkpoint), "fresh"
    (nothing of any run there), "move-aside" (--move-aside and something there: rename it first), "restart" (only
    this run's own traces from an attempt killed before its first checkpoint: start over, its log.jsonl started
    afresh). RunFolderError for anything else: an output inside another run, checkpoint, model, export or
    evaluation, one that is or holds an input, or a fresh start over another run's traces."""
    check_output_folder(out, "train.output_dir", TRAINING_RUN, inputs, inside_run=False, holding=False)
    if resume:
        return "resume"
    if not fresh_start_blockers(out):
        return "fresh"
    if move_aside:
        return "move-aside"
    check_fresh_start(out, config)
    return "restart"
