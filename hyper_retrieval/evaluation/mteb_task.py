"""An MTEB retrieval task over a local BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).

MTEB loads its own tasks from Hub datasets laid out with named configs; a plain BEIR folder has none, so this module
builds the task from the files. It imports only json, pathlib and mteb: the model card inlines its source as the
snippet a Hub user copies (hyper_retrieval/hub/card.py), so what the card shows is what the tests run.

    import mteb
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer("path/or/hub-id", trust_remote_code=True)
    result = mteb.evaluate(model, beir_folder_task("data/sample/ropes", "test"), cache=None)
    print(result[0].scores["test"][0]["ndcg_at_10"])

MTEB encodes queries with ``encode_query`` and documents (title and text joined by a space) with ``encode_document``,
so a HypeR model reads each side as eval.py does and the nDCG@10 is eval.py's (tests/test_beir_clients.py).
"""

import json
from pathlib import Path

from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata


def beir_folder_task(folder: str, split: str = "test") -> AbsTaskRetrieval:
    """An MTEB retrieval task (main score nDCG@10) over ``folder``'s corpus, the queries judged in ``split`` and their
    relevance judgements."""
    root = Path(folder)

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (root / name).read_text(encoding="utf-8-sig").splitlines() if line.strip()]

    class BeirFolderTask(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=f"BeirFolder-{root.name}", description=f"The BEIR folder {root}, split {split}.",
            dataset={"path": str(root), "revision": "local"}, type="Retrieval", category="t2t",
            modalities=["text"], eval_splits=[split], eval_langs=["eng-Latn"], main_score="ndcg_at_10",
        )

        def load_data(self, **kwargs) -> None:
            qrels: dict[str, dict[str, int]] = {}
            lines = (root / "qrels" / f"{split}.tsv").read_text(encoding="utf-8-sig").splitlines()
            for line in lines[1:]:  # the first line is the header
                if line.strip():
                    query_id, doc_id, score = line.split("\t")
                    qrels.setdefault(query_id, {})[doc_id] = int(score)
            self.corpus = {split: {str(d["_id"]): {"title": d.get("title") or "", "text": d["text"]}
                                   for d in rows("corpus.jsonl")}}
            self.queries = {split: {str(q["_id"]): q["text"] for q in rows("queries.jsonl") if str(q["_id"]) in qrels}}
            self.relevant_docs = {split: qrels}
            self.data_loaded = True

    return BeirFolderTask()
