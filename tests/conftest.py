"""Fixtures shared by the test modules; helpers live in _helpers.py.

The tests import the installed fastopt and the test extra's packages: if the Python running
pytest has not got them (a pytest from another environment than the one fastopt was installed
into, or ``pip install .`` without the extra), pytest stops at once with an error that says
how to install them there, instead of one "No module named" error per test module.
"""
import importlib.util
import sys

import pytest

try:
    import fastopt  # noqa: F401
except ImportError as error:   # not installed here, or the uncompiled source folder
    _MISSING = f"fastopt cannot be imported ({error})"
else:
    _MISSING = None
    if importlib.util.find_spec("hypothesis") is None:
        _MISSING = "the test extra is not installed (no module named 'hypothesis')"

if _MISSING is None:
    from _helpers import CONFIGS, config_id
else:
    CONFIGS, config_id = [], None


def pytest_configure(config):
    if _MISSING is not None:
        raise pytest.UsageError(
            f"{_MISSING} in the Python that runs pytest, {sys.executable}. Install fastopt "
            f"with the test extra into that same environment, from the source folder: "
            f"{sys.executable} -m pip install \".[test,mpi]\" (or activate the environment "
            f"you installed fastopt into and run its pytest); then run `pytest` as the "
            f"README says.")


@pytest.fixture(params=CONFIGS, ids=[config_id(c) for c in CONFIGS])
def config(request):
    """Each optimizer of the book, and each variant option, as (class name, options)."""
    return request.param
