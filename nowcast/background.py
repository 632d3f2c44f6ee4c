"""One background thread that runs calls in order, so slow I/O or numpy work overlaps the caller.

The scoring job writes forecasts on one (compression and storage overlap the
model's next batch) and the forecaster blends tiles on one (numpy overlaps
the model, which releases the GIL). Both need the same three things: submit
in order, collect what has finished without blocking, and wait for the rest
with the first failure raised. Imports nothing of nowcast's, so every layer
may use it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """Calls run one after another on a single background thread, results collected in order.

    >>> with Background[int]("example") as background:
    ...     for k in range(4):
    ...         background.submit(pow, 2, k)
    ...     background.wait()
    [1, 2, 4, 8]
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: collections.deque[Future[T]] = collections.deque()

    def submit(self, call: Callable[..., T], *args: object) -> None:
        """Queues ``call(*args)`` behind the calls already submitted."""
        self._pending.append(self._executor.submit(call, *args))

    def finished(self) -> Iterator[T]:
        """Results of the leading calls that have finished, without waiting; raises a failed call's error."""
        while self._pending and self._pending[0].done():
            yield self._pending.popleft().result()

    def wait(self) -> list[T]:
        """Waits for every submitted call; returns their results in order, or raises the first failure."""
        results = []
        while self._pending:
            results.append(self._pending.popleft().result())
        return results

    def close(self) -> None:
        """Stops the thread after the calls already submitted."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Background[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
