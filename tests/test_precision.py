"""Where bf16 is used: only on devices that compute it faster (hyper_retrieval/core/precision.py), and in training the
loss terms stay float32 under bf16 autocast."""

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from tiny import tiny_model

from experiments.protocol import load_protocol
from hyper_retrieval.core.precision import cpu_flags, cpu_vendor, fast_bf16, resolve_dtype, resolve_mixed_precision
from hyper_retrieval.training.config import LossSettings, load_config
from hyper_retrieval.training.losses import RetrievalLoss

REPO = Path(__file__).resolve().parents[1]
AVX512_BF16_ONLY = {"avx512f", "avx512_bf16", "avx512_fp16"}  # Intel without AMX: measured slower in bf16
AMX = AVX512_BF16_ONLY | {"amx_tile", "amx_bf16"}
ZEN3 = {"avx2", "fma"}  # AMD without AVX512-BF16
ZEN4 = {"avx512f", "avx512_bf16"}  # AMD with AVX512-BF16: measured faster in bf16 (docs/RESULTS.md)
INTEL, AMD = "GenuineIntel", "AuthenticAMD"
FASTER = [(AMX, INTEL, True), (AVX512_BF16_ONLY, INTEL, False), (ZEN4, AMD, True), (ZEN3, AMD, False),
          (ZEN4, "", False)]  # no vendor known: AVX512-BF16 alone is not taken for fast


@pytest.mark.parametrize(("flags", "vendor", "faster"), FASTER)
def test_bf16_where_the_cpu_computes_it_faster(flags, vendor, faster):
    assert fast_bf16("cpu", flags, vendor) is faster
    assert resolve_mixed_precision("auto", "cpu", flags, vendor) == ("bf16" if faster else "no")
    for explicit in ("no", "bf16", "fp16", None):  # an explicit choice (None: the launcher's) is kept
        assert resolve_mixed_precision(explicit, "cpu", flags, vendor) == explicit


def test_this_machines_cpuinfo_decides_auto(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nvendor_id\t: AuthenticAMD\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"} and cpu_vendor(cpuinfo) == AMD
    assert cpu_flags(tmp_path / "missing") == set() and cpu_vendor(tmp_path / "missing") == ""
    flags, vendor = cpu_flags(), cpu_vendor()
    amd_bf16 = vendor == AMD and "avx512_bf16" in flags
    expected = "bfloat16" if fast_bf16("cpu") else "float32"
    assert resolve_dtype("auto", "cpu") == expected
    if "amx_bf16" not in flags:  # (with AMX it also asks the kernel for leave to use the tiles)
        assert (expected == "bfloat16") == amd_bf16
    assert resolve_dtype("float32", "cpu") == "float32"


@pytest.mark.parametrize(("flags", "vendor", "faster"), FASTER)
def test_the_cpu_epoch_profile_resolves_to_bf16_where_it_is_faster(flags, vendor, faster):
    protocol, _ = load_protocol(REPO / "configs" / "bbir-protocol.yaml")
    config = load_config(REPO / "configs" / "bbir-hyper.yaml", protocol["profiles"]["cpu-epoch"])
    assert config.optim.max_steps is None and config.optim.epochs == 1
    resolved = resolve_mixed_precision(config.optim.mixed_precision, "cpu", flags, vendor)
    assert resolved == ("bf16" if faster else "no")


def test_under_bf16_autocast_the_model_outputs_and_every_loss_term_are_float32():
    model = tiny_model(pool_size=3)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    prepared = accelerator.prepare(model.train())
    ids = torch.randint(1000, 2000, (6, 12))
    out = prepared(ids, torch.ones_like(ids), is_query=True)
    assert out.embeddings.dtype == torch.float32 and out.prompt_attention.dtype == torch.float32
    settings = LossSettings(router_z_weight=1e-3, router_balance_weight=0.1, router_mi_weight=0.1)
    loss = RetrievalLoss(settings, 2, 3, sparse=False)
    passages = torch.nn.functional.normalize(torch.randn(6, out.embeddings.shape[1]), dim=-1)
    tasks = torch.tensor([0, 0, 0, 1, 1, 1])
    terms = loss(out.embeddings, passages, torch.arange(6), 0, out.prompt_attention, tasks,
                 torch.zeros(6, 6, dtype=torch.bool), out.prompt_logits)
    for name, value in terms.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    accelerator.backward(terms["total"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
