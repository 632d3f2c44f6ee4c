"""The one error class a user may cause: bad input, with a message that names the problem and the fix.

Every error of nowcast that input can provoke (a bad file, parameter, store,
model choice) subclasses :class:`InputError`; the command line turns these
into ``<command>: error: <message>`` and exit status 2. Any other exception,
a plain ``ValueError`` from a library included, is a bug and keeps its
traceback (exit 1), so a bug is never reported as the user's mistake.
"""

from __future__ import annotations

from collections.abc import Iterator


class InputError(ValueError):
    """Bad input: the message names the problem and the fix (the command line exits 2).

    ``transient``: a state that passes by itself (a store another writer holds or is extending, an object
    store that did not answer); a flow's task retries it, where other bad input fails the same way again.
    """

    transient = False


def chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then the error it was raised from or while handling (``__cause__``, else
    ``__context__``), and so on: where a wrapped failure's own kind and message are found."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def retry_unless_bad_input(_task: object, _run: object, state: object) -> bool:
    """A Prefect task's ``retry_condition_fn``: retry a failure that may pass (a storage hiccup, a store
    held or being extended, an object store that did not answer: ``transient``), not bad input, which
    fails the same way again after the delay."""
    error = getattr(state, "data", None)
    return not isinstance(error, InputError) or error.transient
