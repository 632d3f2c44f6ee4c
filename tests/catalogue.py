"""docs/operations.md's fault catalogue, generated from the tests marked ``fault``.

A test that exercises a fault carries ``@pytest.mark.fault(area, fault, outcome)``:
the component, what goes wrong, and what nowcast does about it (what the test
checks). A parametrized test is one row. ``python -m tests.catalogue`` (``make
catalogue``) collects the suite and rewrites the table between the markers of
docs/operations.md; tests/test_catalogue.py fails when the table is out of date.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
# every collected item, kept by tests/conftest.py for tests/test_catalogue.py
ALL_ITEMS = pytest.StashKey[list]()
AREAS = ("ingest", "sources", "watch", "windows", "train", "models", "score", "flows", "backfill", "stores",
         "security", "command line")


def rows(items: Iterable[pytest.Item]) -> list[tuple[str, str, str, str]]:
    """(area, fault, outcome, test) per test function marked ``fault``, in catalogue order.

    A parametrized test is one row, its number of cases beside its name.
    """
    found: dict[str, tuple[str, str, str]] = {}
    cases: Counter[str] = Counter()
    for item in items:
        marker = item.get_closest_marker("fault")
        if marker is None:
            continue
        area, fault, outcome = marker.args
        if area not in AREAS:
            raise ValueError(f"{item.nodeid}: fault area {area!r} is not one of {AREAS}")
        test = item.nodeid.split("[")[0].split("@")[0]  # xdist's loadgroup appends "@<group>"
        found.setdefault(test, (area, fault, outcome))
        cases[test] += 1
    table = [(area, fault, outcome,
              f"`{test.split('/', 1)[-1]}`" + (f" ({cases[test]} cases)" if cases[test] > 1 else ""))
             for test, (area, fault, outcome) in found.items()]
    return sorted(table, key=lambda row: (AREAS.index(row[0]), row[1]))


def table(found: list[tuple[str, str, str, str]]) -> str:
    lines = [f"{len(found)} faults, each a test (last column: its file and name under tests/).", "",
             "| # | area | fault | what nowcast does (what the test checks) | test |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {area} | {fault} | {outcome} | {test} |"
              for i, (area, fault, outcome, test) in enumerate(found, 1)]
    return "\n".join(lines)


def render(text: str, found: list[tuple[str, str, str, str]]) -> str:
    """``text`` (docs/operations.md) with the table between the markers replaced."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(found)}\n{END}{tail}"


class _Collector:
    def __init__(self) -> None:
        self.items: list[pytest.Item] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = list(session.items)


def main() -> int:
    collector = _Collector()
    code = pytest.main(["--collect-only", "-q", "-p", "no:randomly", str(DOC.parents[1] / "tests")],
                       plugins=[collector])
    if code != 0:
        return int(code)
    found = rows(collector.items)
    DOC.write_text(render(DOC.read_text(), found))
    print(f"wrote {len(found)} cases to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
