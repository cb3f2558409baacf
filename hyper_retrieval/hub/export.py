"""Publishing a trained retriever: a Hub-ready folder written locally (`export_for_hub`), then one upload
(`push_to_hub`), the only step that needs the network.

The folder holds: the weights, remote code, config with auto_map and tokenizer (save_pretrained); the hyper-prompt
adapter alone under adapter/; the model card README.md (eval results, attention heat map under assets/); the
sentence-transformers files (modules.json, config_sentence_transformers.json, sentence_hyper.py: every
save_pretrained writes them); the Inference Endpoints handler (handler.py); and the local widget page (widget.py,
widget.html). Those last three files ship verbatim from hub_files/ beside this module. extra_files.json lists what
the folder holds beside the network, for `SentenceTransformer.save` of the export to copy along.

An adapter-only export (`adapter_only=True`) holds the hyper-prompt alone: hyper_prompt_config.json,
hyper_prompt.safetensors and its card README.md, the same three files as adapter/ in a full export. `push_to_hub`
uploads either form.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard
from safetensors import SafetensorError

import modeling_hyper
from hyper_retrieval.core.atomic_files import swap_folder
from hyper_retrieval.core.fingerprints import path_fingerprint
from hyper_retrieval.core.locations import looks_local
from hyper_retrieval.core.run_folders import check_export_target
from hyper_retrieval.evaluation.results import load_results
from hyper_retrieval.hub.card import build_adapter_card, build_model_card, default_base_model
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel
from modeling_hyper.hyper_prompt import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from modeling_hyper.sentence_hyper import EXTRA_FILES_LIST

HUB_FILES = Path(__file__).resolve().parent / "hub_files"
ADAPTER_DIR = "adapter"
HEATMAP = "attention_heatmap.png"
HEATMAP_IN_REPO = f"assets/{HEATMAP}"
TRAIN_CONFIG = "train_config.yaml"
NOT_UPLOADED = ("__pycache__", ".pyc")
MODEL_CODE = Path(modeling_hyper.__file__).resolve().parent
# What an export may hold: these data formats, and the code files this project writes (the model's and the hub's)
DATA_SUFFIXES = (".safetensors", ".json", ".md", ".png", ".html", ".txt")
KNOWN_CODE = frozenset(p.name for folder in (MODEL_CODE, HUB_FILES) for p in folder.glob("*.py")) - {"__init__.py"}
ADAPTER_FILES = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)


class NoAdapterError(ValueError):
    """An adapter-only export of a model without a hyper-prompt."""


class ExportWriteError(OSError):
    """Writing the export failed (a full disk): the message names the folder; the export there before is kept."""


def find_train_config(model_dir: Path) -> Path | None:
    """train.py's train_config.yaml: in the model folder, or beside it (train.py writes <out>/final and <out>/...)."""
    return next((p for p in (model_dir / TRAIN_CONFIG, model_dir.parent / TRAIN_CONFIG) if p.is_file()), None)


def check_results_are_of(results: Mapping[str, Any], model_dir: Path, results_dir: str | os.PathLike) -> None:
    """Refuses results that eval.py computed for another model (by the content fingerprint it recorded)."""
    settings = results.get("settings", {})
    recorded, actual = settings.get("model_fingerprint"), path_fingerprint(model_dir)
    if recorded != actual:
        raise ValueError(f"{results_dir} holds results of {settings.get('model')!r} (fingerprint {recorded}), not of "
                         f"{model_dir} (fingerprint {actual}); evaluate this model with eval.py and export those")


def training_licences(train_config: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """{collection: {"source", "licence"}} from the meta.json of each local training collection that has one."""
    found = {}
    for c in (train_config or {}).get("data", {}).get("collections", []):
        meta = Path(c["path"]) / "meta.json"
        if meta.is_file():
            facts = json.loads(meta.read_text())
            found[Path(c["path"]).name] = {"source": str(facts.get("source", "")),
                                           "licence": str(facts.get("licence", "unknown"))}
    return found


def export_for_hub(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    results_dir: str | os.PathLike | None = None,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    widget: Sequence[Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    baseline_dir: str | os.PathLike | None = None,
    adapter_only: bool = False,
) -> Path:
    """Writes the Hub-ready folder `out_dir` for the saved model in `model_dir`; returns its path.

    `results_dir` is an eval.py output folder (results.json, attention_heatmap.png) for the card's results; it must
    have been computed by this model (its fingerprint). `baseline_dir` is another system's eval.py output on the same
    collections (BM25 in the same run), compared with in the card. `repo_id` names the model in the card's code
    examples. An existing non-empty `out_dir` is refused unless `overwrite` (which replaces it: the new export is
    written beside it and swapped in whole, so a failure, ExportWriteError, leaves it as it was); the model itself, the
    results or baseline folder, a folder holding a training run, a checkpoint, a saved model or an evaluation, or
    one inside a run's checkpoints/, final/, best/ or adapter/ (or inside any of those) is refused always
    (RunFolderError). export.py holds the folder's lock (hyper_retrieval.core.folder_lock) around this call.

    `adapter_only` writes the hyper-prompt adapter alone (its two files and its card, `write_adapter`); a model
    without a hyper-prompt is refused (NoAdapterError). A full export holds the same under adapter/.
    """
    model_dir, out = Path(model_dir), Path(out_dir)
    # never an input (the model, the results, the baseline), a run's artefacts, a folder holding a run, a checkpoint,
    # a saved model or an evaluation
    check_export_target(out, model_dir, {"--results": [results_dir], "--baseline": [baseline_dir]})
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass overwrite=True (--overwrite)")
    model = HyperRetrieverModel.from_pretrained(model_dir)
    if adapter_only and model.hyper_prompt is None:
        raise NoAdapterError(f"{model_dir}: the model has no hyper-prompt (config.hyper_prompt is None), so there is "
                             "no adapter to export; export the whole model (without adapter_only / --adapter-only)")
    if model.tokenizer is None and not adapter_only:
        raise ValueError(f"{model_dir}: no tokenizer beside the weights; the exported model could not encode text")
    results = load_results(results_dir) if results_dir is not None else None
    if results is not None:
        check_results_are_of(results, model_dir, results_dir)
    baseline = load_results(baseline_dir) if baseline_dir is not None else None
    train_config_path = find_train_config(model_dir)
    train_config = yaml.safe_load(train_config_path.read_text()) if train_config_path else None
    base_model = base_model or default_base_model(model.config, train_config)
    licences = training_licences(train_config)
    adapter_card = dict(results=results, train_config=train_config, baseline=baseline, repo_id=repo_id,
                        license=license, licences=licences, base_model=base_model, datasets=datasets)

    def write(folder: Path) -> None:
        if adapter_only:
            write_adapter(model, folder, **adapter_card)
        else:
            write_export(model, folder, results_dir=results_dir, adapter_card=adapter_card, widget=widget)
        check_known_files(folder)

    try:  # written beside the old export, swapped in whole at the end: a failure (a full disk) leaves the old one
        swap_folder(write, out)
    except (OSError, SafetensorError) as e:
        raise ExportWriteError(f"{out}: writing the export failed ({type(e).__name__}: {e}); "
                               f"{'the export there before is unchanged' if out.exists() else 'nothing was written'}"
                               ) from e
    return out


def write_export(model: HyperRetrieverModel, out: Path, *, results_dir: str | os.PathLike | None,
                 adapter_card: dict[str, Any], widget: Sequence[Mapping[str, Any]] | None) -> None:
    """The full export's files in the (new, empty) folder ``out``: the model, its adapter, code and card."""
    train_config, repo_id, license = adapter_card["train_config"], adapter_card["repo_id"], adapter_card["license"]
    base_model, datasets, baseline = adapter_card["base_model"], adapter_card["datasets"], adapter_card["baseline"]
    results, licences = adapter_card["results"], adapter_card["licences"]
    model.save_pretrained(out)
    network_files = set(files_to_upload(out))
    if model.hyper_prompt is not None:
        write_adapter(model, out / ADAPTER_DIR, subfolder=ADAPTER_DIR, model_id=repo_id, **adapter_card)
    shutil.copytree(HUB_FILES, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*(f"*{n}" for n in NOT_UPLOADED)))
    heatmap = None
    if results_dir is not None and (Path(results_dir) / HEATMAP).is_file():
        (out / HEATMAP_IN_REPO).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(results_dir) / HEATMAP, out / HEATMAP_IN_REPO)
        heatmap = HEATMAP_IN_REPO
    card = build_model_card(
        model.config, results=results, train_config=train_config, heatmap=heatmap, repo_id=repo_id, license=license,
        base_model=base_model, datasets=datasets, widget=widget, baseline=baseline, licences=licences,
    )
    card.save(out / "README.md")
    # what the export holds beside the network, for SentenceTransformer.save of the export to copy along
    extra = [f for f in files_to_upload(out) if f not in network_files]
    (out / EXTRA_FILES_LIST).write_text(json.dumps(extra, indent=2) + "\n")


def write_adapter(model: HyperRetrieverModel, folder: Path, *, base_model: str | None = None, **card_kwargs: Any
                  ) -> None:
    """The model's hyper-prompt alone in `folder`: hyper_prompt_config.json, hyper_prompt.safetensors and its card
    README.md (`build_adapter_card` with `card_kwargs`).

    An adapter trained from a local copy of the backbone records that path, which names nothing on another machine:
    when `base_model` (a Hub id) is known, the exported adapter names it instead, so that
    `from_backbone(base_model).load_adapter(...)` accepts it.
    """
    model.save_adapter(folder)
    prompt_config = HyperPromptConfig.from_pretrained(folder)
    recorded = prompt_config.base_model_name_or_path
    if base_model and not looks_local(base_model) and (recorded is None or looks_local(recorded)):
        prompt_config.base_model_name_or_path = base_model
        prompt_config.save_pretrained(folder)
    card = build_adapter_card(
        prompt_config.to_dict(), size_bytes=sum((folder / f).stat().st_size for f in ADAPTER_FILES),
        trainable_parameters=sum(p.numel() for p in model.hyper_prompt.parameters()), **card_kwargs,
    )
    card.save(folder / "README.md")


def check_known_files(out_dir: str | os.PathLike) -> None:
    """Raises ValueError naming any file of the folder that is neither data in a known format (safetensors, JSON,
    Markdown, PNG, HTML, text) nor one of this project's code files: no pickle or stray script is ever uploaded."""
    unknown = [f for f in files_to_upload(out_dir)
               if not (f.endswith(DATA_SUFFIXES) or (f.endswith(".py") and "/" not in f and f in KNOWN_CODE))]
    if unknown:
        raise ValueError(f"{out_dir}: files an export never writes: {unknown}; export the model again into an "
                         "empty folder")


def files_to_upload(out_dir: str | os.PathLike) -> list[str]:
    """The folder's files as repository paths (posix, sorted), without Python caches."""
    out = Path(out_dir)
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not any(part.endswith(NOT_UPLOADED) for part in p.relative_to(out).parts)
    )


def push_to_hub(
    out_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> CommitInfo:
    """Uploads an `export_for_hub` folder, a full export or an adapter-only one, to the model repository `repo_id` in
    one commit (creating the repo). A folder that is neither is refused before anything is sent.

    The token defaults to huggingface_hub's usual places (HF_TOKEN, `hf auth login`). The card's metadata is validated
    by the Hub first, so a bad card fails before any file is sent.
    """
    out = Path(out_dir)
    files = files_to_upload(out)
    kind = export_kind(out)
    check_known_files(out)
    ModelCard.load(out / "README.md").validate(repo_type="model")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(out / f)) for f in files]
    message = commit_message or ("Upload HypeR retriever" if kind == "model" else "Upload HypeR hyper-prompt adapter")
    return api.create_commit(repo_id=repo_id, repo_type="model", operations=operations, commit_message=message)


def export_kind(out_dir: str | os.PathLike) -> str:
    """"model" for a full export (README.md, config.json), "adapter" for an adapter-only one (README.md and the
    adapter's two files, no config.json); FileNotFoundError naming both forms for anything else."""
    files = set(files_to_upload(out_dir))
    if "README.md" in files and "config.json" in files:
        return "model"
    if {"README.md", *ADAPTER_FILES} <= files:  # README.md without config.json
        return "adapter"
    raise FileNotFoundError(
        f"{out_dir}: not an exported folder: neither a model (README.md, config.json) nor an adapter (README.md, "
        f"{', '.join(ADAPTER_FILES)}); run export_for_hub (adapter_only=True for the adapter alone)")
