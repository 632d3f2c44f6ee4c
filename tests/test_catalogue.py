"""The fault catalogue in docs/operations.md is the one the tests define, and it is not short."""

from __future__ import annotations

import pytest

from tests.catalogue import ALL_ITEMS, DOC, render, rows

MINIMUM = 40  # issue 15: at least 40 cases across ingest, watch, windows, train, score, backfill, stores


def test_the_fault_catalogue_in_the_docs_is_generated_from_the_tests(request):
    if request.config.args_source != pytest.Config.ArgsSource.TESTPATHS or request.config.option.keyword \
            or request.config.option.markexpr:
        pytest.skip("compares against the whole suite's collection: run plain `pytest`")
    found = rows(request.config.stash[ALL_ITEMS])
    assert len(found) >= MINIMUM
    assert DOC.read_text() == render(DOC.read_text(), found), "stale catalogue: run `make catalogue`"

