"""Fixtures shared by the test modules; helpers live in _helpers.py."""
import pytest

from _helpers import CONFIGS, config_id


@pytest.fixture(params=CONFIGS, ids=[config_id(c) for c in CONFIGS])
def config(request):
    """Each optimizer of the book, and each variant option, as (class name, options)."""
    return request.param
