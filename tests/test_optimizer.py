"""AdamW's form: fused where no earlier run's rounding is at stake (CUDA, or a CPU under bf16 autocast), torch's
per-parameter form for float32 on the CPU, whose runs reproduce bit for bit; optim.fused_adamw overrides both."""

import pytest
import torch

from hyper_retrieval.training.config import OptimSettings
from hyper_retrieval.training.optimization import build_optimizer, fused_adamw
from tests.tiny import random_batch, tiny_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("setting", "device", "precision", "fused"), [
    (None, CPU, "no", False), (None, CPU, None, False), (None, CPU, "bf16", True), (None, CPU, "fp16", True),
    (None, CUDA, "no", True), (None, CUDA, "bf16", True),
    (True, CPU, "no", True), (False, CPU, "bf16", False), (False, CUDA, "bf16", False),
])
def test_fused_where_no_float32_cpu_run_must_reproduce(setting, device, precision, fused):
    assert fused_adamw(setting, device, precision) is fused


def trained(fused: bool | None, precision: str, steps: int = 4) -> tuple[torch.optim.AdamW, torch.Tensor]:
    """The optimizer and the parameters (flat) after `steps` AdamW steps on a tiny model."""
    model = tiny_model().train()
    optimizer = build_optimizer(model, OptimSettings(fused_adamw=fused), CPU, precision)
    ids, mask = random_batch()
    for _ in range(steps):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            loss = model(ids, mask).embeddings.float()[:, :4].sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_bf16_on_the_cpu_takes_the_fused_kernel_and_float32_the_loop_both_training_alike():
    loop, loop_weights = trained(None, "no")
    fused, _ = trained(None, "bf16")
    assert not loop.defaults["fused"] and fused.defaults["fused"]
    forced, forced_weights = trained(True, "no")  # the fused kernel in float32: the loop's steps, rounded apart
    assert forced.defaults["fused"]
    initial = torch.cat([p.detach().flatten() for p in tiny_model().parameters()])
    update = (loop_weights - initial).norm()
    assert update > 0 and not torch.equal(forced_weights, loop_weights)
    assert (forced_weights - loop_weights).norm() < 1e-3 * update
