"""The model card (README.md) of an exported retriever: Hub metadata and a body written from the run.

Metadata: license, base model, datasets, tags, library and pipeline tag, the eval.py results as a `model-index`
(one EvalResult per collection and metric, values exactly as in results.json) and sentence-similarity widget
examples. Body: the method, how to load the model (AutoModel, sentence-transformers, pipeline, the adapter, the
endpoint handler and the local widget page), the training settings, the results table and attention heat map,
limitations and the citation.

The adapter's own card (`build_adapter_card`, adapter/README.md or an adapter-only export): the backbone it needs,
whether that stayed frozen in training (only then does it load onto the plain backbone), its size and parameters, the
same results and a snippet that loads backbone + adapter.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

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


def _model_summary(config: Any) -> str:
    backbone = config.backbone_config
    kind = ("sparse (SPLADE: max over tokens of log(1 + relu(MLM logits)), one weight per vocabulary term)"
            if config.representation == "sparse" else
            f"dense ({config.pooling} pooling{', L2-normalised' if config.normalize else ''}, {backbone.hidden_size} "
            "dimensions)")
    prompt_line = prompt_summary(config.hyper_prompt)
    encoders = ("one encoder for queries and passages" if config.share_encoders
                else "separate query and passage encoders")
    return "\n".join([
        f"- backbone: {backbone.model_type}, {backbone.num_hidden_layers} layers, hidden size {backbone.hidden_size}",
        f"- representation: {kind}; score: dot product",
        f"- prompt: {prompt_line}",
        f"- {encoders}; texts truncated at {config.max_seq_length} tokens",
    ])


def _usage(model_id: str, config: Any, base_model: str) -> str:
    sparse = config.representation == "sparse"
    scores = "(q @ p.T).toarray()  # scipy CSR matrices" if sparse else "q @ p.T"
    adapter_note = (
        "The query backbone was frozen in training, so the adapter on the base model reproduces this model."
        if config.freeze_query_backbone else
        "The query backbone was trained too, so the adapter on the untrained base model is not this model; "
        "it is meant for inspection and for reuse on a backbone trained alongside it.")
    return f"""The architecture is custom code shipped in this repository (`modeling_hyper.py`,
`encoding_hyper.py`, `hyper_prompt.py`, `configuration_hyper.py`), so loading needs `trust_remote_code=True`: read
those files first.

**transformers**

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True)
q = model.encode_queries(["what causes the seasons on earth"])            # with the hyper-prompt
p = model.encode_corpus([{{"title": "Season", "text": "Axial tilt causes the seasons."}}])  # without prompt
scores = {scores}
model.prompt_attention(["what causes the seasons on earth"])  # (n, N): the query's mix over the prompt pool
```

**sentence-transformers**

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{model_id}", trust_remote_code=True)
q = model.encode_query(["what causes the seasons on earth"])      # with the hyper-prompt
d = model.encode_document(["Axial tilt causes the seasons."])    # without prompt
model.similarity(q, d)  # dot product
```

Plain `model.encode(...)` without a task is an error naming `encode_query` / `encode_document`: the two sides
differ, and a client that encodes both alike would give documents the query side.

**pipeline**

```python
from transformers import pipeline

extractor = pipeline("feature-extraction", model="{model_id}", trust_remote_code=True)
extractor("what causes the seasons on earth")  # [[...]]: the pooled query embedding, shape (1, d) per text
```

The pipeline returns the query side (with the hyper-prompt), the same vector as `encode_queries`; it does not
truncate unless called with `truncation=True`. Passages go through `encode_corpus` or `encode_document`.

**The hyper-prompt adapter alone** (`adapter/`: `hyper_prompt_config.json`, `hyper_prompt.safetensors`)

```python
from pathlib import Path

from huggingface_hub import snapshot_download
from modeling_hyper import HyperRetrieverModel  # pip install hyper-retrieval, or this repository's modeling_hyper.py

folder = "{model_id}" if Path("{model_id}").is_dir() else snapshot_download("{model_id}", allow_patterns=["adapter/*"])
base = HyperRetrieverModel.from_backbone("{base_model}")  # the backbone it was trained on
base.attach_adapter(f"{{folder}}/adapter")
```

{adapter_note}

An adapter trained with its query backbone frozen (`"backbone_frozen": true` in `hyper_prompt_config.json`) loads
beside others onto one backbone, `model.load_adapter(folder, adapter_name="...")`, chosen per call with
`model.encode_queries(texts, adapter="...")`; passages are encoded by the shared frozen backbone alone, so one passage
index serves every adapter. `adapter/README.md` is the adapter's own card: its backbone, size and how to load it.

**Evaluate with MTEB or BEIR.** MTEB calls `encode_query` and `encode_document`, so each side is read as in
training; for a local BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`) build the task from the files:

```python
{_mteb_snippet(model_id)}
```

An MTEB task by name downloads its data from the Hub: `mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))`.
Pass the `SentenceTransformer` object, not the id: `mteb.get_model` reads a Hub id's config without
`trust_remote_code`. BEIR's `DenseRetrievalExactSearch` takes the transformers model (it calls `encode_queries` /
`encode_corpus`, each side as in training); BEIR's `models.SentenceBERT` encodes both sides alike and gets the error
above:

```python
from beir.datasets.data_loader import GenericDataLoader
from beir.retrieval.evaluation import EvaluateRetrieval
from beir.retrieval.search.dense import DenseRetrievalExactSearch
from transformers import AutoModel

model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True)
corpus, queries, qrels = GenericDataLoader("path/to/beir/folder").load(split="test")
retriever = EvaluateRetrieval(DenseRetrievalExactSearch(model, batch_size=64), score_function="dot", k_values=[10])
ndcg, _map, recall, precision = retriever.evaluate(qrels, retriever.retrieve(corpus, queries), [10])
print(ndcg["NDCG@10"])
```

**Inference Endpoints and a local page.** `handler.py` (an `EndpointHandler`) answers the sentence-similarity
payload `{{"inputs": {{"source_sentence": "...", "sentences": ["...", "..."]}}}}` with one score per sentence, and
`{{"inputs": "text" or ["...", "..."], "parameters": {{"task": "query" or "document"}}}}` with embeddings. A request
reads at most {MAX_REQUEST_TOKENS:,} tokens and holds at most {MAX_REQUEST_CHARS:,} characters, all texts together
(a query counts up to its query length, an embedded document up to {config.max_seq_length} tokens, a scored passage
whole); beyond that it is answered with an error and status 413. The largest allowed request took under 15 s on 2
CPU cores. In a download of this repository, `python widget.py` serves a page at http://127.0.0.1:8000/ where you
type a query and passages and see the scores and the query's prompt attention."""


def _mteb_snippet(model_id: str) -> str:
    """hyper_retrieval/evaluation/mteb_task.py without its docstring, then its use on this model."""
    source = inspect.getsource(mteb_task).split('"""', 2)[2].strip()
    return f"""import mteb
from sentence_transformers import SentenceTransformer

{source}


model = SentenceTransformer("{model_id}", trust_remote_code=True)
result = mteb.evaluate(model, beir_folder_task("path/to/beir/folder", "test"), cache=None)
print(result[0].scores["test"][0]["ndcg_at_10"])"""


SHORT_RUN = 1000  # optimizer steps under which the card calls the run a demonstration


def _training(train_config: Mapping[str, Any] | None, licences: Mapping[str, Mapping[str, str]]) -> str:
    if not train_config:
        return "No training configuration was exported with this model."
    collections = [c.get("path") for c in train_config.get("data", {}).get("collections", [])]
    optim, train = train_config.get("optim", {}), train_config.get("train", {})
    steps = optim.get("max_steps")
    length = (f"{steps} optimizer steps" if steps else f"{optim.get('epochs', '?')} epochs") + (
        f" of {train['batch_size']} queries" if train.get("batch_size") else "")
    lines = ["Trained with this project's `train.py`"
             + (f" on {len(collections)} collections: " + ", ".join(f"`{c}`" for c in collections) if collections
                else "") + f", for {length}."]
    if steps and steps < SHORT_RUN:
        lines += ["", f"**This is a short run ({steps} steps): a demonstration of the pipeline, not a converged "
                  "model.**"]
    if licences:
        lines += ["", "Training data and their licences (the weights are derived from them; check ShareAlike and "
                  "research-only terms before you redistribute):", "", "| collection | source | licence |",
                  "|---|---|---|"]
        lines += [f"| {name} | {m.get('source', '')} | {m.get('licence', 'unknown')} |" for name, m in licences.items()]
    config_yaml = yaml.safe_dump(dict(train_config), sort_keys=False).rstrip()
    lines += ["", "The full configuration:", "", "```yaml", config_yaml, "```"]
    return "\n".join(lines)


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


def _results(results: Mapping[str, Any] | None, heatmap: str | None,
             baseline: Mapping[str, Any] | None = None) -> str:
    if results is None:
        return "No evaluation results were exported with this model."
    settings = results["settings"]
    zero_shot = sorted(name for name, c in results["collections"].items() if c["zero_shot"])
    parts = [f"Measured with this project's `eval.py` on the {settings.get('split')} split, "
             f"top {settings.get('k')} passages per query"
             + (f"; zero-shot (never trained on): {', '.join(zero_shot)}" if zero_shot else "") + ".", "",
             "| collection | trained on | test queries | documents searched |", "|---|---|---|---|"]
    parts += [f"| {name} | {'no' if c['zero_shot'] else 'yes'} | {c.get('info', {}).get('num_queries', '?')} | "
              f"{c.get('info', {}).get('num_docs', '?')} |" for name, c in results["collections"].items()]
    parts += ["", results_table(results)]
    if baseline is not None:
        parts += ["", baseline_comparison(results, baseline)]
    if "routing" in results:
        top = results["routing"].get("all", {}).get("top_share", 0.0)
        if top >= COLLAPSED_TOP_SHARE:
            parts += ["", f"**The prompt pool collapsed in this model: {100 * top:.0f}% of queries weigh one prompt "
                      "most, so it behaves as a single shared prefix rather than mixing prompts per query.**"]
        parts += ["", routing_table(results["routing"])]
    if heatmap:
        parts += ["", "Mean prompt attention of the queries of each collection (rows) over the prompt pool (columns):",
                  "", f"![mean prompt attention per collection]({heatmap})"]
    return "\n".join(parts)


def baseline_comparison(results: Mapping[str, Any], baseline: Mapping[str, Any], metric: str = "ndcg@10") -> str:
    """This model against a baseline evaluated on the same collections (e.g. BM25 in the same run): a table, and
    plainly where the baseline wins."""
    name = str(baseline["settings"].get("model", "baseline"))
    label = METRICS.get(metric, metric)
    lines = [f"Against {name} on the same collections ({label}):", "", f"| collection | this model | {name} |",
             "|---|---|---|"]
    wins = []
    for collection, entry in results["collections"].items():
        theirs = baseline["collections"].get(collection, {}).get("metrics", {}).get(metric)
        ours = entry["metrics"].get(metric)
        if theirs is None or ours is None:
            continue
        lines.append(f"| {collection} | {ours:.4f} | {theirs:.4f} |")
        if theirs > ours:
            wins.append(f"{collection} ({theirs:.4f} vs {ours:.4f})")
    if wins:
        lines += ["", f"**{name} beats this model on {len(wins)} of {len(lines) - 4} collections: "
                  + ", ".join(wins) + ".**"]
    else:
        lines += ["", f"This model scores at least as well as {name} on every collection."]
    return "\n".join(lines)


def routing_table(routing: Mapping[str, Any]) -> str:
    """How the queries use the prompt pool (hyper_retrieval.evaluation.routing): per collection, then over the
    collections."""
    lines = ["How the queries route over the prompt pool: mean entropy / ln N (0: one prompt per query, 1: uniform), "
             "the share of queries on the commonest top prompt (1: the pool collapsed onto one prompt), the mutual "
             "information between collection and top prompt over H(collection) (0: the top prompt says nothing about "
             "the collection), and the share of logit variance common to all queries.", "",
             "| queries | entropy / ln N | on the commonest top prompt | MI(collection; top prompt) / H | "
             "common logit variance |", "|---|---|---|---|---|"]
    rows = {**routing["collections"], **{f"**{k.replace('_', '-')}**": v for k, v in routing.items()
                                         if k != "collections"}}
    for name, d in rows.items():
        mi = f"{d['task_mi']:.3f}" if d.get("task_mi") is not None else "—"
        lines.append(f"| {name} | {d['entropy']:.3f} | {d['top_share']:.3f} | {mi} | {d['common_variance']:.3f} |")
    return "\n".join(lines)


LIMITATIONS = """- Custom code: loading runs this repository's Python files (`trust_remote_code=True`). The hosted
  inference widget may refuse custom-code models; use `handler.py` on Inference Endpoints or the local `widget.py`.
- The deep prefix goes through transformers' attention interface (checked with transformers 5.x) and needs a
  BERT-family backbone; a change in that interface can break the prompt injection.
- The scores above come from the collections listed, with this project's evaluation; they are not the paper's
  numbers, and retrieval quality on other domains is unmeasured.
- The model inherits the language coverage and biases of its backbone and training data."""


def card_body(config: Any, model_name: str, model_id: str, results: Mapping[str, Any] | None,
              train_config: Mapping[str, Any] | None, heatmap: str | None,
              baseline: Mapping[str, Any] | None = None, licences: Mapping[str, Mapping[str, str]] | None = None,
              base_model: str | None = None) -> str:
    """The Markdown below the metadata."""
    return "\n\n".join([
        f"# {model_name}",
        "A multi-task retriever trained with HypeR's hyper-prompts, exported by hyper-retrieval (an open, "
        "Hub-native implementation of the ICLR 2023 paper).",
        _model_summary(config),
        "## Method", METHOD,
        "## How to use", _usage(model_id, config, base_model or "sentence-transformers/all-MiniLM-L6-v2"),
        "## Training", _training(train_config, licences or {}),
        "## Results", _results(results, heatmap, baseline),
        "## Limitations", LIMITATIONS,
        "## Citation", f"```bibtex\n{CITATION}\n```",
    ]) + "\n"


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
    body = card_body(config, model_name, repo_id or "path/to/this/folder", results, train_config, heatmap, baseline,
                     licences, base_model)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


ADAPTER_TAGS = ["hyper-prompt", "adapter", "hyper", "retrieval", "sentence-similarity"]
ADAPTER_LIBRARY = "hyper-retrieval"  # the adapter alone loads through this project's modeling_hyper, not a library
EXAMPLE_QUERY = "what causes the seasons on earth"


def _adapter_snippet(backbone: str, source: str, subfolder: str | None, adapter_name: str) -> str:
    """Backbone + adapter: from a folder or Hub repository `source` holding the adapter, or its `subfolder`."""
    where = f', subfolder="{subfolder}"' if subfolder else ""
    lines = ["from modeling_hyper import HyperRetrieverModel  # this project's model code (or the files of any export)",
             "", f'model = HyperRetrieverModel.from_backbone("{backbone}")',
             "# or: model = AutoModel.from_pretrained(<a saved HypeR model of this backbone>, trust_remote_code=True)",
             f'model.load_adapter("{source}"{where}, adapter_name="{adapter_name}")  # a Hub repository or a folder']
    lines += [f'q = model.encode_queries(["{EXAMPLE_QUERY}"], adapter="{adapter_name}")  # with this hyper-prompt',
              'p = model.encode_corpus([{"title": "Season", "text": "Axial tilt causes the seasons."}])  '
              "# the backbone alone",
              "scores = q @ p.T"]
    return "```python\n" + "\n".join(lines) + "\n```"


def _adapter_use(prompt: Mapping[str, Any], backbone: str, source: str, subfolder: str | None, adapter_name: str,
                 model_id: str | None) -> str:
    frozen = prompt.get("backbone_frozen")
    if frozen is True:
        return "\n\n".join([
            f"The backbone `{backbone}` stayed frozen while this adapter trained, so the adapter on the plain backbone "
            "is the trained model. Load it beside other adapters of the same backbone and choose one per call; "
            "passages are encoded by the backbone alone, so one passage index serves every adapter.",
            _adapter_snippet(backbone, source, subfolder, adapter_name),
            "`load_adapter` refuses another backbone, naming both; `model.set_adapter(name)` makes an adapter the "
            "default for `encode_queries`."])
    why = ("was trained together with this adapter" if frozen is False else
           "may have trained with it: the adapter does not record whether it stayed frozen")
    whole = (f'AutoModel.from_pretrained("{model_id}", trust_remote_code=True)' if model_id else
             'AutoModel.from_pretrained("<the HypeR model this adapter was exported from>", trust_remote_code=True)')
    return "\n\n".join([
        f"**This adapter only works on its own trained model.** The query backbone {why}, so it needs its own "
        f"backbone: on the plain `{backbone}` it is not the trained model, and `load_adapter` refuses it. Load the "
        "full model instead:",
        f"```python\nfrom transformers import AutoModel\n\nmodel = {whole}\n"
        f'q = model.encode_queries(["{EXAMPLE_QUERY}"])  # this hyper-prompt on its own backbone\n```',
        "The adapter alone is for inspecting the prompt pool, or `attach_adapter` onto that same full model."])


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
    frozen = {True: "yes", False: "no (the backbone trained too)", None: "not recorded"}[
        prompt_config.get("backbone_frozen")]
    source = repo_id or (f"path/to/the/exported/folder/{subfolder}" if subfolder else "path/to/this/folder")
    body = "\n\n".join([
        f"# {model_name}",
        "A HypeR hyper-prompt adapter alone: the prompt pool and its synthesizer, without the backbone "
        f"(`{ADAPTER_CONFIG_NAME}`, `{ADAPTER_WEIGHTS_NAME}`), exported by hyper-retrieval.",
        "\n".join([
            f"- backbone it needs: `{backbone}` (`base_model_name_or_path` in `{ADAPTER_CONFIG_NAME}`)",
            f"- trained with the query backbone frozen: {frozen}",
            f"- size: {size_bytes:,} bytes ({ADAPTER_CONFIG_NAME} + {ADAPTER_WEIGHTS_NAME}); "
            f"{trainable_parameters:,} parameters",
            f"- prompt: {prompt_summary(prompt_config)}",
        ]),
        "## How to use", _adapter_use(prompt_config, backbone, source, subfolder if repo_id else None, name,
                                      model_id),
        "## Method", METHOD,
        "## Results", ("The model this adapter was trained in (its backbone with this hyper-prompt). "
                       if results is not None else "") + _results(results, None, baseline),
        "## Citation", f"```bibtex\n{CITATION}\n```",
    ]) + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
