"""Types every layer shares."""

Run = dict[str, dict[str, float]]  # a retrieval run: query id -> {document id -> score}
