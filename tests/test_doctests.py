"""The examples in the package's docstrings run, under the names the package installs them as."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.test_layers import modules

WITH_EXAMPLES = [module for module, path in modules() if ">>> " in path.read_text()]


def test_some_modules_carry_examples():
    assert len(WITH_EXAMPLES) >= 5


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
