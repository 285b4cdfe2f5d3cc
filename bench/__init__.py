"""The benchmark engine (``python -m bench``) and its core (``bench.core``).

Importing the package applies the suite's thread rule (:mod:`bench.core.threads`) before torch
is loaded, so every entry point - the CLI, the tests, worker processes - runs with the same
threads and OpenMP wait policy.
"""

from bench.core.threads import apply_threads as _apply_threads

_apply_threads()
