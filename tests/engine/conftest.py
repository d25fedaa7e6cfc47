"""The thread setting for one test of the engine."""
import pytest

from numpygpt.engine import parallel


@pytest.fixture
def threads():
    """parallel.set_threads for one test; the setting as it was afterwards."""
    before = parallel._state["threads"]
    yield parallel.set_threads
    parallel.set_threads(before)
