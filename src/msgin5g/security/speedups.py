"""One measured speed-up of aiocoap 0.4.17 that OSCORE needs (SPEC D12; bench/bench_security.py).

``aiocoap.Message.copy`` copies the options with ``copy.deepcopy``: about 100 µs for a small
response, and milliseconds for a bulk GET with hundreds of ``ue-uri`` options. OSCORE copies
every message it protects (RFC 8613 §4: the inner message is split from the outer), so on a
secured server this single call costs about as much as rendering a configuration answer.

Option objects (``aiocoap.optiontypes``) hold a number and an immutable value (str, bytes, int,
a named tuple, an enum), so copying each option object shallowly yields exactly the copy
``deepcopy`` makes. :func:`install` gives ``aiocoap.options.Options`` that ``__deepcopy__``; it is
applied only when the class has the expected shape (its ``__slots__`` is ``_options``, a dict of
lists), and it changes no behaviour but speed — for secured and insecure servers alike.
"""

from __future__ import annotations

import logging

from aiocoap import options as _options

log = logging.getLogger("msgin5g.security")


def _deepcopy_options(self, memo):
    new = _options.Options.__new__(_options.Options)
    copied = {}
    for number, items in self._options.items():
        fresh = []
        for o in items:
            c = object.__new__(type(o))
            c.__dict__.update(o.__dict__)
            fresh.append(c)
        copied[number] = fresh
    new._options = copied
    return new


def install() -> bool:
    """Install the option copy; returns whether it is in place."""
    cls = _options.Options
    if getattr(cls, "__deepcopy__", None) is _deepcopy_options:
        return True
    if "__deepcopy__" in vars(cls) or list(getattr(cls, "__slots__", ())) != ["_options"]:
        log.warning("aiocoap's Options class has an unexpected shape; keeping its deep copy")
        return False
    probe = _options.Options()
    if not isinstance(getattr(probe, "_options", None), dict):
        return False
    cls.__deepcopy__ = _deepcopy_options
    return True
