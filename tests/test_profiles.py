"""The Hypothesis profiles of tests/conftest.py under pytest-xdist (issue 18, item 4): the suite runs with
`python -m pytest -n auto`, and the example database must be safe with several worker processes."""

from hypothesis import settings


def test_the_default_profile_is_derandomized_and_has_no_example_database():
    """CI's profile: every worker draws the same examples every run and reads and writes no database."""
    default = settings.get_profile("default")
    assert default.derandomize and default.database is None


def test_the_thorough_profile_explores_and_shares_one_directory_database_between_workers():
    """Freshly random, with Hypothesis's directory database in the working folder: one for all workers, not one
    per worker, so that a failure one worker found replays in whichever worker runs that test next."""
    thorough = settings.get_profile("thorough")
    assert not thorough.derandomize and thorough.max_examples == 2000
    path = getattr(thorough.database, "path", None)
    assert path is not None and path.parts[-2:] == (".hypothesis", "examples"), thorough.database
