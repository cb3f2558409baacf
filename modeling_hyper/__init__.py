"""The remote-code folder: what ships to the Hub beside the weights (flat files, torch/transformers/stdlib only)."""

from .configuration_hyper import HyperConfig
from .hyper_prompt import HyperPrompt, HyperPromptConfig, PromptSettingError
from .modeling_hyper import HyperRetrieverModel, HyperRetrieverOutput

__all__ = ["HyperConfig", "HyperPrompt", "HyperPromptConfig", "HyperRetrieverModel", "HyperRetrieverOutput",
           "PromptSettingError"]
