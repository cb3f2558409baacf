"""Tiny random models (hidden 32, 2 layers) for testing mechanics quickly."""

import torch
from transformers import BertConfig, RobertaConfig, XLMRobertaConfig

from modeling_hyper import HyperConfig, HyperPromptConfig, HyperRetrieverModel

VOCAB = 30522  # MiniLM's tokenizer, so tiny models can encode real text


def tiny_backbone_config(kind: str = "bert"):
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB)
    if kind in ("roberta", "xlm-roberta"):
        config_class = RobertaConfig if kind == "roberta" else XLMRobertaConfig
        return config_class(**shape, max_position_embeddings=130, pad_token_id=1)
    return BertConfig(**shape, max_position_embeddings=128)


def tiny_model(
    kind: str = "bert",
    pool_size: int | None = 4,
    num_virtual_tokens: int = 3,
    seed: int = 0,
    prompt: dict | None = None,
    **config,
) -> HyperRetrieverModel:
    """A random HyperRetrieverModel; pool_size None means no prompt, 1 the single prefix; `prompt` holds further
    HyperPromptConfig fields (synthesizer, ...)."""
    torch.manual_seed(seed)
    if pool_size is not None:
        prompt = HyperPromptConfig(
            pool_size=pool_size, num_virtual_tokens=num_virtual_tokens, prompt_dropout=0.0, **(prompt or {})
        ).to_dict()
    model = HyperRetrieverModel(HyperConfig(backbone_config=tiny_backbone_config(kind), hyper_prompt=prompt, **config))
    return model.eval()


def random_batch(batch: int = 3, length: int = 9, seed: int = 1, pad_rows: dict | None = None):
    """(B, T) ids and a mask; pad_rows {row: n_real_tokens} pads the end of those rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, n in (pad_rows or {}).items():
        mask[row, n:] = 0
        ids[row, n:] = 0
    return ids, mask
