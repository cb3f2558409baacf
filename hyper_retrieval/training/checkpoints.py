"""Training checkpoints: written atomically, verified on resume (falling back past a damaged one), pruned.

A checkpoint is `<output_dir>/checkpoints/step_<N>/`: what `accelerator.save_state` writes (model weights in
safetensors; optimizer.bin and random_states_<rank>.pkl, torch pickles read only with weights_only; nothing
registered, so no pickled objects of ours), the run's own state as JSON
(`train_state.json`: counters and scheduler), tensors (`train_tensors.safetensors`: the loss's memory bank) and each
process's random generators (`rng_<rank>.safetensors`, restored by us: nothing is unpickled), and, written last,
`manifest.json` with every file's size and sha256. It is written into a temporary sibling folder and renamed into
place. On resume, checkpoints are tried newest first; one without a manifest, with a file that does not
match it, or that fails to load is skipped with the reason, and the next older one is used.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hyper_retrieval.core.atomic_files import ManifestError, check_manifest, replace_folder, write_manifest
from hyper_retrieval.core.run_folders import STEP

STATE_FILE = "train_state.json"
TENSORS_FILE = "train_tensors.safetensors"
RNG_FILE = "rng_{}.safetensors"  # per process


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or loaded."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Checkpoint folders as (step, folder), oldest first (complete or not: see verify_checkpoint)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := STEP.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies, or None."""
    for _, folder in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(folder)
            return folder
        except CheckpointError:
            continue
    return None


def verify_checkpoint(folder: Path) -> None:
    """Raises CheckpointError saying what is wrong: no manifest (never finished), a file missing, resized or changed."""
    try:
        check_manifest(folder, (STATE_FILE, TENSORS_FILE))
    except ManifestError as e:
        raise CheckpointError(f"{e} (an unfinished or damaged checkpoint)") from None


def rng_state() -> dict[str, torch.Tensor]:
    """This process's random generators (Python, numpy, torch CPU and CUDA) as tensors, for safetensors."""
    version, internal, gauss = random.getstate()
    _, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": torch.tensor(internal, dtype=torch.int64),
             "python_meta": torch.tensor([version, np.nan if gauss is None else gauss], dtype=torch.float64),
             "numpy": torch.from_numpy(keys.astype(np.int64)),
             "numpy_meta": torch.tensor([position, has_gauss, cached], dtype=torch.float64),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state |= {f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def set_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Restores what rng_state saved."""
    version, gauss = state["python_meta"].tolist()
    random.setstate((int(version), tuple(state["python"].tolist()), None if np.isnan(gauss) else gauss))
    position, has_gauss, cached = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(position), int(has_gauss),
                         cached))
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted((k for k in state if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: Mapping[str, Any],
                    tensors: Mapping[str, torch.Tensor], keep: int = 2) -> Path:
    """Saves the accelerator's state, every process's random generators, and the run's JSON `state` and `tensors`
    for `step`, atomically, with the manifest last; keeps it and the newest `keep - 1` of the earlier steps (a later
    step's checkpoint is never pruned)."""
    final = checkpoint_dir(output_dir) / f"step_{step}"
    partial = final.with_name(f".partial_step_{step}")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    save_file(rng_state(), partial / RNG_FILE.format(accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, partial / TENSORS_FILE)
        write_manifest(partial, {"step": step})
        replace_folder(partial, final)
        # the newest `keep` of this run's checkpoints up to this step stay; never this one, never a later step's
        older = [folder for s, folder in list_checkpoints(output_dir) if s < step]
        for old in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, output_dir: str | Path,
           restore: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]) -> tuple[Path | None, list[str]]:
    """Loads the newest checkpoint that verifies and loads: accelerate's state, then `restore(state, tensors)` with
    the run's own. Returns (the checkpoint or None, a line per skipped checkpoint saying why)."""
    skipped = []
    for _, folder in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(folder)
            accelerator.load_state(str(folder))
            restore(json.loads((folder / STATE_FILE).read_text()), load_file(folder / TENSORS_FILE))
            # accelerate's own RNG file is read without code (weights_only) and its failure is silent: ours decides
            set_rng_state(load_file(folder / RNG_FILE.format(accelerator.process_index)))
            return folder, skipped
        except Exception as e:  # any failure to load (a pickle refused, a shape changed) skips the checkpoint
            skipped.append(f"skipped {folder}: {type(e).__name__}: {e}")
    return None, skipped
