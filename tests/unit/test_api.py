"""The API vocabulary (TS 24.546 C.1.1, C.2.1.1, C.3.1.1; SPEC D6, D11): expected values from the spec."""

from __future__ import annotations

import pytest

from msgin5g import api


def test_collection_and_document_paths_follow_annex_c():
    assert api.collection_path("msgin5g") == ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
    assert api.doc_path("svc", "d1", ("p",)) == (
        "p",
        "su-uc",
        "v1",
        "val-services",
        "svc",
        "ue-configurations",
        "d1",
    )
    assert api.collection_path("svc", api=api.SU_UP) == (
        "su-up",
        "v1",
        "val-services",
        "svc",
        "user-profiles",
    )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("coap://127.0.0.1:5690", ("coap", "127.0.0.1", 5690, ())),
        ("coap://h", ("coap", "h", 5683, ())),
        ("coap+tcp://h/pre/fix/su-uc/v1", ("coap+tcp", "h", 5683, ("pre", "fix"))),
        ("coap://[::1]:7/su-up/v1", ("coap", "::1", 7, ())),
    ],
)
def test_api_root_parsing(uri, expected):
    root = api.parse_api_root(uri)
    assert (root.scheme, root.host, root.port, root.prefix) == expected


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("127.0.0.1:5690", "no scheme"),
        ("http://h", "not supported"),
        ("coaps://h", "not supported"),
        ("coap://", "no host"),
        ("coap://h:99999", "not a valid URI"),
    ],
)
def test_api_root_errors_say_what_to_give(uri, words):
    with pytest.raises(api.ApiUriError) as e:
        api.parse_api_root(uri)
    assert words in str(e.value) and "coap://HOST[:PORT]" in str(e.value)


def test_collection_uri_and_query_uri_encode_items():
    root = api.parse_api_root("coap://[::1]:5683/x")
    assert root.collection_uri("svc") == "coap://[::1]:5683/x/su-uc/v1/val-services/svc/ue-configurations"
    uri = api.config_query_uri(root, "svc", "urn:a&b", ue_type="35209900")
    assert uri.endswith("/ue-configurations?ue-uri=urn:a%26b&ue-type=35209900")
    # the apiRoot or the API base URI, as a string (what the relay's clients are given)
    expected = "coap://127.0.0.1:5683/su-uc/v1/val-services/svc/ue-configurations"
    assert api.collection_uri("coap://127.0.0.1/su-uc/v1", "svc") == expected
    assert api.collection_uri("coap://127.0.0.1", "svc") == expected


def test_bulk_query_puts_the_flag_first_and_one_ue_uri_per_ue():
    assert api.bulk_query("f1", ["a", "b"], ue_type="35209900") == [
        "bulk-conf-flag=f1",
        "ue-uri=a",
        "ue-uri=b",
        "ue-type=35209900",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h:1", ("h", 1)), ("[::1]:2", ("::1", 2)), ("h", ("h", 9)), (":3", ("127.0.0.1", 3))],
)
def test_hostport(text, expected):
    assert api.parse_hostport(text, 9) == expected


@pytest.mark.parametrize("text", ["h:x", "h:70000"])
def test_hostport_errors(text):
    with pytest.raises(api.ApiUriError):
        api.parse_hostport(text, 9)


def test_private_options_and_ports_are_the_documented_numbers():
    assert (api.OPT_LAB_IDENTITY, api.OPT_URGENT) == (65000, 65020)
    assert (65020 & 0x1E) == 0x1C  # elective, safe-to-forward, NoCacheKey (RFC 7252 §5.4.6)
    assert (api.SCM_PORT, api.RELAY_PC5_PORT, api.GATEWAY_PORT) == (5683, 65401, 65402)
