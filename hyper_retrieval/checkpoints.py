"""Training checkpoints: written atomically, found again on resume, pruned to the newest few.

A checkpoint is `<output_dir>/checkpoints/step_<N>/` as written by `accelerator.save_state` (model weights in
safetensors, optimizer, scheduler, RNG states and every object registered for checkpointing). It is written into a
temporary sibling folder and renamed into place, so a run killed mid-write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

PATTERN = re.compile(r"^step_(\d+)$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, folder), oldest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := PATTERN.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_checkpoint(accelerator, output_dir: str | Path, step: int, keep: int = 2) -> Path:
    """Saves the accelerator's state for `step` atomically and keeps the newest `keep` checkpoints."""
    final = checkpoint_dir(output_dir) / f"step_{step}"
    partial = final.with_name(f".partial_step_{step}")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
