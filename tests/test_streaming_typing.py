"""aop_client.streaming type-checks clean: mypy with the project's config and mypy --strict, no ``type: ignore``.

The package is public (StreamingClient, HybridClient), so its types are part of
its interface; the senders are typed against the StreamSender port instead of
mixins reaching into the client's private state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typecheck import ROOT, assert_clean, run_mypy

PACKAGE = ROOT / "aop_client" / "streaming"


@pytest.mark.parametrize("flags", [[], ["--strict"]], ids=["project-config", "strict"])
def test_streaming_package_type_checks_clean(flags: list[str], tmp_path: Path) -> None:
    """``mypy [--strict] aop_client/streaming`` (setup.cfg's [mypy] section) reports no error."""
    assert_clean(run_mypy([*flags, "aop_client/streaming"], tmp_path / "cache"))


def test_streaming_package_has_no_type_ignore() -> None:
    """No error is silenced: every module of the package type-checks as written."""
    offenders = [f"{p.name}:{n}" for p in sorted(PACKAGE.glob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1) if "type: ignore" in line]
    assert offenders == []
