"""What a training run's folder holds, and the guards that keep a command from writing over one.

A run folder is train.py's output_dir: checkpoints/step_N, final/, best/, adapter/, log.jsonl, train_config.yaml.
export.py never writes into one of its artefacts or over a folder that holds a run; train.py never starts a fresh run
over another run's checkpoints or final model unless told to move that run aside (never deleted).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

RUN_ENTRIES = ("checkpoints", "final", "best", "adapter", "log.jsonl", "train_config.yaml")
STEP = re.compile(r"step_(\d+)$")


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


def check_export_target(out: Path, model: Path) -> None:
    """Refuses an export folder that is the model itself, holds it, holds a training run anywhere below it, or lies
    inside a run's own artefacts (checkpoints/, final/, best/, adapter/); a new folder beside them (RUN/hub) is
    fine. Raises RunFolderError naming the run."""
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


def moved_aside_name(folder: Path) -> Path:
    """Where ``--move-aside`` puts an old run: ``<folder>.old-<UTC time>`` (a counter added if that exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = folder.with_name(f"{folder.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    return target


def check_fresh_start(folder: Path) -> None:
    """Refuses to start a new run in a folder that holds another run's checkpoints or final model."""
    held = run_contents(folder)
    if held:
        shown = ", ".join(held[-3:]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise RunFolderError(f"{folder} holds a training run ({shown}); continue it with --resume, or pass "
                             "--move-aside to keep it as "
                             f"{folder.name}.old-<time> beside it and start afresh (nothing is deleted)")
