"""The GPU image as a test can stand it up here: what it has (scripts/gpu_image.sh's IMAGE, and WHEELS, what the
pack carries), and tests/fixtures/gpu_image/sitecustomize.py, which hides every other distribution from
the processes a dry run starts (PYTHONPATH=GPU_IMAGE, HYPER_GPU_IMAGE_ALLOWED=the allowed names)."""

import importlib.metadata
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.processes import REPO

SCRIPT = REPO / "scripts" / "gpu_image.sh"
GPU_IMAGE = REPO / "tests" / "fixtures" / "gpu_image"


def gpu_image_distributions() -> set[str]:
    """What a GPU run may import: the image's distributions and the pack's wheels (gpu_image.sh's IMAGE and
    WHEELS), with what they require as installed here (the wheels install with --no-deps: what they need the image
    had), and this project."""
    text = SCRIPT.read_text()
    listed = re.search(r'^IMAGE="([^"]*)"', text, re.M).group(1).split()
    listed += [w.split("==")[0] for w in re.search(r'^WHEELS="([^"]*)"', text, re.M).group(1).split()]
    allowed, todo = {"hyper-retrieval"}, listed
    while todo:
        name = canonicalize_name(todo.pop())
        if name in allowed:
            continue
        allowed.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:  # jax: on the image, not here
            continue
        todo += [r.name for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})]
    return allowed


def gpu_image_env() -> dict[str, str]:
    """The environment that makes a process import as on the GPU image (PYTHONPATH to prepend to)."""
    return {"PYTHONPATH": str(GPU_IMAGE), "HYPER_GPU_IMAGE_ALLOWED": ",".join(sorted(gpu_image_distributions()))}
