"""Types every layer shares."""

from typing import Literal, get_args

Run = dict[str, dict[str, float]]  # a retrieval run: query id -> {document id -> score}

# How a long passage is read: first, its first window only (FirstP); max, every window, scored by its best (MaxP)
WindowMode = Literal["first", "max"]
WINDOW_MODES: tuple[str, ...] = get_args(WindowMode)
