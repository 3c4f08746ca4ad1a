"""The optional extras of ``aop-client`` and the one way a message names them (:func:`install_hint`).

The base install is what the library needs to emit and deliver. Everything
else is an extra, and code that needs one says so in one line naming the
quoted ``pip install`` command (quoted: ``[...]`` is a glob in zsh and other
shells, so the unquoted form fails or installs the wrong thing there).
"""

from __future__ import annotations

from typing import Optional

__all__ = ["EXTRAS", "DISTRIBUTION", "install_hint", "extra_providing"]

DISTRIBUTION = "aop-client"

#: extra -> the import names of the packages it adds (pyproject.toml's optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "cli": ("click", "rich"),  # the ``aop`` command
    "fast": ("isal",),  # ISA-L gzip, 3-7x faster than zlib; zlib is used without it
    "streaming": ("websocket",),  # websocket-client, for streaming_mode="websocket"
    "collector": ("aiohttp",),  # the reference collector: ``aop serve``, ``aop demo``
}


def install_hint(*extras: str) -> str:
    """The shell command installing ``extras``, quoted: ``pip install 'aop-client[cli,collector]'``."""
    unknown = [e for e in extras if e not in EXTRAS]
    if not extras or unknown:
        raise ValueError(f"unknown extra(s) {unknown!r}; known: {sorted(EXTRAS)}")
    return f"pip install '{DISTRIBUTION}[{','.join(extras)}]'"


def extra_providing(module: Optional[str]) -> Optional[str]:
    """The extra whose package provides top-level import ``module`` (``"aiohttp"`` -> ``"collector"``), else None."""
    top = (module or "").partition(".")[0]
    return next((extra for extra, names in EXTRAS.items() if top in names), None)
