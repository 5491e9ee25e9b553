"""Everything the service knows of Optuna that Optuna does not publish: the SQL on its own tables
(rows.py for the worker protocol's writes and reads, reads.py for the flat path's and the
dashboard's), its RDBStorage's numbering of new trials (numbering.py), the grid sampler's
insides (grid.py) and the private names of its objects (internals.py).

Nothing outside this package imports an Optuna private module or reads a private attribute of
an Optuna object (tests/test_imports.py). The Optuna versions this package is tested against
are the ones pyproject.toml allows; tests/test_optuna_storage_suite.py runs Optuna's own
storage tests against the storage built here, and tests/test_coordination.py checks the rows
written here through Optuna's public API."""
