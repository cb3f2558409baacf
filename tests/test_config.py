"""Config loading: paper defaults, typed overrides, and early errors that name the file and the key or line."""

from pathlib import Path

import pytest

from hyper_retrieval.training.config import ConfigError, TrainConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def minimal(tmp_path: Path, bbir: Path) -> Path:
    return write(tmp_path, f"data:\n  collections:\n    - path: {bbir / 'qasc'}\n    - path: {bbir / 'nq_ckc'}\n"
                           "      task: qa\n")


def test_defaults_are_the_papers(minimal: Path) -> None:
    cfg = load_config(minimal)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.optim.backbone_lr, cfg.optim.prompt_lr, cfg.optim.weight_decay, cfg.optim.grad_clip) == (
        2e-5, 1e-3, 0.01, 1.0)
    assert (cfg.loss.cpr_weight, cfg.loss.cpr_pull_weight, cfg.loss.cpr_push_weight, cfg.loss.flops_weight) == (
        0.1, 1.0, 0.5, 2e-4)
    assert (cfg.model.pool_size, cfg.model.synthesizer_temperature, cfg.data.num_negatives) == (5, None, 19)
    assert cfg.model.synthesizer == "cosine"  # ours, measured (docs/RESULTS.md); "release" is the authors'

    assert [c.task_name for c in cfg.data.collections] == ["qasc", "qa"]  # folder name unless a task is given
    assert cfg.data.task_names == ["qasc", "qa"]


def test_hub_ids_are_not_checked_on_disk(tmp_path: Path, bbir: Path) -> None:
    path = write(tmp_path, f"data:\n  collections:\n    - {{path: BeIR/scifact, task: fact}}\n"
                           f"    - {{path: {bbir / 'qasc'}, task: fact}}\n")
    cfg = load_config(path, ["model.backbone=naver/splade-cocondenser-ensembledistil"])
    assert cfg.data.collections[0].path == "BeIR/scifact" and cfg.data.task_names == ["fact"]


def test_overrides_apply_with_types_checked(minimal: Path) -> None:
    cfg = load_config(minimal, ["optim.prompt_lr=1e-3", "train.batch_size=8", "data.sampling=homogeneous",
                                "loss.cpr_push=false", "optim.max_steps=null", "model.backbone=bert-base-uncased"])
    assert cfg.optim.prompt_lr == 1e-3 and isinstance(cfg.optim.prompt_lr, float)  # YAML 1.1 reads 1e-3 as text
    assert cfg.train.batch_size == 8
    assert cfg.data.sampling == "homogeneous"
    assert cfg.loss.cpr_push is False
    assert cfg.optim.max_steps is None
    assert cfg.model.backbone == "bert-base-uncased"  # a Hub id is not checked on disk
    with pytest.raises(ConfigError, match=r"run\.yaml: train\.batch_size: expected an integer, got 'eight'"):
        load_config(minimal, ["train.batch_size=eight"])
    with pytest.raises(ConfigError, match=r"run\.yaml: loss\.cpr_pull: expected true or false"):
        load_config(minimal, ["loss.cpr_pull=maybe"])
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key optim\.lr"):
        load_config(minimal, ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(minimal, ["batch_size=8"])


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path, bbir: Path) -> None:
    path = write(tmp_path, f"model:\n  pool_sise: 5\ndata:\n  collections: [{{path: {bbir / 'qasc'}}}]\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key model\.pool_sise \(did you mean model\.pool_size"):
        load_config(path)
    path = write(tmp_path, f"data:\n  collections: [{{path: {bbir / 'qasc'}, tsk: qa}}]\n")
    with pytest.raises(ConfigError, match=r"unknown key data\.collections\[0\]\.tsk"):
        load_config(path)
    path = write(tmp_path, "optimizer:\n  backbone_lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key optimizer \(did you mean optim\?\)"):
        load_config(path)


def test_wrong_type_and_range_name_key_and_expectation(tmp_path: Path, bbir: Path) -> None:
    coll = f"data:\n  collections: [{{path: {bbir / 'qasc'}}}]\n"
    cases = {
        "train:\n  batch_size: 2.5\n": r"train\.batch_size: expected an integer, got 2\.5",
        "model:\n  representation: colbert\n": r"model\.representation: expected one of 'dense', 'sparse'",
        "optim:\n  mixed_precision: no\n":
            r"optim\.mixed_precision: expected one of 'no', 'bf16', 'fp16', 'auto' \(quote it",
        "model:\n  pool_size: 0\n": r"model\.pool_size: HyperPromptConfig\.pool_size=0: expected an integer >= 1",
        "loss:\n  contrastive_temperature: 0\n": r"loss\.contrastive_temperature: expected a value > 0",
        "loss:\n  temperature: 0.05\n": r"loss\.temperature was renamed loss\.contrastive_temperature",
        "model:\n  prompt_length: 2\n": r"model\.prompt_length was renamed model\.num_virtual_tokens",
        "data:\n  collections: qasc\n": r"data\.collections: expected a list",
        "train: 3\n": r"train: expected a mapping",
        "train:\n  keep_best_metric: ndcg@100\n": r"train\.keep_best_metric: expected one of 'ndcg@10', 'r_precision'",
        "train:\n  seed: -1\n": r"train\.seed: expected a value >= 0, got -1",
        "optim:\n  backbone_lr: .inf\n": r"optim\.backbone_lr: expected a finite number, got inf",
        "optim:\n  prompt_lr: .nan\n": r"optim\.prompt_lr: expected a finite number, got nan",
        "optim:\n  backbone_lr: 0\n": r"optim\.backbone_lr: expected a value > 0, got 0",
    }
    for body, message in cases.items():
        text = body if body.startswith("data") else coll + body
        with pytest.raises(ConfigError, match=r"run\.yaml: " + message):
            load_config(write(tmp_path, text))


def test_missing_paths_fail_before_training(tmp_path: Path, bbir: Path, monkeypatch) -> None:
    path = write(tmp_path, f"data:\n  collections: [{{path: {tmp_path / 'nowhere'}}}]\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: data\.collections\[0\]\.path: .*nowhere/corpus\.jsonl"):
        load_config(path)
    path = write(tmp_path, f"data:\n  collections: [{{path: {bbir / 'qasc'}}}]\n  dev_split: validation\n")
    with pytest.raises(ConfigError, match=r"data\.collections\[0\]\.path: .*qasc/qrels/validation\.tsv does not"):
        load_config(path)
    path = write(tmp_path, f"model:\n  backbone: ./models/minilm\ndata:\n  collections: [{{path: {bbir / 'qasc'}}}]\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: model\.backbone: .*models/minilm does not exist"):
        load_config(path)
    (tmp_path / "data").mkdir()
    path = write(tmp_path, "data:\n  collections: [{path: data/qasc_missing}]\n")
    monkeypatch.chdir(tmp_path)  # data/qasc_missing is a missing folder under ./data, not the Hub id data/...
    with pytest.raises(ConfigError, match=r"data\.collections\[0\]\.path: .*data/qasc_missing/corpus\.jsonl"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"data\.collections: expected at least one collection"):
        load_config(write(tmp_path, "train:\n  seed: 1\n"))
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  pool_size: 5\n   num_virtual_tokens: 1\ntrain:\n  seed: [1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:3:\d+: YAML syntax error"):
        load_config(path)


def test_base_config_is_merged_section_by_section(tmp_path, bbir):
    base = tmp_path / "base.yaml"
    base.write_text(
        f"model: {{prompt: hyper, pool_size: 7}}\ndata: {{collections: [{{path: {bbir / 'qasc'}}}]}}\n"
        "train: {seed: 5}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmodel: {prompt: none}\n")
    config = load_config(child, ["train.seed=9"])
    assert config.model.prompt == "none" and config.model.pool_size == 7  # child wins, base fills the rest
    assert config.train.seed == 9 and config.data.collections[0].path == str(bbir / "qasc")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan\.yaml: base: 'missing\.yaml' not found \(looked for .*missing"):
        load_config(tmp_path / "orphan.yaml")


# Training configs; bbir-protocol.yaml lists runs of them (tests/test_protocol.py loads every one it names).
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                 if p.name != "bbir-protocol.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path, bbir, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # train.py runs from the repository root
    if path.name == "kilt.yaml":  # needs KILT converted to BEIR layout under data/kilt (see the file)
        with pytest.raises(ConfigError, match="data/kilt/fever/corpus.jsonl does not exist"):
            load_config(path)
        return
    config = load_config(path)
    assert config.data.collections and config.train.output_dir.startswith("outputs/")


def test_command_line_no_is_a_string_but_false_a_boolean(tmp_path, bbir):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{collections: [{{path: {bbir / 'qasc'}}}]}}\n")
    config = load_config(path, ["optim.mixed_precision=no", "loss.cpr_pull=false"])
    assert config.optim.mixed_precision == "no" and config.loss.cpr_pull is False
    with pytest.raises(ConfigError, match="loss.cpr_push"):
        load_config(path, ["loss.cpr_push=off"])


def test_prompt_settings_are_declared_once_and_keep_their_names_from_yaml_to_the_model(tmp_path: Path) -> None:
    """Every HyperPromptConfig setting is a model.<same name> key of the YAML with HyperPromptConfig's default and
    help, and its checks run at load time, reported with the file and key."""
    from dataclasses import fields

    from hyper_retrieval.training.config import ModelSettings
    from modeling_hyper import HyperPromptConfig

    filled_or_informational = {"num_layers", "num_attention_heads", "token_dim", "base_model_name_or_path",
                               "backbone_frozen", "task_names", "peft_type", "task_type"}
    declared = {f.name: f for f in fields(HyperPromptConfig) if f.name not in filled_or_informational}
    settings = {f.name: f for f in fields(ModelSettings)}
    for name, f in declared.items():
        assert settings[name].default == f.default and settings[name].metadata["help"] == f.metadata["help"]
    path = write(tmp_path, "model:\n  synthesizer: bogus\n")
    with pytest.raises(ConfigError, match=r"model\.synthesizer: HyperPromptConfig\.synthesizer='bogus': expected one"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"model\.prompt_init_std: .*expected > 0"):
        load_config(write(tmp_path, "model:\n  prompt_init_std: 0.0\n"))


def test_two_collections_with_one_folder_name_are_refused(tmp_path: Path, bbir: Path) -> None:
    copy = tmp_path / "copy" / "qasc"
    copy.mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (copy / name).symlink_to(bbir / "qasc" / name)
    (copy / "qrels").symlink_to(bbir / "qasc" / "qrels")
    path = write(tmp_path, f"data:\n  collections: [{{path: {bbir / 'qasc'}}}, {{path: {copy}}}]\n")
    with pytest.raises(ConfigError, match=r"data\.collections\[1\]\.path: .* has the folder name 'qasc' of "
                                          r"data\.collections\[0\]"):
        load_config(path)
