"""Cost of the largest request the Hub handler allows: the handler's time against the model's own score_passages
on the same texts (the handler's overhead: checks, token counting), interleaved over rounds, best of each.

The request is the one tests/test_widget.py sends: a query and 54 passages of 602 tokens, 32,508 tokens in all, just
inside MAX_REQUEST_TOKENS. The model card says such a request takes under 15 s on 2 CPU cores; the last line says
how this machine compares. (README.md records 6.75 s with --rounds 2; longer passages, whose MaxP windows overlap by
half, cost more for the same tokens counted: about 12 s on 2 cores in issue 32's probe, as handler.py says.)

    python bench/handler.py [--model FOLDER] [--rounds 3] [--threads 2]
"""

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyper_retrieval.core.backbones import resolve_backbone  # noqa: E402
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel  # noqa: E402

HANDLER = Path(__file__).resolve().parents[1] / "hyper_retrieval" / "hub" / "hub_files" / "handler.py"
QUERY = "what causes the seasons on earth"
PASSAGE = "The tilt of Earth's axis changes how directly sunlight reaches each hemisphere. " * 40  # 602 tokens
CARD_BOUND_S = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a saved model folder (default: MiniLM with a prompt pool)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("handler", HANDLER)
    handler_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler_module)
    with tempfile.TemporaryDirectory() as folder:
        if args.model is None:
            args.model = Path(folder)
            HyperRetrieverModel.from_backbone(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2"),
                                              hyper_prompt=HyperPromptConfig()).save_pretrained(folder)
        handler = handler_module.EndpointHandler(str(args.model))
        model = handler.model
        passages = [PASSAGE] * 54
        payload = {"inputs": {"source_sentence": QUERY, "sentences": passages}}
        tokens = sum(len(ids) for ids in model.tokenizer([QUERY, *passages])["input_ids"])
        assert isinstance(handler(payload), list), "the request was refused: not the largest allowed one"
        timings = {"handler": lambda: handler(payload), "score_passages": lambda: model.score_passages(QUERY, passages)}
        best = dict.fromkeys(timings, float("inf"))
        for _ in range(args.rounds):
            for name, call in timings.items():
                start = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"largest allowed request: 1 query + {len(passages)} passages, {tokens:,} tokens "
          f"(bound {handler_module.MAX_REQUEST_TOKENS:,}); best of {args.rounds} rounds, {args.threads} threads")
    print(f"{'':16}{'seconds':>9}{'ratio':>8}")
    for name, seconds in best.items():
        print(f"{name:16}{seconds:9.2f}{seconds / best['score_passages']:8.2f}")
    print(f"handler / the card's {CARD_BOUND_S:.0f} s bound: {best['handler'] / CARD_BOUND_S:.2f}")


if __name__ == "__main__":
    main()
