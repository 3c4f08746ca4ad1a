"""A spool prepared by someone else (issue 12, part 1): foreign or writable directories, planted symlinks,
foreign segment and index files, and root's read-only inspection. Runs as root (here and in CI), so the
"other user" is uid 65534 (nobody), made with os.chown or a real process started as that user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client import AOPClient, ClientConfig
from aop_client.election import LOCK_FILE_NAME, FlusherElection
from aop_client.errors import StoreError
from aop_client.signing import signed_body
from aop_client.store import DiskStore
from aop_client.store.readonly import READ_ONLY_METHODS
from aop_client.store.records import encode_record
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY
from aop_client.trace_builder import TraceBuilder
from test_cli import aop_env, run_aop
from test_store_hostile_env import NOBODY, _as_nobody, _drain, shared_base  # noqa: F401  (a fixture)


def _fill(store: DiskStore, n: int, prefix: str = "e") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for i, event_id in enumerate(ids):
        assert store.append(event_id, "run", i, b'{"x":1}').stored
    return ids


def _victim(tmp_path: Path) -> tuple[Path, bytes]:
    """A file a planted symlink points at; it must never change."""
    victim = tmp_path / "victim"
    content = b"precious data, not a spool file\n" * 100
    victim.write_bytes(content)
    return victim, content


def _tree(root: Path) -> dict:
    """Every entry under root (and root itself): type, owner, mode, size, mtime and content hash."""
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_uid, stat.S_IMODE(st.st_mode),
                                             st.st_size, st.st_mtime_ns, digest)
    return out


# -- directories ---------------------------------------------------------------------------------------------


def test_an_existing_0777_directory_of_another_uid_is_refused_and_left_untouched(tmp_path) -> None:
    """The issue's reproduction: a pre-existing spool owned by uid 65534, mode 0777, is refused by name, owner, mode."""
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, NOBODY, NOBODY)
    os.chmod(spool, 0o777)
    with pytest.raises(StoreError) as info:
        DiskStore(spool)
    message = str(info.value)
    assert str(spool) in message and f"uid {NOBODY}" in message and "0777" in message
    assert "`sudo -u '#65534'" in message  # we are root here: the advice is to run as the owner
    assert list(spool.iterdir()) == []  # nothing created in it
    assert stat.S_IMODE(os.lstat(spool).st_mode) == 0o777  # and nothing chmod'ed


def test_a_user_given_someone_elses_spool_is_told_to_use_their_own(shared_base) -> None:
    """As uid 65534, a root-owned 0777 spool (which that user could fill with forged files) is refused too."""
    spool = os.path.join(shared_base, "spool")
    os.mkdir(spool)
    os.chmod(spool, 0o777)

    def child() -> dict:
        try:
            DiskStore(spool)
        except StoreError as e:
            return {"error": str(e)}
        return {"error": None}

    error = _as_nobody(child)["error"]
    assert error and spool in error and "owner uid 0" in error and "spool_dir of your own" in error
    assert os.listdir(spool) == []


def test_a_foreign_directory_is_refused_even_when_private(tmp_path) -> None:
    """Owned by another uid with mode 0700: still not ours (root could open it, and must not)."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    os.chown(spool, NOBODY, NOBODY)
    with pytest.raises(StoreError, match=f"uid {NOBODY}"):
        DiskStore(spool)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_our_directory_writable_by_group_or_others_is_refused_with_what_to_do(tmp_path, mode) -> None:
    """Our own spool that group/others may write: refused (files may be planted), with `chmod 700 DIR` advice."""
    spool = tmp_path / "spool"
    DiskStore(spool).close()
    os.chmod(spool, mode)
    with pytest.raises(StoreError) as info:
        DiskStore(spool)
    assert f"chmod 700 {spool}" in str(info.value) and f"{mode:04o}" in str(info.value)
    assert stat.S_IMODE(os.lstat(spool).st_mode) == mode


def test_our_directory_readable_by_others_is_made_private(tmp_path) -> None:
    """0755 lets others read (the index, the segments) but never write: tightened to 0700, not refused."""
    spool = tmp_path / "spool"
    DiskStore(spool).close()
    os.chmod(spool, 0o755)
    os.chmod(spool / "segments", 0o750)
    with DiskStore(spool) as store:
        assert store.append("e", "r", 1, b"x").stored
    assert stat.S_IMODE(os.lstat(spool).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(spool / "segments").st_mode) == 0o700


@settings(max_examples=60, deadline=None)
@given(mode=st.integers(0, 0o777), owner=st.sampled_from([0, NOBODY]),
       inner=st.sampled_from([None, "segments", "quarantine"]))
def test_a_spool_directory_is_accepted_exactly_when_ours_and_writable_by_no_one_else(mode, owner, inner) -> None:
    """For every mode and owner of the spool or a directory in it: opened iff ours and not group/other-writable
    (then 0700), else a StoreError naming it, with the mode left as it was. (We are root: 0 is us.)"""
    base = tempfile.mkdtemp(prefix="aop-mode-")
    try:
        spool = os.path.join(base, "spool")
        DiskStore(spool).close()
        target = spool if inner is None else os.path.join(spool, inner)
        os.chown(target, owner, owner)
        os.chmod(target, mode | 0o700)  # the owner bits stay usable: only the others' bits are in question
        ours = owner == os.geteuid() and not mode & 0o022
        if ours:
            DiskStore(spool).close()
            assert stat.S_IMODE(os.lstat(target).st_mode) == 0o700
        else:
            with pytest.raises(StoreError) as info:
                DiskStore(spool)
            assert target in str(info.value)
            assert stat.S_IMODE(os.lstat(target).st_mode) == mode | 0o700
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("name", ["segments", "quarantine"])
@pytest.mark.parametrize("problem", ["foreign", "writable", "symlink", "file"])
def test_a_bad_directory_inside_the_spool_is_refused(tmp_path, name, problem) -> None:
    """segments/ and quarantine/ are checked like the root: another uid's, group/other-writable, a symlink, a file."""
    spool = tmp_path / "spool"
    DiskStore(spool).close()
    inner = spool / name
    if problem == "foreign":
        os.chown(inner, NOBODY, NOBODY)
    elif problem == "writable":
        os.chmod(inner, 0o777)
    elif problem == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        shutil.rmtree(inner)
        inner.symlink_to(elsewhere)
    else:
        shutil.rmtree(inner)
        inner.write_bytes(b"")
    with pytest.raises(StoreError) as info:
        DiskStore(spool)
    assert str(inner) in str(info.value)
    if problem == "symlink":
        assert list((tmp_path / "elsewhere").iterdir()) == []  # never followed


def test_missing_parents_are_created_0700_one_by_one(tmp_path) -> None:
    """os.makedirs would give the parents 0755 under umask 022: every directory created is 0700."""
    old = os.umask(0o022)
    try:
        DiskStore(tmp_path / "a" / "b" / "c" / "spool").close()
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c", tmp_path / "a" / "b" / "c" / "spool"):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700, path


def test_a_spool_under_a_world_writable_non_sticky_parent_is_refused(tmp_path) -> None:
    """Anyone may rename entries of a 0777 directory without the sticky bit, so the spool could be swapped."""
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(StoreError, match="sticky"):
        DiskStore(parent / "spool")
    os.chmod(parent, 0o1777)  # like /tmp: fine
    DiskStore(parent / "spool").close()


def test_another_user_can_read_nothing_of_the_spool(shared_base) -> None:
    """With the modes above, uid 65534 can neither list the spool nor open its index or segments."""
    spool = os.path.join(shared_base, "spool")
    with DiskStore(spool) as store:
        _fill(store, 3)
        store.stats()
        names = [os.path.join(spool, "index.sqlite3"),
                 *(os.path.join(spool, "segments", n) for n in os.listdir(os.path.join(spool, "segments")))]

    def child() -> dict:
        refused = 0
        for path in [spool, os.path.join(spool, "segments")]:
            try:
                os.listdir(path)
            except PermissionError:
                refused += 1
        for path in names:
            try:
                open(path, "rb").close()
            except PermissionError:
                refused += 1
        return {"refused": refused}

    assert _as_nobody(child) == {"refused": 2 + len(names)}


# -- planted symlinks ----------------------------------------------------------------------------------------


def test_a_symlink_planted_at_flusher_lock_is_not_followed_nor_truncated(tmp_path) -> None:
    """The issue's reproduction: flusher.lock -> a victim file; winning and releasing must not truncate it."""
    spool = tmp_path / "spool"
    DiskStore(spool).close()
    victim, content = _victim(tmp_path)
    (spool / LOCK_FILE_NAME).symlink_to(victim)
    election = FlusherElection(spool)
    with pytest.raises(StoreError, match="symlink"):
        election.try_acquire()
    with pytest.raises(StoreError, match="symlink"):
        election.holder()
    election.close()
    assert victim.read_bytes() == content


def test_a_client_facing_a_planted_lock_reports_it_and_drains_once_it_is_gone(tmp_path, aop_collector) -> None:
    """The flusher thread survives the refusal, says why in last_error, and wins the lock once the link is removed."""
    spool = tmp_path / "spool"
    DiskStore(spool).close()
    victim, content = _victim(tmp_path)
    (spool / LOCK_FILE_NAME).symlink_to(victim)
    client = AOPClient(ClientConfig(api_key=aop_collector.api_key, base_url=aop_collector.url,
                                    org_salt_key=aop_collector.org_salt_key, spool_dir=str(spool),
                                    batch_interval=0.05))
    event = client.trace_builder.create_action_request(action="lookup", params={})
    assert client.emit_event(event)
    assert not client.flush(timeout=1)
    assert "symlink" in (client.get_stats()["last_error"] or "")
    (spool / LOCK_FILE_NAME).unlink()
    assert client.flush(timeout=30)
    client.stop(timeout=5)
    assert aop_collector.event_ids() == {event["event_id"]}
    assert victim.read_bytes() == content


def test_a_lock_file_of_another_uid_is_refused(tmp_path) -> None:
    """A regular flusher.lock owned by someone else is neither locked nor written."""
    spool = tmp_path / "spool"
    DiskStore(spool).close()
    lock = spool / LOCK_FILE_NAME
    lock.write_bytes(b'{"pid": 1}')
    os.chown(lock, NOBODY, NOBODY)
    with pytest.raises(StoreError, match=f"owner uid {NOBODY}"):
        FlusherElection(spool).try_acquire()
    assert lock.read_bytes() == b'{"pid": 1}'


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_a_symlink_planted_at_an_index_file_is_refused_and_its_target_untouched(tmp_path, suffix) -> None:
    """index.sqlite3 and the files SQLite opens beside it: a planted symlink is refused, never written through."""
    spool = tmp_path / "spool"
    with DiskStore(spool) as store:
        _fill(store, 3)
    for leftover in ("-wal", "-shm", "-journal"):
        assert not (spool / f"index.sqlite3{leftover}").exists()
    victim, content = _victim(tmp_path)
    link = spool / f"index.sqlite3{suffix}"
    if suffix == "":
        (spool / "index.sqlite3").rename(tmp_path / "index-copy")
    link.symlink_to(victim)
    with pytest.raises(StoreError) as info:
        store = DiskStore(spool)
        _drain(store)  # today's code writes the WAL through the link here
        store.close()
    assert str(link) in str(info.value) and "symlink" in str(info.value)
    assert victim.read_bytes() == content
    assert link.is_symlink()


def test_a_symlink_planted_at_a_segment_path_is_not_followed(tmp_path) -> None:
    """A *.seg symlink to a file of valid records: never read, never truncated, counted as foreign."""
    spool = tmp_path / "spool"
    store = DiskStore(spool)
    ours = _fill(store, 5)
    victim = tmp_path / "victim.seg"
    content = b"".join(encode_record(f"forged{i}".encode(), b"run", 100 + i, b"{}", time.time_ns(), time.time())
                       for i in range(4))
    victim.write_bytes(content)
    (spool / "segments" / f"{1:020d}-1-deadbeef.seg").symlink_to(victim)
    assert store.stats().foreign_files == 1
    assert sorted(_drain(store)) == sorted(ours)
    store.reclaim(now=time.time() + 10**6)
    assert victim.read_bytes() == content
    store.close()


# -- foreign files inside our spool --------------------------------------------------------------------------


def _forged_segment(spool: Path, run_id: str, n: int, owner: int = NOBODY) -> tuple[Path, list[str]]:
    """A *.seg of another uid holding n validly encoded, validly signed events (the worst case)."""
    builder = TraceBuilder(agent_id=5, run_id=run_id)
    records, ids = [], []
    for _ in range(n):
        event = builder.create_action_request(action="forged", params={})
        body = signed_body(event, TEST_ORG_SALT_KEY)[1]
        records.append(encode_record(event["event_id"].encode(), run_id.encode(), event["seq"] + 1000, body,
                                     1, time.time()))  # the oldest order key there is: it would go first
        ids.append(event["event_id"])
    path = spool / "segments" / f"{1:020d}-99999-0badf00d.seg"
    path.write_bytes(b"".join(records))
    os.chown(path, owner, owner)
    os.chmod(path, 0o600)
    return path, ids


def test_a_foreign_segment_is_never_delivered_to_a_real_collector(tmp_path, aop_collector) -> None:
    """The issue's reproduction: another uid's *.seg of signed events is ignored, counted, shown by `aop status`."""
    spool = tmp_path / "spool"
    config = ClientConfig(api_key=aop_collector.api_key, base_url=aop_collector.url,
                          org_salt_key=aop_collector.org_salt_key, spool_dir=str(spool), batch_interval=0.05)
    client = AOPClient(config)
    ours = []
    for i in range(20):
        event = client.trace_builder.create_action_request(action="lookup", params={"i": i})
        assert client.emit_event(event)
        ours.append(event["event_id"])
    planted, forged = _forged_segment(spool, client.trace_builder.run_id, 10)
    assert client.flush(timeout=30)
    run = [e.event_id for e in client.store.iter_run(client.trace_builder.run_id)]
    stats = client.store.stats()
    assert client.get_stats()["foreign_files"] == 1
    client.stop(timeout=5)
    assert aop_collector.event_ids() == set(ours)
    assert not set(run) & set(forged)
    assert stats.foreign_files == 1 and stats.pending == 0 and stats.quarantined == 0
    assert planted.exists() and os.lstat(planted).st_uid == NOBODY  # ignored, not deleted
    env = aop_env(tmp_path)
    report = json.loads(run_aop("status", "--spool", str(spool), "--json", env=env).stdout)
    assert report["foreign_files"] == 1 and report["read_only"] is False
    table = run_aop("status", "--spool", str(spool), env=env).stdout
    assert any("foreign files" in line and " 1 " in line for line in table.splitlines())


def test_a_foreign_index_is_set_aside_and_the_index_rebuilt_from_our_segments(tmp_path) -> None:
    """Another uid's index.sqlite3 (here: one saying our pending events were delivered) is never trusted."""
    spool = tmp_path / "spool"
    with DiskStore(spool) as store:
        ours = _fill(store, 6)
    forged_spool = tmp_path / "forged"
    shutil.copytree(spool, forged_spool)
    with DiskStore(forged_spool) as forger:
        assert len(_drain(forger)) == 6  # its index now says: all delivered
    (spool / "index.sqlite3").unlink()
    shutil.copy(forged_spool / "index.sqlite3", spool / "index.sqlite3")
    os.chown(spool / "index.sqlite3", NOBODY, NOBODY)
    with DiskStore(spool) as store:
        stats = store.stats()
        assert stats.pending == 6 and stats.delivered_retained == 0 and stats.foreign_files == 1
        assert sorted(_drain(store)) == sorted(ours)
    aside = [p for p in (spool / "quarantine").iterdir() if p.name.endswith(".foreign")]
    assert [os.lstat(p).st_uid for p in aside] == [NOBODY]


def test_an_identity_file_of_another_uid_is_refused(tmp_path) -> None:
    """identity.json decides where events go: one that another uid owns is never trusted."""
    from aop_client.spool_identity import IDENTITY_FILE

    spool = tmp_path / "spool"
    config = ClientConfig(api_key=TEST_API_KEY, base_url="http://127.0.0.1:9", org_salt_key=TEST_ORG_SALT_KEY,
                          spool_dir=str(spool))
    client = AOPClient(config)
    assert client.emit_event(client.trace_builder.create_action_request(action="a", params={}))
    client.store.close()
    os.chown(spool / IDENTITY_FILE, NOBODY, NOBODY)
    with pytest.raises(StoreError, match=f"belongs to uid {NOBODY}"):
        AOPClient(config).store


# -- root's read-only inspection -----------------------------------------------------------------------------

def _held_worker(spool: str, ready, done_fd: int) -> None:
    """What a worker does to its spool: emit 9 events, deliver 3, and keep the store (and its live WAL) open."""
    store = DiskStore(spool)
    for i in range(9):
        assert store.append(f"w{i}", "run", i, b'{"x": 1}').stored
    epoch = store.begin_epoch()
    batch = store.lease(3, 1 << 20)
    store.ack([e.ref for e in batch], epoch=epoch)
    ready()
    os.read(done_fd, 1)


def _busy_worker(spool: str, ready, done_fd: int) -> None:
    """A worker that keeps emitting and delivering rounds of 20, reopening its store each round (closing the
    last connection checkpoints the WAL and deletes it, so the index file and the log change all the time)."""
    n = 0
    while n == 0 or not select.select([done_fd], [], [], 0)[0]:
        with DiskStore(spool) as store:
            for _ in range(20):
                assert store.append(f"b{n}", "run", n, b'{"x": 1}').stored
                n += 1
            _drain(store)
        if n == 20:
            ready()


@contextlib.contextmanager
def _worker_spool(work):
    """A spool owned by uid 65534 and worked on by a real process of that uid (forked, then setuid)."""
    base = tempfile.mkdtemp(prefix="aop-owner-")
    os.chmod(base, 0o711)
    spool = os.path.join(base, "spool")
    os.mkdir(spool, 0o700)
    os.chown(spool, NOBODY, NOBODY)  # as an admin prepares a worker's spool
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            work(spool, lambda: os.write(ready_w, b"ready"), done_r)
        except BaseException as e:  # report, never raise in the child
            os.write(ready_w, repr(e).encode())
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 4096) == b"ready"
        yield Path(spool)
    finally:
        os.close(done_w)
        os.waitpid(pid, 0)
        os.close(ready_r)
        shutil.rmtree(base)


@pytest.fixture
def worker_spool():
    """A spool of uid 65534 held open by its worker, with 6 pending and 3 delivered events in a live WAL."""
    with _worker_spool(_held_worker) as spool:
        assert (spool / "index.sqlite3-wal").exists()
        yield spool


def test_root_inspects_a_workers_spool_read_only_and_writes_nothing(worker_spool, tmp_path) -> None:
    """`sudo aop status` on a uid-65534 spool: right counts, and the tree is byte-for-byte unchanged."""
    assert {os.lstat(p).st_uid for p in [worker_spool, *worker_spool.rglob("*")]} == {NOBODY}
    _forged_segment(worker_spool, str(uuid.uuid4()), 4, owner=0)  # root's file: not the worker's, never counted
    before = _tree(worker_spool)
    result = run_aop("status", "--spool", str(worker_spool), "--json", env=aop_env(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["read_only"] is True
    assert (report["pending"], report["retained"], report["foreign_files"]) == (6, 3, 1)
    from aop_client.store.readonly import ReadOnlyStore

    with ReadOnlyStore(worker_spool) as view:
        assert view.stats().pending == 6
        with pytest.raises(StoreError, match="read-only"):
            view.append("x", "run", 99, b"{}")
        writers = [n for n in dir(DiskStore) if not n.startswith("_") and callable(getattr(DiskStore, n))
                   and n not in READ_ONLY_METHODS]
        assert READ_ONLY_METHODS == {"stats", "index_damage", "close"}
        assert {"append", "lease", "ack", "iter_run", "sample_undelivered", "reclaim"} <= set(writers)
        for name in writers:
            with pytest.raises(StoreError, match="read-only"):
                getattr(view, name)()
    assert _tree(worker_spool) == before


def test_root_may_not_open_a_workers_spool_for_writing(worker_spool) -> None:
    """Only the inspection view: a normal open by root is refused, and creates nothing."""
    before = _tree(worker_spool)
    with pytest.raises(StoreError, match=f"uid {NOBODY}"):
        DiskStore(worker_spool)
    with pytest.raises(StoreError, match=f"uid {NOBODY}"):
        FlusherElection(worker_spool).try_acquire()
    assert _tree(worker_spool) == before


def test_root_inspection_reads_a_consistent_index_while_the_worker_checkpoints() -> None:
    """Snapshots taken while the worker's index and WAL change under them: each opens, and counts only grow."""
    from aop_client.store.readonly import ReadOnlyStore

    with _worker_spool(_busy_worker) as spool:
        delivered = []
        for _ in range(40):
            with ReadOnlyStore(spool) as view:
                stats = view.stats()
            assert stats.quarantined == 0 and stats.dead_letters == 0
            delivered.append(stats.delivered_retained)
    assert delivered == sorted(delivered) and delivered[-1] > delivered[0]  # never an older index than before


def test_a_log_restarted_between_the_reads_of_a_snapshot_is_seen_and_read_again(tmp_path, monkeypatch) -> None:
    """The worst moment, made to happen: right after the index file is read, the worker checkpoints, the log
    restarts and new transactions land in it. The snapshot must notice and read again, not mix the two."""
    from aop_client.store import readonly

    spool = tmp_path / "spool"
    store = DiskStore(spool)
    _fill(store, 10)
    assert len(_drain(store)) == 10  # in the log, not yet in the index file
    real_read = readonly._read_file
    struck = []

    def read_then_strike(path: str, owner: int, limit: int | None = None):
        data = real_read(path, owner, limit)
        if path.endswith("index.sqlite3") and not struck:
            struck.append(path)
            store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _fill(store, 5, prefix="late")
            assert len(_drain(store)) == 5  # a restarted log holding only these
        return data

    monkeypatch.setattr(readonly, "_read_file", read_then_strike)
    with readonly.ReadOnlyStore(spool) as view:
        seen = view.stats()
    assert struck
    assert (seen.delivered_retained, seen.pending) == (15, 0) == (store.stats().delivered_retained, store.stats().pending)
    store.close()
