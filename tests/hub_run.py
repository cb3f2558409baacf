"""A small real run for the publishing tests: a MiniLM HypeR model saved as train.py lays it out, evaluated by
eval.py on two bbir samples (one zero-shot), and exported with export_for_hub."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from sample_collection import sample_of
from test_eval_cli import load_eval_module

from hyper_retrieval.hub.export import export_for_hub
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

REPO_ID = "someone/hyper-minilm-test"
POOL_SIZE = 4
TRAIN_CONFIG = {
    "model": {"backbone": "sentence-transformers/all-MiniLM-L6-v2", "prompt": "hyper", "pool_size": POOL_SIZE},
    "data": {"collections": [{"path": "./data/sample/qasc"}, {"path": "BeIR/scifact"}]},
    "optim": {"max_steps": 40},
}


@dataclass
class HubRun:
    model: HyperRetrieverModel  # the model as trained (in this process)
    model_dir: Path  # <run>/final, beside <run>/train_config.yaml
    eval_dir: Path
    export_dir: Path


def make_hub_run(minilm_path: str, bbir: Path, root: Path) -> HubRun:
    torch.manual_seed(0)
    model = HyperRetrieverModel.from_backbone(
        minilm_path, hyper_prompt=HyperPromptConfig(pool_size=POOL_SIZE), share_encoders=False, max_seq_length=64
    ).eval()
    queries = [json.loads(line)["text"] for line in (bbir / "qasc" / "queries.jsonl").read_text().splitlines()[:200]]
    assert model.calibrate_synthesizer(queries) == 200  # as train.py does before saving: the routing statistics
    model.save_pretrained(root / "final")
    (root / "train_config.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG, sort_keys=False))
    samples = [sample_of(bbir / name, root / name, n_docs) for name, n_docs in (("ropes", 60), ("multirc", 40))]
    load_eval_module().main(["--model", str(root / "final"), "--data", str(samples[0]), "--zero-shot", str(samples[1]),
                             "--out", str(root / "eval"), "--cache-dir", "", "--no-progress",
                             "--dtype", "float32"])  # as the clients it is compared with, on an AMX CPU too
    export_for_hub(root / "final", root / "hub", root / "eval", repo_id=REPO_ID)
    return HubRun(model, root / "final", root / "eval", root / "hub")
