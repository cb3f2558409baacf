"""Batches built ahead, in a thread, while the device computes the step before.

Building a batch is host work (sampling negatives, padding token ids, looking passage vectors up, hashing keys); on
a GPU it would otherwise sit between two steps with the device idle. The thread keeps `depth` batches ready, in
page-locked memory when they go to a GPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2, pin_memory: bool = False) -> Iterator[T]:
    """Yields `items` in order, each produced by a background thread up to `depth` ahead (each pinned first when
    `pin_memory`). An exception in the thread is raised here, at the item it stopped at; leaving the loop early
    (break, an exception, `close()`) stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item.pin_memory() if pin_memory else item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put(error)
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
