"""Work spread over forked processes: one rule for when forking is safe, one map.

Forked workers inherit what they need (no pickling of scans, figures or models); only
index spans and results cross the process boundary. Forking is used only on Linux: on
macOS ``fork`` exists but is not safe with the system frameworks (Python's default there
is ``spawn``), and Windows has none. Callers fall back to this process.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def can_fork() -> bool:
    """Whether work may be handed to forked processes here (Linux with ``fork``)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


#: What the forked workers of :func:`forked_map` inherit: [(function, items)], set just
#: before the fork and cleared after (nothing is pickled but the spans and the results).
_FORKED: list[tuple[Callable[[Any], Any], Sequence[Any]]] = []


def forked_map(
    func: Callable[[Any], Any], items: Sequence[Any], processes: int, chunk: int
) -> Iterator[list[Any]]:
    """``[func(item) for item in items[a:b]]`` for consecutive spans of ``chunk`` items, in
    order, computed by ``processes`` forked workers that inherit ``func`` and ``items``.

    An error in a worker stops the map (the tasks not started are cancelled) and is raised
    here, as it would be in this process. Where no process pool can be made (a container
    without ``/dev/shm``), the spans are computed here."""
    from concurrent.futures import ProcessPoolExecutor

    spans = [(start, min(start + chunk, len(items))) for start in range(0, len(items), chunk)]
    try:
        pool = ProcessPoolExecutor(
            max_workers=max(1, min(processes, len(spans))),
            mp_context=multiprocessing.get_context("fork"),
        )
    except (OSError, ImportError, NotImplementedError):  # no working semaphores (/dev/shm)
        for start, stop in spans:
            yield [func(items[i]) for i in range(start, stop)]
        return
    _FORKED[:] = [(func, items)]
    try:
        yield from pool.map(_run_span, spans)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        _FORKED.clear()


def _run_span(span: tuple[int, int]) -> list[Any]:
    """In a forked worker: :data:`_FORKED`'s function over its items ``[start:stop]``."""
    func, items = _FORKED[0]
    return [func(items[i]) for i in range(*span)]
