"""Loading the model a command line names: a HypeR folder or Hub id with this repository's classes, any other with
AutoModel. torch and transformers are imported on call, so that a CLI's --help stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hyper_retrieval.core.locations import looks_local


def load_retriever(name_or_path: str, dtype: str = "auto", compile_model: bool = False,
                   trust_remote_code: bool = False, device: str | None = None) -> Any:
    """The model behind ``--model``: a local folder (which must hold weights) or a Hub id, on ``device`` (default:
    the GPU when there is one, else the CPU); dtype "auto" is bfloat16 where the device computes it faster (a bf16 GPU,
    a CPU with AMX, an AMD CPU with AVX512-BF16: precision.py), else float32. A HypeR model
    (config model_type hyper_retriever) loads with this repository's own classes, so none of its files' code runs;
    any other model through AutoModel, running code it ships only with ``trust_remote_code``."""
    import torch
    from transformers import AutoModel, PretrainedConfig

    from hyper_retrieval.core.fingerprints import WEIGHT_PATTERNS
    from hyper_retrieval.core.precision import resolve_dtype
    from modeling_hyper import HyperConfig, HyperRetrieverModel

    folder = Path(name_or_path)
    if looks_local(name_or_path) and not folder.exists():
        raise SystemExit(f"--model {name_or_path}: no such folder (a Hub id reads org/name)")
    if folder.is_dir() and not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise FileNotFoundError(f"model folder {folder} has no weights (no {', '.join(WEIGHT_PATTERNS)} file; "
                                f"found: {sorted(p.name for p in folder.iterdir())})")
    model_type = PretrainedConfig.get_config_dict(name_or_path)[0].get("model_type")
    if model_type == HyperConfig.model_type:
        model = HyperRetrieverModel.from_pretrained(name_or_path)
    else:
        try:
            model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except ValueError as e:
            if "trust_remote_code" not in str(e):
                raise
            raise SystemExit(f"--model {name_or_path}: the model ships its own code; read it, then pass "
                             "--trust-remote-code to run it") from None
    if not all(hasattr(model, name) for name in ("encode_queries", "encode_corpus")):
        raise SystemExit(f"--model {name_or_path}: a {type(model).__name__} (model_type {model_type!r}) is not a "
                         "retriever: it has no encode_queries / encode_corpus. Pass a HypeR model (train.py's "
                         "final/ or best/, an exported folder) or a model class with BEIR's two encoders")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device, getattr(torch, resolve_dtype(dtype, device))).eval()
    if compile_model:
        model.compile(dynamic=True)
    return model


def launched_processes() -> Any:
    """accelerate's PartialState for this run: one process, or those `accelerate launch` / torchrun started (gloo on
    CPUs, NCCL on GPUs). On a machine without CUDA it asks for CPU processes, which accelerate does not assume."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
