"""Every bundle (dask partition) of a ParDo on Beam's DaskRunner collects its own outputs.

Beam 2.77's DaskRunner builds one set of output receivers per ParDo when it
translates the pipeline, and every partition of that ParDo appends to it and
returns everything it holds. Partitions that run in one worker process, one
after the other or side by side, therefore return each other's outputs too:
a windows job cut into one partition per task counted its normalisation
statistics 4 to 9 times over (a different count on each run), and more
partitions than workers always share a process. Beam's default of up to 128
elements in a partition hid it for small jobs and ran larger ones on one
worker only.

:func:`install` replaces the DaskRunner's bundle function with one that
empties the ParDo's receivers before a bundle and takes what they hold after
it (finish_bundle's outputs included), one bundle of a ParDo at a time in a
process (a lock per receivers object: the output handler that points at them
is compiled code and cannot be copied with other receivers). The replacement
is a module-level function of this package, so workers, which unpickle the
task graph, import it from here.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

_LOCKS: dict[int, threading.Lock] = {}  # id of a ParDo's receivers -> the lock of its bundles here
_CREATING = threading.Lock()


def _lock_of(receivers: Any) -> threading.Lock:
    with _CREATING:
        key = id(receivers)
        if key not in _LOCKS:
            _LOCKS[key] = threading.Lock()
            weakref.finalize(receivers, _LOCKS.pop, key, None)
        return _LOCKS[key]


def run_bundle(items: Iterable[Any], do_fn_invoker_args: Sequence[Any], do_fn_invoker_kwargs: dict[str, Any],
               tagged_receivers: Any) -> list[Any]:
    """One bundle of a ParDo; the outputs of this bundle only.

    Same arguments as ``apache_beam.runners.dask.transform_evaluator.apply_dofn_to_bundle``.
    """
    from apache_beam.runners.common import DoFnInvoker

    collected = tagged_receivers.values  # the list every receiver of this ParDo appends to
    with _lock_of(tagged_receivers):
        del collected[:]
        try:
            invoker = DoFnInvoker.create_invoker(*do_fn_invoker_args, **do_fn_invoker_kwargs)
            invoker.invoke_setup()
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(item)
            invoker.invoke_finish_bundle()
            invoker.invoke_teardown()
            return [value.value for value in collected]
        finally:
            del collected[:]


def install() -> None:
    """Makes the DaskRunner translate ParDos with :func:`run_bundle` (idempotent)."""
    from apache_beam.runners.dask import transform_evaluator

    transform_evaluator.apply_dofn_to_bundle = run_bundle
