"""The aiocoap adjustments: each fails here when the aiocoap internals it relies on change.

These are the guard that lets pyproject.toml accept any aiocoap 0.4.x at or above 0.4.17 instead
of one exact version: a release that moves the internals turns this file red before it can slow
or break a process (the tweaks themselves then step aside with a warning).
"""

from __future__ import annotations

import copy
import subprocess
import sys

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import NON

from msgin5g.coap import aiocoap_tweaks as tweaks


def test_option_copy_relies_on_a_shape_aiocoap_still_has():
    assert tweaks.option_copy_shape_problem() is None


def test_duplicate_cache_relies_on_a_shape_aiocoap_still_has():
    assert tweaks.duplicate_cache_shape_problem() is None


def test_nothing_is_installed_on_import():
    """Importing every module that used to patch aiocoap leaves it untouched (issue 9 item 4)."""
    code = (
        "import msgin5g.security, msgin5g.security.server, msgin5g.server.app, msgin5g.server.resources, "
        "msgin5g.coap.aiocoap_tweaks as t, msgin5g.scmc\n"
        "import aiocoap.options as o\n"
        "print('__deepcopy__' in vars(o.Options))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _bulk_like_message() -> Message:
    m = Message(
        code=Code.GET, mtype=NON, uri_path=("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
    )
    m.opt.uri_query = ("bulk-conf-flag=b1", *(f"ue-uri=urn:imei:35{i:013d}" for i in range(40)))
    m.opt.etag = b"\x01\x02"
    m.opt.block2 = (3, False, 6)
    m.opt.content_format = 60
    m.opt.add_option(_opaque(31, b"\x08"))  # Q-Block2, opaque to aiocoap
    return m


def _opaque(number, value):
    from aiocoap.numbers.optionnumbers import OptionNumber

    return OptionNumber(number).create_option(value=value)


def test_option_copy_gives_what_deepcopy_gave():
    m = _bulk_like_message()
    stock = copy.deepcopy(m.opt)
    assert tweaks.install_option_copy() is True
    try:
        assert tweaks.option_copy_installed()
        fast = copy.deepcopy(m.opt)
        assert fast is not m.opt
        assert [(o.number, o.encode()) for o in fast.option_list()] == [
            (o.number, o.encode()) for o in stock.option_list()
        ]
        assert all(a is not b for a, b in zip(fast.option_list(), m.opt.option_list(), strict=True))
        a, b = m.copy(), copy.deepcopy(m)
        a.mid = b.mid = 7
        assert a.encode() == b.encode()
        # independent: changing the copy leaves the original alone
        fast.uri_query = ("x=1",)
        fast.etag = b"\xff"
        assert m.opt.uri_query[0] == "bulk-conf-flag=b1" and m.opt.etag == b"\x01\x02"
    finally:
        del tweaks._options.Options.__deepcopy__
    assert not tweaks.option_copy_installed()


def test_install_is_idempotent_and_reports_an_unexpected_shape():
    try:
        assert tweaks.install_option_copy() and tweaks.install_option_copy()
    finally:
        del tweaks._options.Options.__deepcopy__
    tweaks._options.Options.__deepcopy__ = lambda self, memo: self  # a future aiocoap's own
    try:
        assert tweaks.option_copy_shape_problem() is not None
        assert tweaks.install_option_copy() is False
    finally:
        del tweaks._options.Options.__deepcopy__
