"""The model card (README.md) of an exported retriever: Hub metadata and a body written from the run.

Metadata: license, base model, datasets, tags, library and pipeline tag, the eval.py results as a `model-index`
(one EvalResult per collection and metric, values exactly as in results.json) and sentence-similarity widget
examples. Body: the method, how to load the model (AutoModel, sentence-transformers, pipeline, the adapter, the
endpoint handler and the local widget page), the training settings, the results table and attention heat map,
limitations and the citation.

The adapter's own card (`build_adapter_card`, adapter/README.md or an adapter-only export): the backbone it needs,
whether that stayed frozen in training (only then does it load onto the plain backbone), its size and parameters, the
same results and a snippet that loads backbone + adapter.

Both bodies are Jinja templates in card_templates/ (model_card.md, adapter_card.md, and results.md, the results
section they share), rendered by huggingface_hub's `ModelCard.from_template`; this module computes what they show.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hyper_retrieval.core.locations import looks_local
from hyper_retrieval.evaluation import mteb_task
from hyper_retrieval.evaluation.results import METRICS, group_averages, results_table
from hyper_retrieval.hub.hub_files.handler import MAX_REQUEST_CHARS, MAX_REQUEST_TOKENS
from modeling_hyper.hyper_prompt import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "retrieval", "hyper-prompt", "hyper",
        "custom_code"]
DEFAULT_WIDGET = [{
    "source_sentence": "What causes the seasons on Earth?",
    "sentences": [
        "The tilt of Earth's axis changes how directly sunlight reaches each hemisphere over the year.",
        "The Moon's gravity raises the tides of the oceans.",
        "A television season is a set of episodes released together.",
    ],
}]
RETRIEVAL_TASK = "text-retrieval"
TEMPLATES = Path(__file__).resolve().parent / "card_templates"
CITATION = """@inproceedings{cai2023hyper,
  title     = {HypeR: Multitask Hyper-Prompted Training Enables Large-Scale Retrieval Generalization},
  author    = {Cai and Tao and Shen and Xu and Geng and Lin and He and Jiang},
  booktitle = {The Eleventh International Conference on Learning Representations (ICLR)},
  year      = {2023},
  url       = {https://openreview.net/forum?id=kUf4BcWXGJr}
}"""
METHOD = """HypeR (Cai et al., ICLR 2023) trains one retriever on many retrieval tasks at once. The query encoder keeps
a small pool of N learned prompts. For every query a prompt synthesizer attends over the pool with the query's own
token embeddings and mixes the prompts into one **hyper-prompt**, which enters every layer of the query encoder as a
deep prefix (P-tuning v2 keys and values). No task id is needed at inference: the query decides its own mix. While
training, a contrastive prompt regularization (CPR) pulls the attention distributions of queries of the same task
together and pushes those of different tasks apart. Passages are encoded without prompt, so one passage index
serves every kind of query."""


def metric_type(metric: str) -> str:
    """results.json's metric key as a model-index metric type: 'ndcg@10' -> 'ndcg_at_10'."""
    return metric.replace("@", "_at_")


def eval_results(results: Mapping[str, Any]) -> list[EvalResult]:
    """One EvalResult per collection and metric of a results.json document, values unrounded."""
    settings = results["settings"]
    hub_ids = {src.rstrip("/").rsplit("/", 1)[-1]: src for src in settings.get("data", []) if not looks_local(src)}
    return [
        EvalResult(task_type=RETRIEVAL_TASK, task_name="Retrieval", dataset_type=hub_ids.get(name, name),
                   dataset_name=name, dataset_split=settings.get("split"), metric_type=metric_type(metric),
                   metric_name=label, metric_value=entry["metrics"][metric])
        for name, entry in results["collections"].items()
        for metric, label in METRICS.items()
        if metric in entry["metrics"]
    ]


def default_base_model(config: Any, train_config: Mapping[str, Any] | None) -> str | None:
    """The backbone's Hub id from the training config or the adapter's record; None when only a local path is known."""
    candidates = [(train_config or {}).get("model", {}).get("backbone"),
                  (config.hyper_prompt or {}).get("base_model_name_or_path")]
    return next((c for c in candidates if c and not looks_local(c)), None)


def default_datasets(train_config: Mapping[str, Any] | None,
                     licences: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Training collections given as Hub ids, and the Hub home of local ones' sources (BIG-bench for bbir)."""
    collections = (train_config or {}).get("data", {}).get("collections", [])
    hub = [c["path"] for c in collections if not looks_local(c["path"])]
    sources = {SOURCE_DATASETS[prefix] for meta in (licences or {}).values() for prefix in SOURCE_DATASETS
               if str(meta.get("source", "")).startswith(prefix)}
    return hub + sorted(sources - set(hub))


SOURCE_DATASETS = {"bigbench": "google/bigbench"}  # meta.json "source" prefix -> the data set's Hub id


def default_license(licences: Mapping[str, Mapping[str, str]]) -> str:
    """apache-2.0 (the code's), or "other" when a training collection is ShareAlike or research-only."""
    restrictive = any(("SA" in m.get("licence", "")) or ("research" in m.get("licence", "").lower())
                      for m in licences.values())
    return "other" if restrictive else "apache-2.0"


def prompt_summary(prompt: Mapping[str, Any] | None) -> str:
    """A hyper-prompt config (a dict) in words: the pool, its prompts' length and how they are mixed."""
    if prompt is None:
        return "no prompt (the multi-task baseline)"
    tokens = prompt["num_virtual_tokens"]
    length = f"{tokens} virtual token{'s' if tokens != 1 else ''}"
    if prompt["pool_size"] == 1:
        return f"one shared prefix of {length} (the single-prefix baseline)"
    return (f"a pool of {prompt['pool_size']} prompts of {length}, mixed per query "
            f"({prompt['synthesizer']} synthesizer, temperature {prompt['synthesizer_temperature']:g})")


def mteb_task_source() -> str:
    """hyper_retrieval/evaluation/mteb_task.py without its docstring: the card's MTEB example builds the task so."""
    return inspect.getsource(mteb_task).split('"""', 2)[2].strip()


SHORT_RUN = 1000  # optimizer steps under which the card calls the run a demonstration


def trained_on(train_config: Mapping[str, Any] | None) -> set[str] | None:
    """The names (last path part) of the collections the model was trained on; None without a training config."""
    if not train_config:
        return None
    return {str(c["path"]).rstrip("/").rsplit("/", 1)[-1] for c in train_config.get("data", {}).get("collections", [])}


def relabelled(results: Mapping[str, Any], trained: set[str] | None) -> dict[str, Any]:
    """results.json with each collection zero-shot exactly when the model was not trained on it (eval.py's flags
    say what the evaluation was told), and the averages recomputed."""
    if trained is None:
        return dict(results)
    collections = {name: {**c, "zero_shot": name not in trained} for name, c in results["collections"].items()}
    return {**results, "collections": collections, "averages": group_averages(collections)}


COLLAPSED_TOP_SHARE = 0.9  # over this share of queries on one prompt, the card says the pool collapsed


def results_section(results: Mapping[str, Any] | None, heatmap: str | None = None,
                    baseline: Mapping[str, Any] | None = None, metric: str = "ndcg@10") -> str:
    """The cards' results (card_templates/results.md): the collections, the metrics table, the comparison with
    `baseline` on `metric` (plainly where it wins), how the queries route over the pool (saying so when it
    collapsed) and the heat map."""
    context: dict[str, Any] = {"results": results, "baseline": baseline, "heatmap": heatmap,
                               "collapsed_top_share": COLLAPSED_TOP_SHARE}
    if results is not None:
        context["zero_shot"] = sorted(name for name, c in results["collections"].items() if c["zero_shot"])
        context["results_table"] = results_table(results)
        context["routing_groups"] = [(f"**{k.replace('_', '-')}**", v) for k, v in results.get("routing", {}).items()
                                     if k != "collections"]
    if results is not None and baseline is not None:
        context["baseline_name"] = str(baseline["settings"].get("model", "baseline"))
        context["metric_label"] = METRICS.get(metric, metric)
        context["baseline_rows"] = [
            (name, entry["metrics"][metric], baseline["collections"][name]["metrics"][metric])
            for name, entry in results["collections"].items()
            if metric in entry["metrics"] and metric in baseline["collections"].get(name, {}).get("metrics", {})]
    return jinja2.Template((TEMPLATES / "results.md").read_text()).render(**context)


def build_model_card(
    config: Any,
    results: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    heatmap: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    widget: Sequence[Mapping[str, Any]] | None = None,
    baseline: Mapping[str, Any] | None = None,
    licences: Mapping[str, Mapping[str, str]] | None = None,
) -> ModelCard:
    """The card of a model with `config` (a HyperConfig): metadata from the arguments and the run, body as above.

    `heatmap` is the heat map's path inside the repository; `base_model` and `datasets` default to the Hub ids
    found in the training config (and the source of local collections, from their meta.json in `licences`).
    Collections are labelled in-domain or zero-shot by the training config. `baseline` is another system's
    results.json on the same collections (BM25 in the same run). `license` defaults to apache-2.0, or "other" when
    a training collection's licence is ShareAlike or research-only.
    """
    model_name = repo_id.split("/")[-1] if repo_id else "hyper-retriever"
    results = relabelled(results, trained_on(train_config)) if results is not None else None
    licences = dict(licences or {})
    base_model = base_model or default_base_model(config, train_config)
    data = ModelCardData(
        license=license or default_license(licences),
        base_model=base_model,
        datasets=list(datasets) if datasets is not None else default_datasets(train_config, licences) or None,
        tags=TAGS,
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        model_name=model_name,
        eval_results=eval_results(results) if results else None,
        widget=[dict(example) for example in (widget or DEFAULT_WIDGET)],
    )
    return ModelCard.from_template(
        data, template_path=str(TEMPLATES / "model_card.md"), config=config, model_name=model_name,
        model_id=repo_id or "path/to/this/folder", base_model=base_model or "sentence-transformers/all-MiniLM-L6-v2",
        prompt=prompt_summary(config.hyper_prompt), method=METHOD, citation=CITATION,
        mteb_task_source=mteb_task_source(), max_request_tokens=MAX_REQUEST_TOKENS, max_request_chars=MAX_REQUEST_CHARS,
        train_config=train_config, short_run=SHORT_RUN, licences=licences,
        train_config_yaml=yaml.safe_dump(dict(train_config), sort_keys=False).rstrip() if train_config else "",
        results_section=results_section(results, heatmap, baseline))


ADAPTER_TAGS = ["hyper-prompt", "adapter", "hyper", "retrieval", "sentence-similarity"]
ADAPTER_LIBRARY = "hyper-retrieval"  # the adapter alone loads through this project's modeling_hyper, not a library
EXAMPLE_QUERY = "what causes the seasons on earth"


def build_adapter_card(
    prompt_config: Mapping[str, Any],
    *,
    size_bytes: int,
    trainable_parameters: int,
    results: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    subfolder: str | None = None,
    model_id: str | None = None,
    license: str | None = None,
    licences: Mapping[str, Mapping[str, str]] | None = None,
    datasets: Sequence[str] | None = None,
) -> ModelCard:
    """The card of a hyper-prompt adapter alone (its `prompt_config`, hyper_prompt_config.json as a dict).

    `size_bytes` is the size of its two files together, `trainable_parameters` the prompt modules' parameter count.
    `repo_id` is where the adapter is loaded from (a repository holding it at `subfolder`, or at its root), `model_id`
    the full model it belongs to, if published (the card of an adapter whose backbone trained points there).
    `results` (of the trained model) are shown as in the model card; `license` and `datasets` default as there.
    """
    backbone = prompt_config.get("base_model_name_or_path") or "<the backbone it was trained on>"
    name = (repo_id.split("/")[-1] if repo_id else "hyper-prompt-adapter")
    model_name = name if not subfolder else f"{name}-{subfolder}"
    results = relabelled(results, trained_on(train_config)) if results is not None else None
    licences = dict(licences or {})
    data = ModelCardData(
        license=license or default_license(licences),
        base_model=prompt_config.get("base_model_name_or_path") if not looks_local(backbone) else None,
        datasets=list(datasets) if datasets is not None else default_datasets(train_config, licences) or None,
        tags=ADAPTER_TAGS,
        library_name=ADAPTER_LIBRARY,
        pipeline_tag="sentence-similarity",
        model_name=model_name,
        eval_results=eval_results(results) if results else None,
    )
    source = repo_id or (f"path/to/the/exported/folder/{subfolder}" if subfolder else "path/to/this/folder")
    return ModelCard.from_template(
        data, template_path=str(TEMPLATES / "adapter_card.md"), model_name=model_name, adapter_name=name,
        backbone=backbone, frozen=prompt_config.get("backbone_frozen"), size_bytes=size_bytes,
        trainable_parameters=trainable_parameters, prompt=prompt_summary(prompt_config), source=source,
        snippet_subfolder=subfolder if repo_id else None, model_id=model_id, example_query=EXAMPLE_QUERY,
        config_name=ADAPTER_CONFIG_NAME, weights_name=ADAPTER_WEIGHTS_NAME, method=METHOD, citation=CITATION,
        results=results, results_section=results_section(results, None, baseline))
