"""The spool identity: which destination a spool directory's events belong to, and its checks.

A spool holds events emitted under one set of credentials, and its elected
flusher sends them with its own ``base_url``, ``api_key`` and
``org_salt_key``. So a spool is bound to one destination: on first use the
client writes ``<spool>/identity.json`` (0600, created exclusively, never
following a link) holding the normalized ``base_url`` in clear and, for each
secret, a keyed fingerprint ``HMAC-SHA256(key=secret, msg=label + nonce + key length)``
with a random per-spool nonce (or ``null`` for no salt). No secret is written.

Every path that opens a spool to send from it goes through :func:`open_bound`
(``AOPClient.store``, ``aop flush``; ``aop dead-letters retry`` sends nothing): a client
whose credentials differ gets a :class:`~aop_client.errors.ConfigError` that
names the differing fields (never a secret or a fingerprint) and says how to
pick another ``spool_dir`` or adopt the spool on purpose (``aop spool adopt``,
:func:`adopt`).

A spool without an identity file (made by an earlier release) is bound by the
first client whose ``org_salt_key`` verifies a sample of its events (read
straight from its segments, :mod:`aop_client.spool_backlog`; or, without a
salt, that finds them unsigned); otherwise it is refused. The earlier default
spool path (a tag over base_url and api_key only) is moved to the new default
path on first use when it passes the same check, while this process holds its
flusher lock and no process still writes to it (:func:`migrate_legacy_default`);
else it stays where it was and a warning says how to drain it. The flusher
re-checks the binding each time it wins the flusher lock; :func:`adopt` holds
that lock while it rebinds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, TypeVar

import orjson

from .config import ClientConfig, default_spool_root, normalized_base_url, public_base_url
from .errors import ConfigError, StoreError
from .spool_backlog import foreign_signatures, hold_quiet
from .store.layout import NotOwnedError, read_owned_file, write_private_file
from .store.segments import list_segments

__all__ = ["IDENTITY_FILE", "make_identity", "differing_fields", "read_identity", "write_identity",
           "open_bound", "ensure_bound", "foreign_signatures", "adopt", "legacy_default_path",
           "migrate_legacy_default"]

log = logging.getLogger("aop_client")

IDENTITY_FILE = "identity.json"
FORMAT = 1
_FIELDS = ("base_url", "api_key", "org_salt_key")
_MAX_FILE = 64 * 1024


class Spool(Protocol):
    """What the identity checks need of an opened store: where it lives, and how to close it."""

    @property
    def directory(self) -> str: ...

    @property
    def segment_dir(self) -> str: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Spool)
_checked_legacy: set[tuple[Path, Path]] = set()  # (earlier, new) default spools this process looked at


def _fingerprint(secret: Optional[str], label: str, nonce: str) -> Optional[str]:
    if secret is None:
        return None
    key = secret.encode("utf-8", "surrogatepass")
    # The key's length is in the message: HMAC pads short keys with zero bytes and hashes long ones,
    # so "k" and "k\0" (or a long key and its SHA-256) would otherwise share a fingerprint.
    message = f"aop-client spool identity v1\0{label}\0{nonce}\0{len(key)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def make_identity(config: ClientConfig, nonce: Optional[str] = None) -> dict[str, Any]:
    """The identity document of ``config``'s destination (base_url in clear, secrets fingerprinted)."""
    nonce = nonce or secrets.token_hex(16)
    return {
        "format": FORMAT,
        "base_url": public_base_url(config.base_url),  # no user info, query or fragment: they may hold a token
        "base_url_full": _fingerprint(normalized_base_url(config.base_url), "base_url", nonce),
        "nonce": nonce,
        "api_key": _fingerprint(config.api_key, "api_key", nonce),
        "org_salt_key": _fingerprint(config.org_salt_key, "org_salt_key", nonce),
    }


def differing_fields(identity: dict[str, Any], config: ClientConfig) -> list[str]:
    """The names of the fields of ``config`` that do not match ``identity`` (empty: the same destination)."""
    mine = make_identity(config, str(identity.get("nonce", "")))
    out = []
    for name in _FIELDS:
        same = _same(identity.get(name), mine[name])
        if name == "base_url" and same and "base_url_full" in identity:  # the query, compared by fingerprint
            same = _same(identity["base_url_full"], mine["base_url_full"])
        if not same:
            out.append(name)
    return out


def _same(theirs: Any, ours: Optional[str]) -> bool:
    if theirs is None or ours is None:
        return theirs is None and ours is None
    return isinstance(theirs, str) and hmac.compare_digest(theirs.encode(), ours.encode())


def _path(directory: "str | os.PathLike[str]") -> str:
    return os.path.join(os.fspath(directory), IDENTITY_FILE)


def read_identity(directory: "str | os.PathLike[str]") -> Optional[dict[str, Any]]:
    """The identity of a spool directory, or None when it has none (yet); StoreError if it is unsafe or damaged."""
    path = _path(directory)
    try:
        raw = read_owned_file(path, limit=_MAX_FILE + 1)  # only the uid running the application writes in its spool
    except FileNotFoundError:
        return None
    except NotOwnedError as e:
        what = (f"belongs to uid {e.st_uid}, not to us (uid {e.owner})" if stat.S_ISREG(e.st_mode)
                else "is not a regular file")
        raise StoreError(f"spool identity {path!r} {what}; remove it and run `aop spool adopt`") from None
    except OSError as e:
        raise StoreError(f"cannot read spool identity {path!r} ({e.strerror}); it must be a regular "
                         "file of ours, not a link: remove it and run `aop spool adopt`") from e
    try:
        value = orjson.loads(raw) if len(raw) <= _MAX_FILE else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or value.get("format") != FORMAT or not isinstance(value.get("nonce"), str):
        raise StoreError(f"spool identity {path!r} is damaged or of an unknown format; "
                         "`aop spool adopt --spool DIR` writes a new one")
    return value


def write_identity(directory: "str | os.PathLike[str]", identity: dict[str, Any], *, replace: bool = False) -> bool:
    """Write the identity file atomically and durably (layout.write_private_file: 0600, O_EXCL, no link followed).

    Without ``replace`` the file is only created: returns False when another process bound
    the spool first (the caller re-reads it). With ``replace`` it is swapped in by rename.
    StoreError when it cannot be written (a full disk, a read-only filesystem...).
    """
    directory = os.fspath(directory)
    try:
        return write_private_file(directory, IDENTITY_FILE, orjson.dumps(identity, option=orjson.OPT_INDENT_2) + b"\n",
                                  fsync=True, exclusive=not replace)
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot write the spool identity {_path(directory)!r}: {e.strerror or e}") from e


def _refusal(directory: "str | os.PathLike[str]", identity: dict[str, Any], config: ClientConfig, fields: list[str]) -> ConfigError:
    where = os.fspath(directory)
    what = []
    if "base_url" in fields:
        ours, theirs = public_base_url(config.base_url), identity.get("base_url")
        what.append(f"base_url {ours!r} is not its {theirs!r}" if ours != theirs
                    else f"base_url {ours!r} differs from its own in the query string")
    what += [f"the {name} differs" for name in fields if name != "base_url"]
    return ConfigError(
        f"spool_dir {where!r} holds the events of another destination: {', '.join(what)}. "
        "Each application (server, api_key, org_salt_key) needs its own spool: set spool_dir "
        "(AOP_SPOOL_DIR) to another directory, or leave it unset for the default one of these "
        f"credentials. To move this spool to these credentials on purpose (key rotation), run "
        f"`aop spool adopt --spool {where}` with them (see docs/operations.md).",
        field=fields[0], value=None, fields=tuple(fields))


def refuse_other(directory: "str | os.PathLike[str]", config: ClientConfig) -> bool:
    """Raise ConfigError when the spool is bound to another destination; True when bound to ours."""
    identity = read_identity(directory)
    if identity is None:
        return False
    fields = differing_fields(identity, config)
    if fields:
        raise _refusal(directory, identity, config, fields)
    return True


def ensure_bound(store: Spool, config: ClientConfig) -> None:
    """Bind an unbound spool to ``config`` (when its backlog is signed with our salt), or check the binding."""
    directory = store.directory
    if refuse_other(directory, config):
        return
    sampled, foreign = foreign_signatures(store.segment_dir, config.org_salt_key)
    if foreign:
        salt = "unsigned" if config.org_salt_key is None else "signed with this org_salt_key"
        raise ConfigError(
            f"spool_dir {directory!r} has no identity yet and {foreign} of {sampled} sampled undelivered "
            f"events in it are not {salt}: they were stored by another deployment. Use another spool_dir "
            f"(AOP_SPOOL_DIR), drain this one with `aop flush --spool {directory}` under the credentials "
            f"that stored them, or `aop spool adopt --spool {directory} --force` (see docs/operations.md).",
            field="org_salt_key", value=None)
    if not write_identity(directory, make_identity(config)):
        refuse_other(directory, config)  # another process bound it first: it must be ours too


def open_bound(config: ClientConfig, opener: Callable[[], S]) -> S:
    """Open the store of ``config.spool_path`` with ``opener()`` and check (or make) its binding.

    The one gate of every sender: a spool bound to other credentials is refused before it is
    opened, and an unbound one is bound (or refused) before anything is sent from it.
    """
    path = Path(config.spool_path)
    if not config.spool_dir:
        migrate_legacy_default(config)
    if path.is_dir():
        refuse_other(path, config)
    store = opener()
    try:
        ensure_bound(store, config)
    except BaseException:
        store.close()
        raise
    return store


def adopt(store: Spool, config: ClientConfig, *, force: bool = False) -> dict[str, Any]:
    """Rebind a spool to ``config``'s credentials (key rotation); returns what changed.

    Holds the spool's flusher lock throughout and refuses (StoreError) while another
    process is its flusher or still writes to it: those would go on sending or storing
    under the old credentials. ``force`` does not lift that refusal. Refused
    (ConfigError) while sampled events are not signed with the new salt, unless
    ``force``: a server that verifies the new salt would refuse them.
    """
    directory = os.fspath(store.directory)
    old = read_identity(directory)
    changed = _FIELDS if old is None else tuple(differing_fields(old, config))
    if not changed:
        return {"changed": [], "previous_identity": True, "sampled": 0, "foreign": 0}
    election, why = hold_quiet(directory, create=False)
    if election is None:
        raise StoreError(f"refusing to adopt {directory!r}: {why}, under the credentials it was started "
                         "with; stop every process using the old credentials first (--force does not override this)")
    try:
        old = read_identity(directory)  # again, now that no one else can rebind it
        changed = _FIELDS if old is None else tuple(differing_fields(old, config))
        sampled, foreign = foreign_signatures(store.segment_dir, config.org_salt_key)
        if foreign and not force:
            raise ConfigError(
                f"{foreign} of {sampled} sampled undelivered events in {directory!r} are not "
                f"{'unsigned' if config.org_salt_key is None else 'signed with the new org_salt_key'}; "
                "a server checking the new salt would refuse them. Drain them first with `aop flush` "
                "under the old credentials, or pass --force to adopt anyway.",
                field="org_salt_key", value=None)
        if changed:
            write_identity(directory, make_identity(config), replace=True)
    finally:
        election.close()
    return {"changed": list(changed), "previous_identity": old is not None,
            "sampled": sampled, "foreign": foreign}


def legacy_default_path(config: ClientConfig) -> Path:
    """The default spool path of earlier releases: a tag over base_url and api_key only."""
    tag = hashlib.sha256(f"{config.base_url}\n{config.api_key}".encode()).hexdigest()[:16]
    return default_spool_root() / tag


def migrate_legacy_default(config: ClientConfig) -> bool:
    """Move the earlier default spool to ``config.spool_path`` when it is this deployment's; True if moved.

    Checked once per process, cheaply (an lstat of the earlier path, a listing of its
    ``segments/`` when it stays). Moved (one rename, nothing copied) only when the new
    path does not exist yet, the old one is a directory of ours with no identity or
    ours, and, while this process holds its flusher lock (so no flusher sends from it
    and none starts): no segment in it is still open for writing (a running process of
    the earlier release would lose every event it stores after the move) and its
    sampled events verify with our salt. Otherwise it stays, nothing in it is created
    or changed, and a warning says how to drain it. Never raises for a spool another
    process moves or removes meanwhile.
    """
    old, new = legacy_default_path(config), Path(config.spool_path)
    if old == new or (old, new) in _checked_legacy:
        return False
    _checked_legacy.add((old, new))
    try:
        st = os.lstat(old)
    except OSError:  # none, or another worker of this deployment moved it just now
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    election = None
    try:
        why, election = _legacy_blocker(old, new, config, st)
        if why is None:
            os.rename(old, new)  # the flusher lock we hold moves with it; released below
            log.info("aop_client moved the earlier default spool %s to %s", old, new)
            return True
    except OSError as e:  # raced by another worker's rename, or it could not be moved: not moved
        why = f"it could not be moved ({e.strerror or e})"
    finally:
        if election is not None:
            election.close()
    segments = _segment_count(old / "segments")
    if segments:
        log.warning("aop_client left the earlier default spool %s (%s segment files) in place: %s. "
                    "`aop status --spool %s` shows its undelivered events; `aop flush --spool %s` with the "
                    "credentials that stored them delivers them; remove it once drained (see docs/operations.md)",
                    old, segments, why, old, old)
    return False


def _segment_count(segment_dir: Path) -> int:
    try:
        return len(list_segments(os.fspath(segment_dir)))
    except OSError:
        return 0


def _legacy_blocker(old: Path, new: Path, config: ClientConfig, st: os.stat_result) -> tuple[Optional[str], Any]:
    """(why the earlier default spool must not be moved to ``new`` or None, its flusher election held or None).

    The caller closes the election (after the rename): it is held across the checks and the rename.
    """
    if st.st_uid != os.geteuid():
        return "it belongs to another user", None
    if os.path.lexists(new):
        return f"{new} exists already", None
    election, why = hold_quiet(os.fspath(old), create=False)  # never re-creates a spool renamed away
    if election is None:
        return why, None
    try:
        refuse_other(old, config)
    except ConfigError:
        return "it is bound to other credentials", election
    except StoreError as e:
        return f"its identity cannot be read ({e})", election
    sampled, foreign = foreign_signatures(os.fspath(old / "segments"), config.org_salt_key)
    if foreign:
        return f"{foreign} of {sampled} sampled undelivered events are not signed with this org_salt_key", election
    return None, election
