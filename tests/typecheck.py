"""Run mypy on parts of aop_client, the way CI does (``.ci/run``), for the typing tests.

Import it from a test module (``tests`` is not a package; pytest's default
``prepend`` import mode puts this directory on ``sys.path``)::

    from typecheck import PUBLIC_MODULES, PACKAGE_SELECTION, run_mypy

The selections here are the ones ``.ci/run`` checks; change both together.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The public modules, checked with --strict: their types are part of the interface.
PUBLIC_MODULES = [
    "aop_client/__init__.py", "aop_client/client.py", "aop_client/config.py", "aop_client/trace_builder.py",
    "aop_client/toon_parser.py", "aop_client/errors.py", "aop_client/streaming",
]
# The package with the project's config (setup.cfg [mypy]), aop_client/store/ left out for now.
PACKAGE_SELECTION = ["--exclude", "^aop_client/store/", "aop_client"]


def run_mypy(args: list[str], cache_dir: Path, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m mypy ARGS`` from ``root`` (its setup.cfg [mypy] section applies), its tree imported.

    ``--follow-imports=silent``: modules outside ``args`` (the store, when it is left out) are
    analysed for the types they give but their own errors are not reported.
    """
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--cache-dir", str(cache_dir), *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    """mypy exited 0 and reported no error (its output is the failure message otherwise)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Success: no issues found"), proc.stdout + proc.stderr
