"""Configuration of a HypeR retriever: a BERT-family backbone plus an optional (hyper-)prompt pool."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

REPRESENTATIONS = ("dense", "sparse")
POOLINGS = ("mean", "cls")


class HyperConfig(PretrainedConfig):
    """Settings of `HyperRetrieverModel`.

    Args:
        backbone_config: the encoder's config (a `PretrainedConfig` or its dict); any encoder whose attention goes
            through transformers' attention interface (BERT, RoBERTa, XLM-R, ...). MPNet works without prompts only.
        representation: "dense" (pooled hidden states, shape (B, hidden)) or "sparse" (SPLADE: the MLM head's
            max over tokens of log(1 + relu(logits)), shape (B, vocab)). Sparse needs a backbone with an MLM head.
        pooling: "mean" over real tokens or "cls" (dense only).
        normalize: L2-normalise dense embeddings.
        share_encoders: one encoder for queries and passages; otherwise the passage encoder is a separate copy.
        freeze_passage_encoder: the passage encoder gets no gradient (the release's setting: index built once).
        freeze_query_backbone: only the prompt modules train (the release's default; the paper trains both).
        hyper_prompt: the prompt pool's settings (`HyperPromptConfig` as a dict) or None for no prompt.
            `pool_size == 1` is the single shared prefix baseline; `pool_size > 1` is HypeR's hyper-prompt.
        max_seq_length: tokens kept per passage (`encode_corpus`; a MaxP window); longer texts are truncated.
        max_query_length: tokens kept per query (`encode_queries`, `prompt_attention`, the sentence-transformers
            query side); None: max_seq_length (models saved before this setting). train.py saves its
            `model.max_query_length`, so a saved model reads queries as it was trained.
        attention_backend: "sdpa" or "eager", the backbone's attention kernel under the prefix.
        backbone_name_or_path: the Hub id or folder the backbone weights came from (`from_backbone` sets it);
            `load_adapter` refuses an adapter trained on another backbone. None: not recorded.
    """

    model_type = "hyper_retriever"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        representation: str = "dense",
        pooling: str = "mean",
        normalize: bool = True,
        share_encoders: bool = True,
        freeze_passage_encoder: bool = False,
        freeze_query_backbone: bool = False,
        hyper_prompt: dict | None = None,
        max_seq_length: int = 256,
        max_query_length: int | None = None,
        attention_backend: str = "sdpa",
        backbone_name_or_path: str | None = None,
        **kwargs,
    ):
        if isinstance(backbone_config, dict):
            backbone_config = dict(backbone_config)
            backbone_config = AutoConfig.for_model(backbone_config.pop("model_type", "bert"), **backbone_config)
        self.backbone_config = backbone_config
        self.representation = representation
        self.pooling = pooling
        self.normalize = normalize
        self.share_encoders = share_encoders
        self.freeze_passage_encoder = freeze_passage_encoder
        self.freeze_query_backbone = freeze_query_backbone
        self.hyper_prompt = dict(hyper_prompt) if hyper_prompt is not None else None
        self.max_seq_length = max_seq_length
        self.max_query_length = max_query_length
        self.attention_backend = attention_backend
        self.backbone_name_or_path = backbone_name_or_path
        super().__init__(**kwargs)
        self.validate_settings()

    @property
    def query_length(self) -> int:
        """Tokens kept per query: max_query_length, else max_seq_length."""
        return self.max_query_length or self.max_seq_length

    def validate_settings(self) -> None:
        """Raises ValueError naming the offending key; called on construction."""
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"HyperConfig.representation={self.representation!r}: expected one of {REPRESENTATIONS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"HyperConfig.pooling={self.pooling!r}: expected one of {POOLINGS}")
        if self.attention_backend not in ("sdpa", "eager"):
            raise ValueError(f"HyperConfig.attention_backend={self.attention_backend!r}: expected 'sdpa' or 'eager'")
        if not isinstance(self.max_seq_length, int) or self.max_seq_length < 2:
            raise ValueError(f"HyperConfig.max_seq_length={self.max_seq_length!r}: expected an integer >= 2")
        if self.max_query_length is not None and (not isinstance(self.max_query_length, int)
                                                  or self.max_query_length < 2):
            raise ValueError(f"HyperConfig.max_query_length={self.max_query_length!r}: expected an integer >= 2 "
                             "or None")
        if self.freeze_passage_encoder and self.share_encoders and not self.freeze_query_backbone:
            raise ValueError(
                "HyperConfig: freeze_passage_encoder=True with share_encoders=True would also freeze the query "
                "backbone; set share_encoders=False (a separate passage encoder) or freeze_query_backbone=True"
            )
