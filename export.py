"""Export a trained retriever as a Hub-ready folder (weights, code, tokenizer, adapter, model card,
sentence-transformers files, inference handler, widget page), and optionally push it to the Hub.

    python export.py --model outputs/quickstart/final --results outputs/quickstart/eval --out outputs/quickstart/hub \
        [--baseline outputs/quickstart/eval-bm25]
    python export.py --model outputs/quickstart/final --results outputs/quickstart/eval --out outputs/quickstart/hub \
        --push-to-hub your-name/hyper-minilm [--private]
    python export.py --model outputs/quickstart/final --results outputs/quickstart/eval --adapter-only \
        --out outputs/quickstart/hub-adapter [--push-to-hub your-name/hyper-minilm-adapter]

--adapter-only writes the hyper-prompt adapter alone (hyper_prompt_config.json, hyper_prompt.safetensors and its card
README.md: the backbone it needs, whether that was frozen in training, its size); --push-to-hub then uploads just that.

Everything is written to --out first; the upload is the only step that needs the network (token from HF_TOKEN or
`hf auth login`, or --token). --out is locked for the whole command (a second export.py into it stops at once, naming
the first) and is never an input (--model, --results, --baseline), a training run or part of one, a checkpoint, a
saved model or an evaluation, nor holds one; --overwrite replaces only an earlier export or a folder of other files.
The new folder is written beside the old one and swapped in by rename when whole: a failure (a full disk) leaves
the old one as it was and names what failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hyper_retrieval.core.folder_lock import FolderBusyError, lock_folder
from hyper_retrieval.core.run_folders import RunFolderError, check_export_target
from hyper_retrieval.hub.export import ExportWriteError, NoAdapterError, export_for_hub, push_to_hub


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model folder (train.py's <output_dir>/final)")
    parser.add_argument("--results", help="eval.py's output folder for that model (results.json, heat map)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (never the model, a run's artefacts or a folder holding a run)")
    parser.add_argument("--adapter-only", action="store_true",
                        help="write only the hyper-prompt adapter (its two files, its card); the model must have one")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this model repository")
    parser.add_argument("--repo-id", help="the model's Hub id in the card's examples (default: --push-to-hub)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--license", help="the card's licence (default: apache-2.0, or 'other' when a training "
                        "collection's meta.json gives a ShareAlike or research-only licence)")
    parser.add_argument("--baseline", help="another system's eval.py output on the same collections (e.g. BM25 in "
                        "the same run), compared with in the card")
    parser.add_argument("--base-model", help="the backbone's Hub id (default: from train_config.yaml)")
    parser.add_argument("--dataset", action="append", dest="datasets", metavar="HUB_ID",
                        help="a training data set's Hub id, repeatable (default: Hub ids in train_config.yaml)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:  # one writer per --out: the lock is held until the folder is written and uploaded
        lock = lock_folder(args.out, check=lambda: check_export_target(  # export_for_hub checks again, locked
            Path(args.out), Path(args.model), {"--results": [args.results], "--baseline": [args.baseline]}))
        out = export_for_hub(args.model, args.out, args.results, repo_id=args.repo_id or args.push_to_hub,
                             license=args.license, base_model=args.base_model, datasets=args.datasets,
                             overwrite=args.overwrite, baseline_dir=args.baseline, adapter_only=args.adapter_only)
    except (FileExistsError, RunFolderError, NoAdapterError, FolderBusyError, ExportWriteError) as e:
        sys.exit(f"export.py: {e}")
    with lock:
        print(f"exported to {out}")
        if args.push_to_hub:
            commit = push_to_hub(out, args.push_to_hub, token=args.token, private=args.private)
            print(f"pushed: {commit.commit_url}")


if __name__ == "__main__":
    sys.exit(main())
