"""The benchmark protocol file and its report (scripts/protocol.py, hyper_retrieval/protocol*.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.adapter_report import write_adapter_report
from experiments.epoch_report import write_epoch_report
from experiments.protocol import load_protocol, model_folder
from experiments.report import BEGIN, END, seeds_table, write_report
from hyper_retrieval.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "configs" / "bbir-protocol.yaml"


def test_every_run_of_the_protocol_has_a_valid_config():
    protocol, runs = load_protocol(PROTOCOL)
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    assert {"multitask-seed43", "hyper-seed44"} <= set(names)
    hyper = [r for r in runs if r.base == "hyper"]
    assert [(r.name, r.seed, r.primary) for r in hyper] == [("hyper", 42, True), ("hyper-seed43", 43, False),
                                                             ("hyper-seed44", 44, False)]
    for run in runs:
        if run.config is None:
            continue
        config = load_config(REPO / run.config, [*protocol["profiles"]["cpu"], *run.overrides,
                                                 f"model.passage_windows={run.windows}"])  # as scripts/protocol.py
        trained_on = {Path(c.path).name for c in config.data.collections}
        if run.held_out:  # leave-one-out: trained on exactly the other in-domain collections
            assert trained_on == set(protocol["in_domain"]) - {run.held_out}, run.name
        else:
            assert trained_on == set(run.in_domain or protocol["in_domain"]), run.name
        assert not trained_on & set(protocol["zero_shot"])
    assert {r.name for r in runs if r.windows == "max"} == {"backbone-maxp", "multitask-maxp", "hyper-maxp",
                                                             "multitask-read-maxp", "hyper-read-maxp"}
    assert {r.name for r in runs if r.hybrid and r.primary} >= {"backbone", "hyper", "hyper-maxp"}


def test_the_adapter_regime_freezes_the_query_backbone_and_evaluates_in_float32():
    """hyper-frozen, prefix-frozen and the task-prompt oracle train only their prompt modules; their profile trains
    and evaluates in float32 on any CPU, as the one-epoch reference runs did."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("protocol_script", REPO / "scripts" / "protocol.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    protocol, runs = load_protocol(PROTOCOL)
    adapter = {r.name: r for r in runs if r.table == "adapter"}
    assert {r.base for r in adapter.values()} == {"hyper-frozen", "prefix-frozen", "task-prompts-frozen"}
    assert all(r.pooled for r in adapter.values()) and len(adapter) == 9
    prompts = {}
    for run in adapter.values():
        config = load_config(REPO / run.config, protocol["profiles"]["cpu-epoch-fp32"])
        assert config.model.freeze_query_backbone and config.optim.mixed_precision == "no"
        assert config.optim.max_steps is None and config.optim.epochs == 1
        prompts[run.base] = (config.model.prompt, config.model.synthesizer)
    assert prompts == {"hyper-frozen": ("hyper", "cosine"), "prefix-frozen": ("prefix", "cosine"),
                       "task-prompts-frozen": ("task", "cosine")}
    assert script.eval_dtype(protocol["profiles"]["cpu-epoch-fp32"]) == "float32"
    assert script.eval_dtype(protocol["profiles"]["cpu-epoch"]) == "auto"  # as before: the machine's choice


def test_a_run_from_another_evaluates_that_runs_model_and_trains_nothing(tmp_path):
    _, runs = load_protocol(PROTOCOL)
    read = {r.name: r for r in runs}["hyper-read-maxp"]
    assert (read.source, read.seed, read.config, read.windows, read.hybrid) == ("hyper", None, None, "max", True)
    assert model_folder(read, tmp_path) == str(tmp_path / "hyper" / "final")
    (tmp_path / "hyper" / "best").mkdir(parents=True)  # dev selection kept a model: that one
    assert model_folder(read, tmp_path) == str(tmp_path / "hyper" / "best")
    assert model_folder({r.name: r for r in runs}["backbone"], tmp_path) == str(tmp_path / "backbone" / "model")


HEAD = "data_root: x\nin_domain: []\nzero_shot: []\noutput_root: o\nprofiles: {}\n"


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected a mapping of protocol keys, got NoneType"),
    (HEAD + "runs:\n  - {name: a, config: c}\n  - {name: b, from: a, seeds: [43]}\n",
     r"runs\[1\]: a run 'from' another .* no config, model, seeds"),
    (HEAD + "runs:\n  - {name: a, config: c}\n  - {name: b, from: z}\n", "run 'b': from 'z': no trained run"),
    ("data_root: x\nin_domain: []\nzero_shot: []\nprofiles: {}\nruns: []\n", "missing key 'output_root'"),
    (HEAD + "runs:\n  - {name: a, confg: b}\n", r"runs\[0\].*unknown \['confg'\]"),
])
def test_a_broken_protocol_file_is_named(tmp_path, text, message):
    path = tmp_path / "protocol.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        load_protocol(path)


def results_with(in_domain: float, zero_shot: float) -> dict:
    return {"averages": {"in_domain": {"ndcg@10": in_domain}, "zero_shot": {"ndcg@10": zero_shot}}}


def test_seeds_table_means_spreads_and_difference():
    _, runs = load_protocol(PROTOCOL)
    base, system = [0.50, 0.52, 0.51], [0.53, 0.52, 0.55]
    results = {name: results_with(v, v / 2) for prefix, values in (("multitask", base), ("hyper", system))
               for name, v in zip([prefix, f"{prefix}-seed43", f"{prefix}-seed44"], values, strict=True)}
    table = seeds_table(results, runs, ["multitask", "hyper"], [("hyper", "multitask"), ("hyper", "prefix")])
    assert f"| **hyper, mean ± std** | 3 | {100 * np.mean(system):.2f} ± {100 * np.std(system, ddof=1):.2f} |" in table
    assert f"| **hyper − multitask** | | {100 * (np.mean(system) - np.mean(base)):+.2f} |" in table
    assert "hyper − prefix" not in table  # prefix has no results


def test_report_keeps_the_hand_written_text(tmp_path):
    protocol, runs = load_protocol(PROTOCOL)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "RESULTS.md").write_text(f"# Results\nprotocol text\n{BEGIN}\nold tables\n{END}\nthe reading\n")
    root = tmp_path / "outputs"
    for name, value in (("bm25", 0.4), ("hyper", 0.5)):
        (root / "eval" / name).mkdir(parents=True)
        collections = {"qasc": {"zero_shot": False, "metrics": {"ndcg@10": value, "recall@100": 0.9}, "info": {}}}
        (root / "eval" / name / "results.json").write_text(json.dumps(
            {"settings": {}, "collections": collections, "averages": {"in_domain": {"ndcg@10": value}}}))
    text = write_report(protocol, runs, root, docs).read_text()
    assert text.startswith("# Results\nprotocol text\n") and text.endswith(f"{END}\nthe reading\n")
    assert "old tables" not in text and "| qasc | 0.4000 | 0.5000 |" in text
    assert (docs / "results" / "ndcg_by_collection.png").is_file()
    (docs / "RESULTS.md").write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        write_report(protocol, runs, root, docs)


def test_report_shows_routing_from_saved_attention_and_logs(tmp_path):
    """A run whose queries route by task shows MI 1 in the routing table and its logged range after warm-up."""
    protocol, runs = load_protocol(PROTOCOL)
    root, docs = tmp_path / "outputs", tmp_path / "docs"
    tasks = ["nq_ckc", "qasc", "ropes"]
    folder = root / "eval" / "hyper"
    folder.mkdir(parents=True)
    collections = {t: {"zero_shot": t == "ropes", "metrics": {"ndcg@10": 0.5, "recall@100": 0.9}, "info": {}}
                   for t in tasks}
    (folder / "results.json").write_text(json.dumps({"settings": {}, "collections": collections, "averages": {
        "in_domain": {"ndcg@10": 0.5}, "zero_shot": {"ndcg@10": 0.5}}}))
    np.save(folder / "attention.npy", np.array([[0.9, 0.05, 0.05]] * 2 + [[0.05, 0.9, 0.05]] * 2 + [[0.1, 0.8, 0.1]]))
    (folder / "attention_tasks.json").write_text(json.dumps(["nq_ckc"] * 2 + ["qasc"] * 2 + ["ropes"]))
    (root / "hyper").mkdir()
    (root / "hyper" / "train_config.yaml").write_text("optim: {max_steps: 100, warmup_ratio: 0.1, warmup_steps: null}")
    log = [{"step": s, "routing/task_mi": mi, "routing/top_share": 0.5, "routing/entropy": 0.3}
           for s, mi in ((5, 0.0), (20, 0.4), (40, 0.6))]
    (root / "hyper" / "log.jsonl").write_text("\n".join(map(json.dumps, log)))
    text = write_report(protocol, runs, root, docs).read_text()
    assert "| hyper | 3 | in-domain | 0.3590 | 0.500 | 1.000 | 0.250 |" in text  # entropy, top share, MI, common
    assert "| hyper | 3 | all | " in text
    assert "| hyper | 2 (of 3) | 0.400 – 0.600 (0.600) | 0.500 (0.500) |" in text  # step 5 is in the warm-up
    assert "| ropes (zero-shot) | 0.100 | 0.800 | 0.100 | 1 (1.00) | qasc (" in text
    assert (docs / "results" / "routing_curves.png").is_file()


def write_eval(folder: Path, collections: dict[str, tuple[bool, float]], **extra) -> dict:
    """A results.json of {collection: (zero_shot, nDCG@10)} with its group averages (as eval.py writes them)."""
    groups = {"in_domain": [v for z, v in collections.values() if not z],
              "zero_shot": [v for z, v in collections.values() if z], "all": [v for _, v in collections.values()]}
    results = {"settings": {}, "collections": {
        name: {"zero_shot": z, "metrics": {"ndcg@10": v, "r_precision": v / 2}, "info": {}}
        for name, (z, v) in collections.items()},
        "averages": {g: {"ndcg@10": float(np.mean(v)), "r_precision": float(np.mean(v)) / 2}
                     for g, v in groups.items() if v}, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return results


def test_report_shows_long_passages_and_hybrid_rows_and_their_targets(tmp_path):
    protocol, runs = load_protocol(PROTOCOL)
    root, docs = tmp_path / "outputs", tmp_path / "docs"
    scores = {"bm25": (0.60, 0.80), "backbone": (0.50, 0.70), "backbone-maxp": (0.58, 0.74),
              "hyper-maxp": (0.59, 0.76)}
    for name, (in_domain, zero_shot) in scores.items():
        write_eval(root / "eval" / name, {"quoref": (False, in_domain + 0.12), "qasc": (False, in_domain - 0.12),
                                          "ropes": (True, zero_shot)})
        write_eval(root / "eval-pooled" / name, {"quoref": (False, in_domain), "qasc": (False, in_domain)})
    rrf = write_eval(tmp_path / "rrf", {"quoref": (False, 0.61), "ropes": (True, 0.81)})
    hybrid = {"with": "bm25", "fusion": "convex", "weight": 0.35, "variants": {"rrf": rrf}}
    write_eval(root / "eval-bm25" / "hyper-maxp", {"quoref": (False, 0.70), "qasc": (False, 0.60),
                                                   "ropes": (True, 0.82)}, hybrid=hybrid)
    rrf_pooled = write_eval(tmp_path / "rrf-pooled", {"quoref": (False, 0.61), "qasc": (False, 0.61)})
    write_eval(root / "eval-pooled-bm25" / "hyper-maxp", {"quoref": (False, 0.64), "qasc": (False, 0.64)},
               hybrid=hybrid | {"variants": {"rrf": rrf_pooled}})
    text = write_report(protocol, runs, root, docs).read_text()
    assert "| backbone-maxp | MaxP | — | 58.00 | 74.00 | 58.00 | 29.00 | |" in text
    assert "| hyper-maxp + BM25 | MaxP | convex | 65.00 | 82.00 | 64.00 | 32.00 | 0.35 |" in text
    assert "| hyper-maxp + BM25 | MaxP | RRF (k = 60) | 61.00 | 81.00 | 61.00 | 30.50 | |" in text
    assert "| untrained MiniLM, MaxP: quoref nDCG@10 >= 0.70 | 0.7000 | yes |" in text
    assert "| best dense MaxP in-domain avg within 3 points of BM25 | 1.00 points behind | yes |" in text
    assert "| hyper-maxp + BM25 beats BM25 by >= 3 nDCG@10 points, in-domain | +5.00 | yes |" in text
    assert "| hyper-maxp + BM25 beats BM25 by >= 3 nDCG@10 points, zero-shot | +2.00 | **no** |" in text
    assert "| hyper-maxp + BM25 beats BM25 by >= 3 nDCG@10 points, pooled | +4.00 | yes |" in text


def write_seeded_eval(folder: Path, per_query: dict[str, tuple[bool, list[float]]]) -> None:
    """results.json and per_query.json of {collection: (zero_shot, per-query nDCG@10)}, averages as eval.py takes
    them (a collection's metric is its queries' mean)."""
    write_eval(folder, {name: (z, float(np.mean(v))) for name, (z, v) in per_query.items()})
    (folder / "per_query.json").write_text(json.dumps(
        {name: {f"q{i}": {"ndcg@10": x} for i, x in enumerate(v)} for name, (_, v) in per_query.items()}))


def test_epoch_report_tests_the_seeds_pairwise_and_draws_the_curve(tmp_path):
    protocol, runs = load_protocol(PROTOCOL)
    root, shorter, docs = tmp_path / "epoch", tmp_path / "short", tmp_path / "docs"
    # per seed: in-domain c (3 queries), zero-shot z (2 queries)
    values = {"hyper": ([0.6, 0.5, 0.4], [0.8, 0.5]), "hyper-seed43": ([0.6, 0.5, 0.4], [0.6, 0.5]),
              "multitask": ([0.5, 0.5, 0.5], [0.5, 0.4]), "multitask-seed43": ([0.5, 0.5, 0.5], [0.5, 0.4])}
    for name, (c, z) in values.items():
        write_seeded_eval(root / "eval" / name, {"c": (False, c), "z": (True, z)})
        (root / name).mkdir(parents=True)
        log = ({"step": 1110, "dev/ndcg@10": 0.5}, {"step": 3330, "loss/total": 1.0},
               {"step": 3330, "dev/ndcg@10": 0.52})
        (root / name / "log.jsonl").write_text("\n".join(map(json.dumps, log)))
        (root / name / "protocol.json").write_text(json.dumps({"profile": "cpu-epoch", "train_s": 600}))
    for name, z in (("hyper", 0.52), ("multitask", 0.50)):  # a shorter run without per-query values
        write_eval(shorter / "eval" / name, {"c": (False, 0.5), "z": (True, z)})
        (shorter / name).mkdir(parents=True)
        (shorter / name / "log.jsonl").write_text(json.dumps({"step": 300}) + "\n")
    docs.mkdir()
    (docs / "RESULTS.md").write_text(f"# Results\n{BEGIN}\nmain tables\n{END}\nthe reading\n")

    text = write_epoch_report(protocol, runs, root, docs, [(shorter, "hyper", "multitask")]).read_text()
    assert text.startswith(f"# Results\n{BEGIN}\nmain tables\n{END}\nthe reading\n")  # the main section untouched
    assert "### The main systems over seeds, 3330 steps" in text
    assert "| **hyper** | mean ± std (2) | 50.00 ± 0.00 | 60.00 ± 7.07 |" in text
    # zero-shot: per query, hyper (0.7, 0.5) and multitask (0.5, 0.4) over the seeds: differences 0.2 and 0.1; of
    # the 4 sign assignments, 2 reach |0.15|; the bootstrap's percentile interval spans 0.1 .. 0.2. Over seeds:
    # +20 and +10, t = 15 / 5 = 3 on one degree of freedom (Cauchy): p = 1 - 2 atan(3) / pi = 0.2048, the interval
    # 15 ± 5 tan(0.475 pi) = 15 ± 63.53
    assert ("| hyper − multitask | zero-shot | +15.00 | +20.00 (42) / +10.00 (43) | [-48.53, +78.53] | 0.2048 | "
            "+15.00 | [+10.00, +20.00] | 0.5000 | 2 |") in text
    assert "| hyper − multitask | in-domain | +0.00 |" in text
    assert ("| hyper beats multitask by >= 1.0 nDCG@10 points zero-shot (p < 0.05) | +15.00, p = 0.5000 (queries), "
            "p = 0.2048 (2 seeds) | **no** |") in text  # large but significant neither on two queries nor two seeds
    assert "| 300 | hyper − multitask | 1 | +0.00 | +2.00 |" in text
    assert "| 3330 | hyper − multitask | 2 | +0.00 (p = 1.0000) | +15.00 (p = 0.5000) |" in text
    assert (docs / "results" / "epoch_gap_curve.png").is_file()
    assert "| hyper-seed43 | cpu-epoch | 3330 | 50.00 (1110) / 52.00 (3330) | 10.0 |  |  |  |  |  |" in text
    again = write_epoch_report(protocol, runs, root, docs, [(shorter, "hyper", "multitask")]).read_text()
    assert again == text  # the section is replaced, not added twice


def test_epoch_report_shows_the_first_seed_read_with_maxp_and_fused_with_bm25(tmp_path):
    protocol, runs = load_protocol(PROTOCOL)
    root, docs = tmp_path / "epoch", tmp_path / "docs"
    for name, (c, z) in {"hyper": ([0.6, 0.4], [0.7]), "multitask": ([0.5, 0.5], [0.6])}.items():
        write_seeded_eval(root / "eval" / name, {"c": (False, c), "z": (True, z)})
    for name, (in_domain, zero_shot) in {"bm25": (0.40, 0.50), "hyper-read-maxp": (0.56, 0.72)}.items():
        write_eval(root / "eval" / name, {"c": (False, in_domain), "z": (True, zero_shot)})
    rrf = write_eval(tmp_path / "rrf", {"c": (False, 0.58), "z": (True, 0.70)})
    write_eval(root / "eval-bm25" / "hyper-read-maxp", {"c": (False, 0.60), "z": (True, 0.74)},
               hybrid={"with": "bm25", "fusion": "convex", "weight": 0.6, "variants": {"rrf": rrf}})
    (root / "hyper-read-maxp" / "protocol.json").parent.mkdir()
    (root / "hyper-read-maxp" / "protocol.json").write_text(json.dumps(
        {"profile": "cpu-epoch", "eval_s": 120, "eval-bm25_s": 300, "eval_machine": "CPU (x86_64, 2 cores)"}))
    docs.mkdir()

    text = write_epoch_report(protocol, runs, root, docs).read_text()
    table = text.split("### Long passages (MaxP) and BM25 fusion, the first seed")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| bm25 | whole passage | — | 40.00 | 50.00 |  |  | |",
                    "| multitask | FirstP | — | 50.00 | 60.00 |  |  | |",
                    "| hyper | FirstP | — | 50.00 | 70.00 |  |  | |",
                    "| hyper-read-maxp | MaxP | — | 56.00 | 72.00 |  |  | |",
                    "| hyper-read-maxp + BM25 | MaxP | convex | 60.00 | 74.00 |  |  | 0.6 |",
                    "| hyper-read-maxp + BM25 | MaxP | RRF (k = 60) | 58.00 | 70.00 |  |  | |"]
    assert "multitask-read-maxp" not in text  # not evaluated: no row (the rows above are all there are)
    assert "over training length" not in text  # no log, no length: no point on the curve
    # an evaluation-only run: its evaluations' wall times, no training, the machine it was evaluated on
    assert "| hyper-read-maxp | cpu-epoch |  |  |  | 2.0 |  | 5.0 |  | CPU (x86_64, 2 cores) |" in text


def test_adapter_report_tests_the_frozen_systems_and_sizes_their_adapters(tmp_path, minilm_path):
    """The adapter section: seeds, paired tests and targets of the frozen systems against one prompt and multi-task,
    each adapter's size (rebuilt from its config: equal to a saved adapter's files), routing at each dev evaluation."""
    from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

    protocol, runs = load_protocol(PROTOCOL)
    root, docs = tmp_path / "epoch", tmp_path / "docs"
    configs = {"hyper-frozen": "bbir-hyper-frozen", "prefix-frozen": "bbir-prefix-frozen",
               "multitask": "bbir-multitask"}
    values = {"hyper-frozen": ([0.6, 0.5], [0.8, 0.6]), "prefix-frozen": ([0.6, 0.5], [0.6, 0.5]),
              "multitask": ([0.7, 0.6], [0.6, 0.5])}
    for base, (c, z) in values.items():
        config = load_config(REPO / "configs" / f"{configs[base]}.yaml", protocol["profiles"]["cpu-epoch-fp32"])
        for seed, shift in ((42, 0.0), (43, 0.05)):
            name = base if seed == 42 else f"{base}-seed{seed}"
            write_seeded_eval(root / "eval" / name, {"c": (False, [v + shift for v in c]), "z": (True, z)})
            (root / name).mkdir(parents=True)
            (root / name / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict()))
            log = [{"step": 1100, "queries_per_s": 64.0 if "frozen" in base else 32.0, "routing/task_mi": 0.4,
                    "routing/top_share": 0.5, "routing/entropy": 0.7}, {"step": 1110, "dev/ndcg@10": 0.5 + shift}]
            (root / name / "log.jsonl").write_text("\n".join(map(json.dumps, log)))
            (root / name / "protocol.json").write_text(json.dumps({"profile": "cpu-epoch-fp32", "train_s": 600}))
    text = write_adapter_report(protocol, runs, root, docs).read_text()
    assert "| **hyper-frozen** | mean ± std (2) | 57.50 ± 3.54 | 70.00 ± 0.00 |" in text
    assert "| hyper-frozen − prefix-frozen | zero-shot | +15.00 | +15.00 (42) / +15.00 (43) |" in text
    assert "| hyper-frozen not below prefix-frozen in-domain | +0.00 | yes |" in text
    assert "| hyper-frozen within 1.0 of multitask in-domain | -10.00 | **no** |" in text
    frozen = HyperRetrieverModel.from_backbone(minilm_path, hyper_prompt=HyperPromptConfig(),
                                               freeze_query_backbone=True, share_encoders=False,
                                               freeze_passage_encoder=True)
    frozen.save_adapter(tmp_path / "adapter")
    size = sum(f.stat().st_size for f in (tmp_path / "adapter").iterdir())
    parameters = sum(p.numel() for p in frozen.hyper_prompt.parameters())
    costs = text.split("### Size and speed of each system")[1].split("###")[0]
    row = next(line for line in costs.splitlines() if line.startswith("| hyper-frozen |")).split(" | ")
    assert abs(int(row[1].replace(",", "")) - size) < 200  # the same tensors; the JSON names another backbone path
    assert row[2:] == [f"{parameters:,}", "2.00 (2.00)", "2.00 |"]  # the frozen runs log twice multi-task's queries/s
    assert "| multitask |  | the query encoder | 1.00 (1.00) | 1.00 |" in costs
    assert "| hyper-frozen-seed43 | 1110 | 55.00 | 0.400 | 0.500 | 0.700 |" in text
    assert (docs / "results" / "adapter_dev_curve.png").is_file()
