"""The counters a checkpoint carries beside accelerate's state."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainState:
    """Counters saved with every checkpoint (registered with accelerator.register_for_checkpointing)."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # batches consumed: where the sampler resumes
    best_score: float = float("-inf")
    best_step: int = -1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
