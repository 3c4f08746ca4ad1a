"""State-machine test of `aop status` and `aop dead-letters` (in-process `main`) against a model of the spool.

The store is a real DiskStore in a temporary directory; the machine dead-letters,
retries and purges events through the CLI only and checks after every step that
`status --json` and `dead-letters list --json` agree with the model.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from aop_client.cli import main
from aop_client.store import DiskStore
from test_cli import SOAK

RUN_ID = "33333333-3333-4333-8333-333333333333"


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `aop ARGV` in this process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


class DeadLetterMachine(RuleBasedStateMachine):
    """Model: which event ids are pending, which are dead letters, which were purged."""

    @initialize(n=st.integers(1, 6))
    def make_spool(self, n: int) -> None:
        """A spool with ``n`` events, all pending."""
        self.folder = tempfile.mkdtemp(prefix="aop-cli-machine-")
        self.spool = f"{self.folder}/spool"
        self.pending: set[str] = set()
        self.dead: set[str] = set()
        with DiskStore(self.spool) as store:
            for seq in range(1, n + 1):
                event_id = str(uuid.uuid4())
                body = json.dumps({"event_id": event_id, "run_id": RUN_ID, "seq": seq}).encode()
                assert store.append(event_id, RUN_ID, seq, body).stored
                self.pending.add(event_id)

    def teardown(self) -> None:
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)

    @rule(k=st.integers(1, 6))
    def server_refuses(self, k: int) -> None:
        """A flusher leases up to k pending events and dead-letters them (what a 4xx rejection does)."""
        with DiskStore(self.spool) as store:
            epoch = store.begin_epoch()
            leased = store.lease(k, 10**6, epoch=epoch)
            store.dead_letter([e.ref for e in leased], "rejected: test", epoch=epoch)
        ids = {e.event_id for e in leased}
        assert ids <= self.pending
        self.pending -= ids
        self.dead |= ids

    @rule(data=st.data())
    def retry_some(self, data: st.DataObject) -> None:
        """`dead-letters retry --id ...` returns exactly the named dead letters; all of them when none named."""
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.dead)), unique=True)) if self.dead else []
        code, out, _ = cli("dead-letters", "retry", "--spool", self.spool, *[a for i in chosen for a in ("--id", i)])
        moved = set(chosen) if chosen else set(self.dead)
        assert code == 0 and f"{len(moved)} dead letters returned" in out
        self.dead -= moved
        self.pending |= moved

    @rule(data=st.data(), confirmed=st.booleans())
    def purge_some(self, data: st.DataObject, confirmed: bool) -> None:
        """`dead-letters purge` deletes only with --yes (stdin is not a terminal), exactly the named ones."""
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.dead)), unique=True)) if self.dead else []
        args = ["dead-letters", "purge", "--spool", self.spool, *[a for i in chosen for a in ("--id", i)]]
        code, out, err = cli(*args, *(["--yes"] if confirmed else []))
        if not confirmed:
            assert code == 2 and err.startswith("aop: error: refusing")
            return
        gone = set(chosen) if chosen else set(self.dead)
        assert code == 0 and f"{len(gone)} dead letters purged" in out
        self.dead -= gone

    @invariant()
    def cli_agrees_with_model(self) -> None:
        """status and dead-letters list report exactly the model's counts and ids."""
        if not hasattr(self, "spool"):
            return
        code, out, _ = cli("status", "--spool", self.spool, "--json")
        report = json.loads(out)
        assert code == 0 and report["pending"] == len(self.pending) and report["dead_letters"] == len(self.dead)
        code, out, _ = cli("dead-letters", "list", "--spool", self.spool, "--json")
        assert code == 0 and {json.loads(line)["event_id"] for line in out.splitlines()} == self.dead


DeadLetterMachine.TestCase.settings = settings(
    max_examples=100 if SOAK else 12, stateful_step_count=8, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDeadLetterMachine = DeadLetterMachine.TestCase
