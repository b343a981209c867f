"""The RFC 7641 observations one SCM-S site holds, by document (TS 24.546 C.2.1.2.3, C.3.1.2.3).

One table for su-uc and su-up alike: registering (and forgetting on cancellation), notifying the
observers of one document, re-rendering those of identities that lost their key (SPEC D12), and
the keys the change feed follows (SPEC D14).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from ..authz import Identity


class ObserverTable:
    def __init__(self) -> None:
        self._by_doc: dict[Hashable, dict] = {}  # document key → {observation: identity}

    def add(self, key: Hashable, serverobservation, identity: Identity) -> None:
        """Accept an observation of ``key``; it leaves the table when aiocoap cancels it."""
        self._by_doc.setdefault(key, {})[serverobservation] = identity

        def cancel(key=key, obs=serverobservation) -> None:
            observers = self._by_doc.get(key)
            if observers is not None:
                observers.pop(obs, None)
                if not observers:
                    del self._by_doc[key]

        serverobservation.accept(cancel)

    def documents(self) -> set:
        return set(self._by_doc)

    def total(self) -> int:
        """Observations held, all documents together (the operations gauge, SPEC D15)."""
        return sum(len(v) for v in self._by_doc.values())

    def count(self, key: Hashable) -> int:
        return len(self._by_doc.get(key, ()))

    def notify(self, key: Hashable, final=None) -> None:
        """Re-render for every observer of ``key``; ``final`` (an error answer) ends them (RFC 7641 §3.2)."""
        for obs in list(self._by_doc.get(key, ())):
            obs.trigger(final)

    def recheck(self, still_authenticated: Callable[[Identity], bool]) -> int:
        """Re-render the observations of identities that lost their key: they then get 4.01, which
        ends them (SPEC D12). Returns how many."""
        n = 0
        for observers in list(self._by_doc.values()):
            for obs, identity in list(observers.items()):
                if not still_authenticated(identity):
                    obs.trigger()
                    n += 1
        return n
