"""Missing extras: every message names the quoted install command; the code without an optional package still works.

A missing package is simulated in a fresh interpreter with ``sys.modules[name]
= None`` (what import does for a package that is not there: ImportError with
``name`` set). tests/test_packaging.py checks the same in a real venv without
the extras.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aop_client import cli
from aop_client.extras import EXTRAS, extra_providing, install_hint

ROOT = Path(__file__).resolve().parents[1]
QUOTED = re.compile(r"pip install '[^'\s]+'")
UNQUOTED = re.compile(r"pip install\s+(?:-e\s+)?(?!')(?:\.|[\w.-]*aop-client)\[")


def _without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which ``modules`` cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_install_hint_is_the_quoted_command():
    assert install_hint("cli") == "pip install 'aop-client[cli]'"
    assert install_hint("cli", "collector") == "pip install 'aop-client[cli,collector]'"
    with pytest.raises(ValueError, match="unknown extra"):
        install_hint("speed")


def test_extras_match_pyproject():
    """aop_client.extras names exactly the optional-dependency groups of pyproject.toml (besides dev)."""
    import tomllib

    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(groups) - {"dev"} == set(EXTRAS)
    assert f"aop-client[{','.join(EXTRAS)}]" in groups["dev"]
    assert extra_providing("aiohttp.web") == "collector" and extra_providing("websocket") == "streaming"
    assert extra_providing("isal") == "fast" and extra_providing("click") == "cli" and extra_providing("os") is None


def test_no_unquoted_install_hint_in_the_package_docs_or_examples():
    """``pip install aop-client[x]`` fails in zsh (a glob): every hint the project prints or documents is quoted."""
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("examples/*.py"), *ROOT.glob("aop_client/**/*.py"),
             *ROOT.glob("fuzz/*"), *ROOT.glob("bench/*.py")]
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in files if p.is_file()
                 for n, line in enumerate(p.read_text().splitlines(), 1) if UNQUOTED.search(line)]
    assert offenders == []


def test_missing_cli_extra_is_one_quoted_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rich", None)
    assert cli.missing_cli_packages() == ["rich"]
    assert cli.main(["status"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "aop: the command line needs extra packages (rich): pip install 'aop-client[cli]'\n"


def test_streaming_without_websocket_client_names_the_quoted_extra():
    proc = _without(["websocket"], (
        "from aop_client.streaming.client import _load_websocket\n"
        "from aop_client.errors import StreamingUnavailableError\n"
        "try:\n    _load_websocket()\nexcept StreamingUnavailableError as e:\n    print(e)\n"))
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'aop-client[streaming]'" in proc.stdout


def test_the_collector_package_without_aiohttp_names_the_quoted_extra():
    proc = _without(["aiohttp"], "import aop_client.collector\n")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "ImportError: the reference collector needs aiohttp: pip install 'aop-client[collector]'"


@pytest.mark.parametrize("argv", [["serve", "--port", "0"], ["demo", "--workers", "1", "--events", "5"]])
def test_aop_serve_and_demo_without_the_collector_extra_print_one_line(argv):
    proc = _without(["aiohttp"], f"from aop_client.cli import main\nsys.exit(main({argv!r}))\n")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("aop: error: this command needs the 'collector' extra (aiohttp is not installed): "
                           "pip install 'aop-client[collector]'\n")
    assert QUOTED.search(proc.stderr)


def test_python_m_aop_client_collector_needs_no_cli_extra():
    """The collector's own argparse CLI runs with click and rich absent (``--help`` parses its options)."""
    proc = _without(["click", "rich"], "sys.argv = ['aop_client.collector', '--help']\nimport runpy\n"
                                       "runpy.run_module('aop_client.collector', run_name='__main__')\n")
    assert proc.returncode == 0, proc.stderr
    assert "--header-timeout" in proc.stdout


def test_gzip_without_isal_falls_back_to_zlib_on_both_ends():
    """Without the ``fast`` extra the client's gzip and the collector's gunzip (bounds, errors) still work."""
    proc = _without(["isal"], (
        "from aop_client import transport\n"
        "from aop_client.collector import protocol\n"
        "assert transport._isal_zlib is None and protocol._inflate.__name__ == 'zlib'\n"
        "body = b'{\"events\": []}' * 1000\n"
        "p = transport._gzip_packer(1)\n"
        "blob = p.compress(body) + p.flush()\n"
        "assert protocol.decode_body(blob, 'gzip', max_decompressed=len(body)) == body\n"
        "for bad, limit, status in ((blob, len(body) - 1, 413), (blob[:-9], len(body), 400),\n"
        "                           (b'\\x1f\\x8b' + b'x' * 30, len(body), 400)):\n"
        "    try:\n"
        "        protocol.decode_body(bad, 'gzip', max_decompressed=limit)\n"
        "    except protocol.RequestRefused as e:\n"
        "        assert e.status == status, (e.status, status)\n"
        "    else:\n"
        "        raise AssertionError('accepted')\n"
        "print('ok')\n"))
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr
