"""service/remote_images.py without a network: which addresses are refused (IPv6 and IPv4-mapped forms included),
the allow-list setting, which URLs are refused before any connection, what errors show of a URL, data: URIs; and
through the app on the tiny model, data: URIs and FEATURES_URL_FETCH=off. Fetching from a real server (redirects,
limits, a slow drip) is tests/integration/test_url_inputs.py.
"""

from __future__ import annotations

import base64
import ipaddress

import pytest

from engine.errors import InvalidInput
from engine.settings import Settings, SettingsError
from service.remote_images import (
    RefusedUrl,
    UrlPolicy,
    address_refusal,
    checked_addresses,
    decode_data_uri,
    default_name,
    display,
    fetch_all,
    parse_url,
)
from tests.helpers import photo_jpeg
from tests.openapi_check import conforms
from tests.unit.conftest import make_app
from tests.unit.tiny_model import NAME

FEATURES = f"/v1/models/{NAME}/features"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.2", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),  # cloud metadata services
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT: neither private nor global
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private address"),
        ("ff02::1", "a multicast address"),
        ("::ffff:127.0.0.1", "a loopback address (127.0.0.1 inside an IPv6 address)"),
        ("::ffff:169.254.169.254", "a link-local address (169.254.169.254 inside an IPv6 address)"),
        ("::ffff:10.0.0.1", "a private address (10.0.0.1 inside an IPv6 address)"),
        ("64:ff9b::a9fe:a9fe", "a link-local address (169.254.169.254 inside an IPv6 address)"),  # NAT64
        ("2002:7f00:1::", "a loopback address (127.0.0.1 inside an IPv6 address)"),  # 6to4
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_which_addresses_are_refused(address, reason):
    assert address_refusal(ipaddress.ip_address(address)) == reason


def test_the_allow_list_setting_is_parsed_and_normalised():
    settings = Settings.from_env({"FEATURES_URL_ALLOW": " 127.0.0.1, 10.0.0.0/8,::1 ,Images.Internal., 10.1.2.3/8,"})
    assert settings.url_allow == ("127.0.0.1/32", "10.0.0.0/8", "::1/128", "images.internal", "10.0.0.0/8")
    assert Settings.from_env({}).url_allow == () and Settings.from_env({}).url_fetch is True
    policy = UrlPolicy.from_settings(settings)
    assert policy.hosts == {"images.internal"} and ipaddress.ip_network("::1/128") in policy.networks
    assert (policy.timeout_s, policy.max_bytes) == (10.0, Settings().max_body_bytes)
    other = Settings.from_env({"FEATURES_URL_FETCH": "OFF", "FEATURES_URL_TIMEOUT_S": "2.5"})
    assert (other.url_fetch, other.url_timeout_s) == (False, 2.5)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("URL_ALLOW", "10.0.0.0/33", "'10.0.0.0/33' is neither a network"),
        ("URL_ALLOW", "1.2.3.999", "'1.2.3.999' is neither a network"),
        ("URL_ALLOW", "images internal", "'images internal' is neither a network"),
        ("URL_ALLOW", "http://images.internal/", "is neither a network"),
        ("URL_FETCH", "maybe", "use one of on, off"),
        ("URL_TIMEOUT_S", "0", "must be a positive number of seconds"),
        ("URL_TIMEOUT_S", "nan", "must be a positive number of seconds"),
        ("URL_TIMEOUT_S", "ten", "is not a number of seconds"),
    ],
)
def test_bad_url_settings_are_refused_with_their_name(variable, value, message):
    with pytest.raises(SettingsError, match=f"FEATURES_{variable}"):
        Settings.from_env({f"FEATURES_{variable}": value})
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({f"FEATURES_{variable}": value})
    assert message in caught.value.detail


def policy(*allow: str) -> UrlPolicy:
    return UrlPolicy.from_settings(Settings(url_allow=allow))


def test_addresses_are_checked_and_the_allow_list_lets_some_through():
    with pytest.raises(RefusedUrl, match=r"^127\.0\.0\.1 is a loopback address; allow it with FEATURES_URL_ALLOW$"):
        checked_addresses(parse_url("http://127.0.0.1:8000/cat.jpg"), policy())
    with pytest.raises(RefusedUrl, match=r"^localhost resolves to (127\.0\.0\.1|::1), a loopback address; allow"):
        checked_addresses(parse_url("http://localhost/cat.jpg"), policy())
    with pytest.raises(RefusedUrl, match=r"169\.254\.169\.254 is a link-local address"):
        checked_addresses(parse_url("http://169.254.169.254/latest/meta-data/"), policy("127.0.0.1"))
    with pytest.raises(RefusedUrl, match="::ffff:a9fe:a9fe is a link-local address"):
        checked_addresses(parse_url("http://[::ffff:169.254.169.254]/"), policy())
    with pytest.raises(RefusedUrl, match=r"127\.0\.0\.2 is a loopback address"):
        checked_addresses(parse_url("http://127.0.0.2/"), policy("127.0.0.1/32"))
    assert checked_addresses(parse_url("http://127.0.0.1/"), policy("127.0.0.1/32")) == [
        ipaddress.ip_address("127.0.0.1")
    ]
    mapped = ipaddress.ip_address("::ffff:127.0.0.1")
    assert checked_addresses(parse_url("http://[::ffff:127.0.0.1]/"), policy("127.0.0.0/8")) == [mapped]
    assert checked_addresses(parse_url("http://[fd00::5]/"), policy("fd00::/8")) == [ipaddress.ip_address("fd00::5")]
    assert checked_addresses(parse_url("http://8.8.8.8/"), policy()) == [ipaddress.ip_address("8.8.8.8")]
    assert checked_addresses(parse_url("http://LocalHost./"), policy("localhost"))  # a host name allows its addresses


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "has the scheme 'file'; only http and https URLs are fetched"),
        ("ftp://example.com/cat.jpg", "has the scheme 'ftp'"),
        ("gopher://example.com:70/", "has the scheme 'gopher'"),
        ("dict://127.0.0.1:6379/info", "has the scheme 'dict'"),
        ("javascript:alert(1)", "has the scheme 'javascript'"),
        ("//example.com/cat.jpg", "has the scheme '(none)'"),
        ("cat.jpg", "has the scheme '(none)'"),
        ("http://user:secret@example.com/cat.jpg", "holds credentials (user@host), which are never sent"),
        ("http://example.com@169.254.169.254/", "holds credentials"),
        ("http:///cat.jpg", "has no host"),
        ("http://[::1/cat.jpg", "is not a valid URL"),
        ("http://example.com:99999/", "is not a valid URL"),
        ("http://example.com/a cat.jpg", "holds spaces or control characters"),
        ("http://example.com/\r\nHost: evil", "holds spaces or control characters"),
        ("http://example.com/" + "a" * 9000, "is longer than 8192 characters"),
    ],
)
def test_urls_refused_before_any_connection(url, message):
    with pytest.raises(RefusedUrl) as caught:
        parse_url(url)
    assert message in caught.value.detail
    with pytest.raises(RefusedUrl) as caught:
        fetch_all({3: url}, policy())
    assert caught.value.facts["index"] == 3 and caught.value.detail.startswith("inputs[3] (")
    assert "secret" not in caught.value.detail and len(caught.value.detail) < 600


def test_a_target_keeps_the_name_for_host_header_and_tls():
    target = parse_url("HTTPS://Images.Example.COM:8443/a%20b/c d?q=é#frag".replace(" ", "%20"))
    assert (target.scheme, target.host, target.port) == ("https", "images.example.com", 8443)
    assert (target.path, target.host_header) == ("/a%20b/c%20d?q=%C3%A9", "images.example.com:8443")
    ipv6 = parse_url("http://[2606:4700::1111]/")
    assert (ipv6.host, ipv6.port, ipv6.host_header, ipv6.path) == ("2606:4700::1111", 80, "[2606:4700::1111]", "/")
    assert parse_url("http://bücher.example/").host == "xn--bcher-kva.example"


def test_errors_never_show_a_whole_data_uri_credentials_or_a_query():
    data_uri = "data:image/png;base64," + "A" * 100_000
    assert display(data_uri) == "data:image/png;base64,… (100022 characters)"
    assert display("https://user:pw@example.com/cat.jpg?signature=secret") == "https://example.com/cat.jpg?…"
    assert len(display("https://example.com/" + "a" * 1000)) == 201
    assert default_name("https://example.com/photos/cat%20one.jpg?size=2") == "cat one.jpg"
    assert default_name("https://example.com/photos/") == "photos"
    assert default_name("https://example.com/") is None and default_name(data_uri) is None


def test_data_uris():
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n...").decode()
    assert decode_data_uri(f"data:image/png;base64,{png}") == b"\x89PNG\r\n\x1a\n..."
    assert decode_data_uri(f"DATA:Image/PNG;BASE64,{png}") == b"\x89PNG\r\n\x1a\n..."
    assert decode_data_uri(f"data:image/webp;name=x.webp;base64,{png}") == b"\x89PNG\r\n\x1a\n..."
    assert decode_data_uri(f"data:image/jpeg;base64,{png.replace('=', '%3D')}") == b"\x89PNG\r\n\x1a\n..."
    for uri, message in [
        ("data:text/html;base64,PGh0bWw+", "a data URI of type 'text/html'; send one of image/jpeg, image/png"),
        ("data:image/svg+xml;base64,PHN2Zz4=", "of type 'image/svg+xml'"),
        ("data:;base64,AAAA", "of type '(none)'"),
        ("data:image/png,%89PNG", "without ';base64'; only base64 data URIs are read"),
        ("data:image/png;base64", "has no ','"),
        ("data:image/png;base64,not base64!", "not valid base64"),
    ]:
        with pytest.raises(InvalidInput) as caught:
            decode_data_uri(uri)
        assert message in caught.value.detail


@pytest.fixture(scope="module")
def no_fetch_client(tiny_models):
    return make_app(tiny_models, url_fetch=False).test_client()


def test_data_uris_are_served_like_uploads_even_with_fetching_off(no_fetch_client):
    image = photo_jpeg("coffee")
    uri = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    upload = no_fetch_client.post(FEATURES, json={"inputs": [{"image": base64.b64encode(image).decode()}]})
    as_uri = no_fetch_client.post(FEATURES, json={"inputs": [{"url": uri}, {"url": uri, "name": "coffee"}]})
    conforms(as_uri, "/v1/models/{model_name}/features", "post")
    assert as_uri.status_code == 200, as_uri.json
    results = as_uri.json["results"]
    assert [r["name"] for r in results] == [None, "coffee"]
    assert results[0]["features"] == results[1]["features"] == upload.json["results"][0]["features"]
    bad = no_fetch_client.post(FEATURES, json={"inputs": [{"url": uri}, {"url": "data:image/gif;base64,R0lGOD"}]})
    assert bad.status_code == 400 and bad.json["index"] == 1
    assert bad.json["detail"] == (
        "inputs[1] (data:image/gif;base64,… (28 characters)): is a data URI of type 'image/gif'; "
        "send one of image/jpeg, image/png, image/webp"
    )


def test_fetching_off_refuses_urls_clearly(no_fetch_client):
    response = no_fetch_client.post(FEATURES, query_string={"url": "https://example.com/cat.jpg"})
    conforms(response, "/v1/models/{model_name}/features", "post")
    assert response.status_code == 400
    assert response.json["detail"] == (
        "inputs[0] (https://example.com/cat.jpg): fetching image URLs is off in this deployment "
        "(FEATURES_URL_FETCH=off); send the image itself, e.g. in a data:image/…;base64 URI"
    )
    assert response.json["index"] == 0 and response.json["url"] == "https://example.com/cat.jpg"


def test_url_is_an_input_never_an_option(no_fetch_client):
    """In the query and in a form, `url` names an input; in JSON it must be a string inside an input."""
    image = photo_jpeg("coffee")
    uri = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    query = no_fetch_client.post(FEATURES, query_string={"url": uri, "levels": "low"})  # no body, no Content-Type
    assert query.status_code == 200, query.json
    assert query.json["options"]["levels"] == ["low"] and len(query.json["results"]) == 1
    form = no_fetch_client.post(FEATURES, data={"url": [uri, uri], "levels": "low"}, content_type="multipart/form-data")
    assert form.status_code == 200 and len(form.json["results"]) == 2, form.json
    not_string = no_fetch_client.post(FEATURES, json={"inputs": [{"url": ["https://example.com/"]}]})
    assert not_string.status_code == 400 and "inputs[0].url must be a string" in not_string.json["detail"]
    top_level = no_fetch_client.post(FEATURES, json={"inputs": [{"url": uri}], "url": uri})
    assert top_level.status_code == 400 and "unknown option 'url'" in top_level.json["detail"]
    text_body = no_fetch_client.post(FEATURES, query_string={"url": uri}, data="not empty", content_type="text/plain")
    assert text_body.status_code == 415
    empty = no_fetch_client.post(FEATURES, data=b"", content_type="text/plain")
    assert empty.status_code == 415  # no url=: an empty body is still no request
    too_many = no_fetch_client.post(FEATURES, query_string=[("url", uri)] * 9)
    assert too_many.status_code == 413 and too_many.json["limit"] == 8
