"""A pool of worker processes that run the methods of one context object over many items.

The context (e.g. :class:`rca.labelling.LabelJob`: datasets, folders, the rule) is pickled once per
worker when the pool starts, not once per task, and the same pool serves every phase of a run, so
the ~15 s start-up of spawned processes that import torch is paid once; :meth:`WorkerPool.start`
lets it overlap other work (gen_labels starts the pool before its CAM phase). With ``workers <= 1``
everything runs in the calling process.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Iterable
from typing import Any

import torch
from tqdm import tqdm

_worker_context: Any = None  # a worker process's copy of the context, set once by _start_worker


def _start_worker(context: Any) -> None:
    global _worker_context
    torch.set_num_threads(1)  # the workers share the cores; one intra-op thread each
    _worker_context = context


def _call(method: str, item: Any) -> Any:
    return getattr(_worker_context, method)(item)


class WorkerPool:
    """``context.<method>(item)`` over items, in ``workers`` spawned processes started on first use.

    Use as a context manager (the processes are closed on exit). Results come back in item order.
    """

    def __init__(self, context: Any, workers: int) -> None:
        self.context, self.workers = context, workers
        self._pool = None

    def start(self) -> None:
        """Start the worker processes now, without waiting for them to be ready, so that their
        start-up (spawn, import torch, unpickle the context) overlaps what the caller does next.
        A no-op with ``workers <= 1`` or once started; :meth:`map` starts the pool if needed."""
        if self.workers > 1 and self._pool is None:  # spawn: never fork a process that has run torch
            self._pool = multiprocessing.get_context("spawn").Pool(
                self.workers, initializer=_start_worker, initargs=(self.context,))

    def map(self, method: str, items: Iterable[Any], desc: str) -> list[Any]:
        """``[context.method(item) for item in items]`` with a progress bar named ``desc``."""
        items = list(items)
        if self.workers <= 1:
            function = getattr(self.context, method)
            return [function(item) for item in tqdm(items, desc=desc, leave=False)]
        self.start()
        results = self._pool.imap(functools.partial(_call, method), items, chunksize=4)
        return list(tqdm(results, total=len(items), desc=desc, leave=False))

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        """Close the processes: after their tasks, or at once when leaving on an exception."""
        if self._pool is not None:
            if exc_type is None:
                self._pool.close()
            else:  # an error: do not wait for workers still starting up
                self._pool.terminate()
            self._pool.join()
