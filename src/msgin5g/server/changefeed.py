"""Observe across processes and nodes: the store's change feed turned into notifications (SPEC D14).

A change committed through any SCM-S process must notify the observers held by every process
(RFC 7641 §4.2; TS 24.546 C.3.1.2.3: the individual UE configuration is observable). The store
records every replace and delete in ``doc_changes`` inside the committing transaction
(:mod:`msgin5g.store.shared`); each process follows that table from a cursor:

- PostgreSQL: ``LISTEN msgin5g_changes`` on an asynchronous connection, so the loop never waits;
  every notification (and every reconnect — notifications are not stored) re-reads the table from
  the cursor, plus a slow periodic re-read as a safety net.
- SQLite (processes of one machine): the table is polled from the cursor — an index seek — every
  ``poll_interval`` seconds.

Which changes become notifications is the pure :func:`plan_notifications`: only documents this
process has observers for; a change this process already notified (its own PUT or DELETE notified
its observers at once) is not notified again, so no observer sees a change twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Executor

from ..store import Store
from ..store.shared import KEEP_CHANGES, NOTIFY_CHANNEL, DocChange

log = logging.getLogger("msgin5g.server.changefeed")

DocKey = tuple[str, str, str]  # (API name "su-uc"/"su-up", valServiceId, document id)
Seen = dict[DocKey, tuple[int, bool]]  # newest (version, deleted) notified per observed document


def mark_seen(seen: Seen, key: DocKey, version: int, deleted: bool) -> bool:
    """Record that observers of ``key`` were told about (version, deleted); False if they already were
    (a delete outranks a replace of the same version: it ends the observation)."""
    mark = (version, deleted)
    if key in seen and seen[key] >= mark:
        return False
    seen[key] = mark
    return True


def plan_notifications(
    changes: Iterable[DocChange], observed: set[DocKey], seen: Seen
) -> list[tuple[DocKey, bool]]:
    """The notifications to send for ``changes`` (oldest first): (document, deleted) for each observed
    document whose change was not notified yet, once per document, the newest change winning.
    Updates ``seen``; forgets documents nobody observes any more."""
    for key in [k for k in seen if k not in observed]:
        del seen[key]
    out: dict[DocKey, bool] = {}
    for c in changes:
        key = (c.api, c.service_id, c.doc_id)
        if key in observed and mark_seen(seen, key, c.version, c.deleted):
            out[key] = c.deleted
    return list(out.items())


class ChangeWatcher:
    """Follows the store's change feed and calls ``notify(key, deleted)`` on the event loop."""

    def __init__(
        self,
        store: Store,
        observed: Callable[[], set[DocKey]],
        notify: Callable[[DocKey, bool], None],
        executor: Executor | None = None,
        poll_interval: float = 0.05,
        pg_url: str | None = None,
        resync_interval: float = 5.0,
    ):
        self.store, self.observed, self.notify = store, observed, notify
        self.executor = executor
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self.pg_url = pg_url
        self.seen: Seen = {}
        self.cursor = 0
        self.delivered = 0
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def local_change(self, key: DocKey, version: int, deleted: bool) -> bool:
        """A change committed through this process: whether its observers still need to hear of it
        (False when the feed, which may read the change before this call runs, already told them).
        Either way the feed will not notify it again."""
        return key not in self.observed() or mark_seen(self.seen, key, version, deleted)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self) -> None:
        self.cursor = await self._call(self.store.change_cursor)
        loop_fn = self._listen if self.pg_url else self._poll
        self._task = asyncio.ensure_future(loop_fn())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def catch_up(self) -> int:
        """Read every change after the cursor and notify; returns how many changes were read."""
        total = 0
        while True:
            changes = await self._call(self.store.changes_since, self.cursor, 1000)
            if not changes:
                return total
            self.cursor = changes[-1].seq
            total += len(changes)
            for key, deleted in plan_notifications(changes, self.observed(), self.seen):
                self.delivered += 1
                try:
                    self.notify(key, deleted)
                except Exception:  # one observer's failure must not stop the feed
                    log.exception("notifying observers of %s %s/%s failed", *key)
            if self.cursor % 1000 < len(changes) and self.cursor > KEEP_CHANGES:
                await self._call(self.store.prune_changes, self.cursor - KEEP_CHANGES)

    async def _poll(self) -> None:
        while True:
            try:
                await self.catch_up()
            except Exception as e:  # a busy or restarting database: try again next round
                log.warning("change feed: %s", e)
            await asyncio.sleep(self.poll_interval)

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.pg_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while True:
                        # first round: anything committed while (re)connecting; then after each
                        # notification, or after resync_interval as a safety net
                        await self.catch_up()
                        async for _ in conn.notifies(timeout=self.resync_interval, stop_after=1):
                            pass
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("change feed connection lost (%s); reconnecting", e)
                await asyncio.sleep(1.0)
