"""bnconf's pytest suite, installed with bnconf so that any project can run it on its own backend.

    python -m pytest --pyargs bnconf.testing --bnconf-backend my_pkg.bn:BACKEND [--bnconf-records my_pkg/records.py:RECORDS]

`plugin` (the `pytest11` entry point `bnconf`) registers the `--bnconf-*` options and nothing else unless they are
used; `test_conformance`, `test_state_machine`, `test_edge_cases` and `test_inference` are the backend-generic
tests, parametrised over the selected backends (`support`). Importing this package imports nothing.
"""
