"""The built distributions: the base wheel in a fresh venv, the sdist's contents, and the metadata.

One module-scoped fixture copies the source tree (without caches) to a temp
dir and runs ``python -m build`` there: the sdist, then a wheel built *from
that sdist* (so the sdist is proven buildable). A fresh venv gets the wheel
with ``--no-deps`` plus exactly the base requirements read from the wheel's
metadata, from the configured package index; no extra is installed. About
15 s in all on the development machine.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_HINT = "aop: the command line needs extra packages (click, rich): pip install 'aop-client[cli]'"
#: distributions that only an extra may bring (pip names, lower-case).
EXTRA_ONLY = {"click", "rich", "isal", "aiohttp", "websocket-client"}
_JUNK = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", "*.pyc", "*.egg-info", "build", "dist",
                               ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", "site", "*.sqlite3*")


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH and virtualenv variables: the venv must import its own copy."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"sdist": ..., "wheel": ...} built by ``python -m build`` from a clean copy of the source tree."""
    base = tmp_path_factory.mktemp("dists")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_JUNK)
    out = base / "out"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=base, env=_clean_env(), timeout=180)
    (sdist,) = out.glob("aop_client-*.tar.gz")
    (wheel,) = out.glob("aop_client-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


def _base_requirements(meta: email.message.Message) -> list[str]:
    """Requires-Dist entries without an ``extra ==`` marker: what ``pip install aop-client`` brings."""
    return [r for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r]


def _req_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0].lower().replace("_", "-")


def _extra_requirements(meta: email.message.Message, extra: str) -> set[str]:
    pattern = re.compile(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""")
    return {_req_name(r) for r in meta.get_all("Requires-Dist", []) if pattern.search(r)}


@pytest.fixture(scope="module")
def base_venv(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and only its base requirements (from the index); returns its bin dir."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent, env=env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run(pip + ["--no-deps", str(dists["wheel"])], cwd=venv.parent, env=env)
    _run(pip + _base_requirements(_wheel_metadata(dists["wheel"])), cwd=venv.parent, env=env, timeout=180)
    return venv / "bin"


def test_the_base_install_pulls_no_extra_only_package(base_venv: Path):
    """``pip install aop-client`` installs neither click, rich, isal, aiohttp nor websocket-client."""
    listing = _run([str(base_venv / "python"), "-m", "pip", "list", "--format=json"], cwd=base_venv,
                   env=_clean_env())
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}
    assert "aop-client" in installed
    assert installed & EXTRA_ONLY == set()


_EMIT = r"""
import gzip, json, sys
import aop_client
from aop_client import AOPClient, ClientConfig
from aop_client import transport

client = AOPClient(ClientConfig(api_key="aop-test-api-key", org_salt_key="aop-test-org-salt-key",
                                base_url="http://127.0.0.1:9", agent_id=7, spool_dir=sys.argv[1]))
b = client.trace_builder
client.emit_event(b.create_reasoning(goal="g", steps=[], safety_checks=[], uncertainty="low"))
client.emit_event(b.create_final_output(text="done"))
stats = client.get_stats()
packer = transport._gzip_packer(1)
body = b'{"events": []}' * 100
blob = packer.compress(body) + packer.flush()
print(json.dumps({
    "file": aop_client.__file__, "stored": stats["stored"], "pending": stats["pending"],
    "isal": transport._isal_zlib is not None, "gunzip_ok": gzip.decompress(blob) == body,
    "extras_loaded": sorted(m for m in sys.modules
                            if m.partition(".")[0] in ("click", "rich", "isal", "aiohttp", "websocket")),
}))
"""


def test_the_base_install_emits_into_a_spool_and_gzips_with_zlib(base_venv: Path, tmp_path: Path):
    """In the base venv the library stores emitted events (no server) and gzips without isal."""
    out = _run([str(base_venv / "python"), "-c", _EMIT, str(tmp_path / "spool")], cwd=tmp_path, env=_clean_env())
    result = json.loads(out.stdout)
    assert Path(result["file"]).is_relative_to(base_venv.parent)  # the venv's copy, not the source tree
    assert result["stored"] == 2 and result["pending"] == 2
    assert result["isal"] is False and result["gunzip_ok"] is True
    assert result["extras_loaded"] == []


@pytest.mark.parametrize("argv", [["aop", "status"], ["aop", "serve", "--port", "0"], ["aop", "--help"], ["aop"]])
def test_the_aop_script_without_the_cli_extra_prints_one_line_and_exits_2(base_venv: Path, tmp_path: Path, argv):
    """The console script is installed by the base package; without click/rich it names the extra."""
    cmd = [str(base_venv / argv[0]), *argv[1:]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", CLI_HINT + "\n")


def test_python_m_aop_client_cli_without_the_cli_extra_says_the_same(base_venv: Path, tmp_path: Path):
    proc = subprocess.run([str(base_venv / "python"), "-m", "aop_client.cli", "status"], cwd=tmp_path,
                          env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", CLI_HINT + "\n")


def test_wheel_metadata_names_the_extras_versions_and_no_placeholder_url(dists: dict[str, Path]):
    meta = _wheel_metadata(dists["wheel"])
    base = {_req_name(r) for r in _base_requirements(meta)}
    assert base == {"urllib3", "rfc8785", "orjson", "toon-format"}
    assert _extra_requirements(meta, "cli") == {"click", "rich"}
    assert _extra_requirements(meta, "fast") == {"isal"}
    assert _extra_requirements(meta, "streaming") == {"websocket-client"}
    assert _extra_requirements(meta, "collector") == {"aiohttp"}
    dev_self = [set(m.group(1).split(",")) for r in meta.get_all("Requires-Dist", [])
                if "extra == \"dev\"" in r and (m := re.match(r"aop-client\[([\w,]+)\]", r))]
    assert dev_self == [{"cli", "fast", "streaming", "collector"}]  # dev keeps including everything
    classifiers = meta.get_all("Classifier", [])
    assert meta["Requires-Python"] == ">=3.10"
    versions = sorted(c.rsplit(":: ", 1)[1] for c in classifiers
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
    assert "Operating System :: POSIX" in classifiers
    assert not [c for c in classifiers if "Windows" in c or "OS Independent" in c]
    assert "example.com" not in str(meta) and not meta.get_all("Project-URL")
    assert "aop = aop_client.cli:main" in _wheel_text(dists["wheel"], ".dist-info/entry_points.txt")


def _wheel_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix)]
        return z.read(name).decode()


def test_the_sdist_holds_what_its_tests_docs_and_benchmarks_need(dists: dict[str, Path]):
    """Every file the source tree keeps under version control is in the sdist (no caches, no databases)."""
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in ("README.md", "LICENSE", "mkdocs.yml", "pyproject.toml", "tests/conftest.py",
                     "tests/vectors/signing-v1.json", "tests/test_toon_fixtures/fixtures.schema.json",
                     "tests/brief/product-brief.md", "fuzz/README.md", "docs/index.md", "examples/passive_mode.py",
                     "bench/bench_emit.py", "aop_client/py.typed"):
        assert required in names, required
    for top in ("tests", "fuzz", "bench", "docs", "examples"):
        expected = {str(p.relative_to(ROOT)) for p in (ROOT / top).rglob("*")
                    if p.is_file() and not _JUNK(str(p.parent), [p.name]) and "__pycache__" not in p.parts
                    and ".hypothesis" not in p.parts}
        missing = expected - names
        assert not missing, f"{top}: {sorted(missing)[:10]}"
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".sqlite3")) or ".hypothesis" in n]


def test_the_unpacked_sdist_runs_its_vector_and_fixture_tests(dists: dict[str, Path], tmp_path: Path):
    """The signing vectors, the TOON spec fixtures and the brief's snippets run from the sdist alone."""
    with tarfile.open(dists["sdist"]) as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (tree,) = tmp_path.glob("aop_client-*")
    env = {**_clean_env(), "PYTHONPATH": str(tree)}
    files = ["tests/test_signing.py", "tests/test_toon_conformance.py", "tests/test_brief_snippets.py"]
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=tree, env=env,
                timeout=180)
    assert re.search(r"\b\d{3,} passed\b", proc.stdout) and " skipped" not in proc.stdout, proc.stdout[-500:]


_IMPORT_ALL = r"""
import importlib, json, pkgutil
import aop_client
failed = {}
for mod in pkgutil.walk_packages(aop_client.__path__, "aop_client."):
    try:
        importlib.import_module(mod.name)
    except ImportError as e:
        failed[mod.name] = e.name
print(json.dumps(failed))
"""


def test_in_the_base_install_only_the_cli_commands_and_the_collector_need_an_extra(base_venv: Path, tmp_path: Path):
    """Every module imports without extras, except the click commands (cli) and the collector (aiohttp)."""
    out = _run([str(base_venv / "python"), "-c", _IMPORT_ALL], cwd=tmp_path, env=_clean_env())
    failed = json.loads(out.stdout)
    assert failed.pop("aop_client.collector") == "aiohttp"
    assert failed and set(failed.values()) == {"click"}
    assert {m for m in failed if not m.startswith("aop_client.cli.")} == set()
    assert "aop_client.cli.bounds" not in failed  # python -m aop_client.collector imports it
