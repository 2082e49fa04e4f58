"""Fixtures shared by the test modules."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A fresh LIT_ORTHO_CACHE per test module, so built-in data sets are prepared in a temp dir."""
    old = os.environ.get("LIT_ORTHO_CACHE")
    path = tmp_path_factory.mktemp("cache")
    os.environ["LIT_ORTHO_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LIT_ORTHO_CACHE")
    else:
        os.environ["LIT_ORTHO_CACHE"] = old
