"""The spool identity file and `aop spool adopt`: what binds a spool, what is refused, what is never written."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client import AOPClient, ClientConfig
from aop_client.cli import main
from aop_client.config import normalized_base_url
from aop_client.errors import ConfigError, StoreError
from aop_client.spool_identity import (
    IDENTITY_FILE, differing_fields, make_identity, read_identity, write_identity,
)
from aop_client.store import DiskStore
from aop_client.testing import wait_until

SOAK = os.environ.get("AOP_SOAK") == "1"
URLS = ("http://127.0.0.1:8000", "http://127.0.0.1:8001", "https://aop.example", "https://aop.example/v2")
secret = st.text(min_size=0, max_size=12)


def config(url: str = "http://127.0.0.1:9", key: str = "key-1", salt: Optional[str] = "salt-1",
           spool: Optional[Path] = None, **extra: Any) -> ClientConfig:
    return ClientConfig(base_url=url, api_key=key, org_salt_key=salt,
                        spool_dir=None if spool is None else str(spool), **extra)


def fill(spool: Path, n: int = 3, **fields: Any) -> AOPClient:
    """A client on ``spool`` (bound to its credentials) that stored n events and did not send them."""
    client = AOPClient(config(spool=spool, **fields))
    for i in range(n):
        assert client.emit_event(client.trace_builder.create_custom(name="n", data={"i": i}))
    return client


@settings(max_examples=500 if SOAK else 100, deadline=None)
@given(a=st.tuples(st.sampled_from(URLS), secret, st.none() | secret.filter(bool)),
       b=st.tuples(st.sampled_from(URLS), secret, st.none() | secret.filter(bool)))
def test_an_identity_accepts_exactly_the_identical_triple(a, b):
    """differing_fields names exactly the fields of (base_url, api_key, org_salt_key) that differ."""
    identity = make_identity(config(*a))
    assert differing_fields(identity, config(*a)) == []
    expected = [name for name, x, y in zip(("base_url", "api_key", "org_salt_key"), a, b) if x != y]
    assert differing_fields(identity, config(*b)) == expected


def test_keys_that_hmac_pads_alike_are_different_keys():
    """HMAC pads short keys with zero bytes: the fingerprint still tells "k" from "k\\0"."""
    for a, b in (("k", "k\0"), ("", "\0"), ("x" * 70, "x" * 70 + "\0")):
        assert differing_fields(make_identity(config(key=a, salt=a or None)), config(key=b, salt=b)) == \
            ["api_key", "org_salt_key"]


def test_base_urls_naming_one_server_share_an_identity():
    """Case of scheme and host, a default port and a trailing slash do not make another destination."""
    assert normalized_base_url("HTTP://Aop.Example:80/") == normalized_base_url("http://aop.example") == \
        "http://aop.example"
    assert normalized_base_url("https://h:443/api/") == "https://h/api"
    assert normalized_base_url("https://user:pw@h:8443") == "https://h:8443"  # no user info written
    assert differing_fields(make_identity(config("http://H:80/")), config("http://h")) == []


def test_the_identity_file_is_private_and_holds_no_secret(tmp_path):
    """0600, the URL in clear, fingerprints (keyed, with a per-spool nonce) instead of secrets."""
    client = fill(tmp_path / "s", key="api-key-in-clear", salt="salt-in-clear")
    path = tmp_path / "s" / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "api-key-in-clear" not in text and "salt-in-clear" not in text and "http://127.0.0.1:9" in text
    other = make_identity(client.config)
    assert other["nonce"] != read_identity(tmp_path / "s")["nonce"]
    assert other["api_key"] != read_identity(tmp_path / "s")["api_key"]  # fingerprints differ per spool
    assert read_identity(tmp_path / "s")["org_salt_key"] is not None
    assert make_identity(config(salt=None))["org_salt_key"] is None


def test_a_token_in_the_base_url_is_never_written_nor_quoted(tmp_path):
    """User info and the query string may hold a token: the identity keeps a fingerprint of them, never the text."""
    spool = tmp_path / "s"
    fill(spool, 1, url="http://user:pw-tok3n@127.0.0.1:9/api?token=q-tok3n#frag")
    assert b"tok3n" not in (spool / IDENTITY_FILE).read_bytes()
    assert read_identity(spool)["base_url"] == "http://127.0.0.1:9/api"
    for other in ("http://127.0.0.1:9/api?token=other-tok3n", "http://127.0.0.1:9/api"):
        with pytest.raises(ConfigError) as refused:
            AOPClient(config(url=other, spool=spool)).store
        assert refused.value.fields == ("base_url",) and "tok3n" not in str(refused.value)
    assert AOPClient(config(url="http://127.0.0.1:9/api?token=q-tok3n", spool=spool)).store


def test_each_differing_field_is_named_alone(tmp_path):
    """A client differing in one field is refused with that field (and the way out), nothing else."""
    spool = tmp_path / "s"
    fill(spool)
    for changed, name in ((dict(url="http://127.0.0.1:10"), "base_url"), (dict(key="key-2"), "api_key"),
                          (dict(salt="salt-2"), "org_salt_key"), (dict(salt=None), "org_salt_key")):
        with pytest.raises(ConfigError) as refused:
            AOPClient(config(spool=spool, **changed)).start()
        assert refused.value.fields == (name,) and refused.value.field == name
        assert "key-1" not in str(refused.value) and "salt-1" not in str(refused.value)
        assert f"aop spool adopt --spool {spool}" in str(refused.value)
        again = pickle.loads(pickle.dumps(refused.value))  # crosses process boundaries intact
        assert type(again) is ConfigError and again.fields == (name,) and str(again) == str(refused.value)


BINDER = """
import sys
from aop_client import AOPClient, ClientConfig
from aop_client.errors import ConfigError
client = AOPClient(ClientConfig(base_url="http://127.0.0.1:9", api_key=sys.argv[2], org_salt_key="salt-1",
                                spool_dir=sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()  # the barrier: both are released together
try:
    client.store
except ConfigError as e:
    print("refused", ",".join(e.fields), flush=True)
else:
    print("bound", flush=True)
"""


def test_binding_is_created_once_even_when_two_processes_race(tmp_path):
    """Two processes with other credentials open one new spool at once: one binds it, the other is refused."""
    import subprocess
    import sys

    spool = tmp_path / "s"
    procs = [subprocess.Popen([sys.executable, "-c", BINDER, str(spool), key], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for key in ("key-1", "key-2")]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        for p in procs:
            p.stdin.write("\n")
        for p in procs:
            p.stdin.flush()
        outcomes = [p.stdout.readline().strip() for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            assert p.wait(30) == 0
    assert sorted(outcomes) == ["bound", "refused api_key"], outcomes
    winner = ("key-1", "key-2")[outcomes.index("bound")]
    assert differing_fields(read_identity(spool), config(key=winner)) == []
    assert not [p.name for p in spool.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_write_identity_never_overwrites_without_replace(tmp_path):
    (tmp_path / "s").mkdir()
    first, second = make_identity(config()), make_identity(config(key="other"))
    assert write_identity(tmp_path / "s", first) is True
    assert write_identity(tmp_path / "s", second) is False
    assert read_identity(tmp_path / "s") == first
    assert [p.name for p in (tmp_path / "s").iterdir()] == [IDENTITY_FILE]  # no temporary file left


def test_a_planted_link_or_damaged_identity_is_refused_not_followed(tmp_path):
    """A symlink at identity.json is never followed or written through; a damaged file is a StoreError."""
    spool = tmp_path / "s"
    fill(spool).store.close()
    target = tmp_path / "elsewhere.json"
    target.write_text((spool / IDENTITY_FILE).read_text())
    (spool / IDENTITY_FILE).unlink()
    (spool / IDENTITY_FILE).symlink_to(target)
    with pytest.raises(StoreError, match="not a link"):
        AOPClient(config(spool=spool)).start()
    (spool / IDENTITY_FILE).unlink()
    (spool / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        AOPClient(config(spool=spool)).start()


def test_an_unbound_spool_is_bound_only_by_the_salt_that_signed_its_events(tmp_path):
    """A spool of an earlier release (no identity) holding events signed with salt-1: a client with salt-2,
    or without a salt, is refused; the client with salt-1 binds it."""
    spool = tmp_path / "s"
    fill(spool).store.close()
    (spool / IDENTITY_FILE).unlink()  # as an earlier release left it
    for salt in ("salt-2", None):
        with pytest.raises(ConfigError, match="not (signed with this org_salt_key|unsigned)"):
            AOPClient(config(spool=spool, salt=salt)).start()
        assert not (spool / IDENTITY_FILE).exists()
    client = AOPClient(config(spool=spool))
    assert client.store.stats().pending == 3 and read_identity(spool) is not None


# -- aop spool adopt ---------------------------------------------------------------------------


def adopt(spool: Path, *args: str, url: str = "http://127.0.0.1:9", key: str = "key-1",
          salt: str = "salt-1") -> int:
    return main(["spool", "adopt", "--spool", str(spool), "--base-url", url, "--api-key", key, "--key", salt, *args])


def test_adopt_moves_a_spool_to_a_new_api_key_and_url(tmp_path, capsys, aop_collector):
    """Key rotation: the new credentials are refused until `aop spool adopt`; then they drain every pending
    event to the new server, and the old credentials are refused."""
    spool = tmp_path / "s"
    stored = fill(spool, 5, salt=aop_collector.org_salt_key)
    stored.store.close()
    new = config(aop_collector.url, aop_collector.api_key, aop_collector.org_salt_key, spool,
                 batch_interval=0.05, retry_backoff_base=0.01, retry_backoff_max=0.2)
    with pytest.raises(ConfigError, match="aop spool adopt"):
        AOPClient(new).start()
    assert adopt(spool, url=aop_collector.url, key=aop_collector.api_key, salt=aop_collector.org_salt_key) == 0
    assert "adopted (base_url, api_key changed)" in capsys.readouterr().out
    client = AOPClient(new).start()
    try:
        assert client.flush(timeout=30)
    finally:
        stopped = client.stop(timeout=5)
    assert stopped
    assert len(aop_collector.event_ids()) == 5
    with pytest.raises(ConfigError) as refused:
        AOPClient(config(spool=spool, salt=aop_collector.org_salt_key)).start()
    assert refused.value.fields == ("base_url", "api_key")
    assert adopt(spool, url=aop_collector.url, key=aop_collector.api_key, salt=aop_collector.org_salt_key) == 0
    assert "already bound" in capsys.readouterr().out


def test_adopt_refuses_a_new_salt_while_events_of_the_old_one_are_pending(tmp_path, capsys):
    """Pending events signed with salt-1: adopting for salt-2 is refused (exit 2, drain first) and nothing
    changes; --force adopts."""
    spool = tmp_path / "s"
    fill(spool).store.close()
    before = (spool / IDENTITY_FILE).read_bytes()
    assert adopt(spool, salt="salt-2") == 2
    err = capsys.readouterr().err
    assert "3 of 3 sampled undelivered events" in err and "aop flush" in err and "--force" in err
    assert (spool / IDENTITY_FILE).read_bytes() == before
    AOPClient(config(spool=spool)).start().stop(timeout=0.5, flush=False)  # still the old credentials' spool
    assert adopt(spool, "--force", salt="salt-2") == 0
    assert "warning: 3 of 3" in capsys.readouterr().err
    assert differing_fields(read_identity(spool), config(salt="salt-2")) == []


def test_adopt_refuses_while_a_flusher_holds_the_spool(tmp_path, capsys):
    """A live flusher sends under the credentials it started with: adopt refuses until it stops."""
    spool = tmp_path / "s"
    holder = fill(spool, 1)
    holder.start()
    try:
        wait_until(lambda: holder.get_stats()["is_flusher"], timeout=10)
        assert adopt(spool, key="key-2") == 2
        assert f"process {os.getpid()}" in capsys.readouterr().err
        assert adopt(spool) == 0 and "already bound" in capsys.readouterr().out  # nothing to change: no refusal
        assert adopt(spool, "--force", key="key-2") == 2  # --force never overrides a running flusher
    finally:
        holder.stop(timeout=0.5, flush=False)
    # stopped, it may still emit under the old key: its open segment is a live writer
    assert adopt(spool, "--force", key="key-2") == 2
    assert "still open for writing" in capsys.readouterr().err
    holder.store.close()
    assert adopt(spool, key="key-2") == 0
    assert differing_fields(read_identity(spool), config(key="key-2")) == []


def test_adopt_holds_the_flusher_lock_so_no_flusher_starts_meanwhile(tmp_path, monkeypatch):
    """While adopt runs (between its checks and the new identity) no other process can become the flusher."""
    from aop_client import spool_identity
    from aop_client.election import FlusherElection

    spool = tmp_path / "s"
    fill(spool, 2).store.close()
    seen = []
    real = spool_identity.write_identity

    def write(directory, identity, **kw):
        with FlusherElection(directory) as other:
            seen.append(other.try_acquire())
        return real(directory, identity, **kw)

    monkeypatch.setattr(spool_identity, "write_identity", write)
    assert adopt(spool, key="key-2") == 0
    assert seen == [False]
    with FlusherElection(spool) as after:  # released once done
        assert after.try_acquire()


def test_adopt_needs_an_existing_spool(tmp_path, capsys, monkeypatch):
    """No --spool (nor AOP_SPOOL_DIR), or a directory that is no spool: exit 2, nothing created."""
    monkeypatch.delenv("AOP_SPOOL_DIR", raising=False)
    assert main(["spool", "adopt", "--api-key", "k"]) == 2
    assert "--spool DIR" in capsys.readouterr().err
    assert adopt(tmp_path / "missing") == 2
    assert not (tmp_path / "missing").exists()


def test_without_a_salt_only_an_unsigned_backlog_is_bound(tmp_path):
    """Without a salt, a client binds only a backlog of unsigned events (a signed one is another deployment's)."""
    spool = tmp_path / "s"
    fill(spool, 2, salt=None).store.close()
    (spool / IDENTITY_FILE).unlink()
    with pytest.raises(ConfigError):
        AOPClient(config(spool=spool, salt="salt-1")).start()
    assert AOPClient(config(spool=spool, salt=None)).store.stats().pending == 2
    with DiskStore(spool) as store:
        assert len(store.sample_undelivered(64)) == 2


def test_aop_flush_with_other_credentials_is_refused_and_sends_nothing(tmp_path, capsys, aop_collector):
    """`aop flush` on a spool of other credentials: exit 2, the field named, no event at the server, all kept."""
    spool = tmp_path / "s"
    fill(spool, 4, salt=aop_collector.org_salt_key).store.close()  # bound to http://127.0.0.1:9
    code = main(["flush", "--spool", str(spool), "--base-url", aop_collector.url, "--api-key",
                 aop_collector.api_key, "--key", aop_collector.org_salt_key, "--timeout", "5", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "base_url" in err and "aop spool adopt" in err and aop_collector.api_key not in err
    assert aop_collector.event_ids() == set()
    with DiskStore(spool) as store:
        assert store.stats().pending == 4


def test_a_flusher_re_reads_the_identity_at_each_win_and_never_sends_for_another(tmp_path, caplog, aop_collector):
    """Rebound while this client was not the flusher: once it wins it steps down, reports once, sends nothing."""
    import logging

    from aop_client.election import FlusherElection

    caplog.set_level(logging.WARNING)
    spool = tmp_path / "s"
    blocker = FlusherElection(spool)
    assert blocker.try_acquire()  # another process is the flusher for now
    client = fill(spool, 3, url=aop_collector.url, key=aop_collector.api_key, salt=aop_collector.org_salt_key,
                  batch_interval=0.01)
    client.start()
    try:
        write_identity(spool, make_identity(config(url=aop_collector.url, key="key-2",
                                                   salt=aop_collector.org_salt_key)), replace=True)
        blocker.close()
        wait_until(lambda: "api_key differs" in (client.get_stats()["last_error"] or "") or aop_collector.event_ids(),
                   timeout=10)
        assert aop_collector.event_ids() == set()
        checks = []
        check = client._flusher.check_identity
        client._flusher.check_identity = lambda: (checks.append(1), check())
        wait_until(lambda: len(checks) >= 5, timeout=10)  # it keeps campaigning, and keeps stepping down
        stats = client.get_stats()
        assert "api_key differs" in stats["last_error"] and not stats["is_flusher"]
        assert aop_collector.event_ids() == set() and stats["delivered"] == 0
        lines = [r for r in caplog.records if "api_key differs" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    finally:
        client.stop(timeout=0.5, flush=False)
