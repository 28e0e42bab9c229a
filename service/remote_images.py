"""Image URLs as inputs -> their bytes, fetched without becoming a way into the deployment's own network.

http(s) only; every address a host resolves to must be public (or allow-listed: FEATURES_URL_ALLOW), and the
connection goes to the very address checked (no second lookup a rebinding DNS could answer differently), with
the Host header, SNI and certificate check for the name. Redirects are followed here, each hop checked again.
All of a request's URLs share one deadline, enforced by shutting their sockets (a server that drips bytes
cannot hold a thread), and the body limit, enforced while the bytes arrive. data: URIs are decoded, not fetched.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import cache
from urllib.parse import quote, unquote, urljoin, urlsplit

from engine.errors import FeaturesError, InvalidInput, TooLarge, Unprocessable
from engine.settings import Settings

FETCH_CONCURRENCY = 4  # URLs of one request fetched at once (the request thread waits for them)
MAX_REDIRECTS = 5
MAX_URL_CHARS = 8192
READ_CHUNK = 65536
STOP_GRACE_S = 1.0  # after a failure or the deadline, how long the other fetches get to notice their shut sockets
DATA_TYPES = ("image/jpeg", "image/png", "image/webp")
REDIRECTS = (301, 302, 303, 307, 308)
DEFAULT_PORTS = {"http": 80, "https": 443}
URL_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))  # quote() escapes only what is outside printable ASCII
USER_AGENT = "cnn-features (fetching an image URL given as input)"
# IPv6 forms that carry an IPv4 address: NAT64's well-known prefix (6to4 and Teredo have their own properties)
NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedUrl(InvalidInput):
    """A URL this deployment will not fetch: its scheme, its address, credentials in it, or fetching is off."""


class FetchFailed(Unprocessable):
    """A URL that could not be fetched: the remote answered an error, too slowly, or not at all."""


@dataclass(frozen=True)
class UrlPolicy:
    """What may be fetched, for how long and how much (from Settings: FEATURES_URL_*, FEATURES_MAX_BODY_BYTES)."""

    enabled: bool
    networks: tuple[Network, ...]
    hosts: frozenset[str]
    timeout_s: float
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        networks, hosts = [], set()
        for entry in settings.url_allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(settings.url_fetch, tuple(networks), frozenset(hosts), settings.url_timeout_s,
                   settings.max_body_bytes)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """Where one http(s) URL points: what to connect to and what to say once connected."""

    scheme: str
    host: str  # ASCII, lower case, IPv6 without brackets
    port: int
    path: str  # the request target: path and query, percent-encoded
    host_header: str


# ------------------------------------------------------------------------------------------------ reading URLs


def is_data_uri(url: str) -> bool:
    return url[:5].lower() == "data:"


def display(url: str) -> str:
    """A URL as errors show it: never a whole data URI, never credentials, no query (it may hold a token)."""
    if is_data_uri(url):
        return f"{url[: min(url.find(',') + 1 or 40, 40)]}… ({len(url)} characters)"
    try:
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}" if parts.netloc else url
        shown += "?…" if parts.query else ""
    except ValueError:
        shown = url
    return shown if len(shown) <= 200 else shown[:200] + "…"


def default_name(url: str) -> str | None:
    """The name an input fetched from `url` gets when the caller gave none: the last segment of its path."""
    if is_data_uri(url):
        return None
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    return unquote(path.rstrip("/").rpartition("/")[2]) or None


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a `data:image/(jpeg|png|webp);base64,…` URI; InvalidInput says what is wrong with another."""
    header, comma, data = uri.partition(",")
    if not comma:
        raise InvalidInput("is not a data URI: it has no ',' before its data (data:image/png;base64,…)")
    media, *params = (part.strip().lower() for part in header[5:].split(";"))
    if media not in DATA_TYPES:
        raise InvalidInput(f"is a data URI of type {media or '(none)'!r}; send one of {', '.join(DATA_TYPES)}")
    if params[-1:] != ["base64"]:
        raise InvalidInput(f"is a data URI without ';base64'; only base64 data URIs are read (data:{media};base64,…)")
    try:
        return base64.b64decode(unquote(data) if "%" in data else data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("is a data URI whose data is not valid base64") from None


def parse_url(url: str) -> Target:
    """An http(s) URL -> its Target; RefusedUrl for another scheme, credentials, no host or a malformed one."""
    if len(url) > MAX_URL_CHARS:
        raise RefusedUrl(f"is longer than {MAX_URL_CHARS} characters")
    if any(char <= " " or char == "\x7f" for char in url):
        raise RefusedUrl("holds spaces or control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedUrl(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise RefusedUrl(f"has the scheme {scheme or '(none)'!r}; only http and https URLs are fetched "
                         "(or send the image in a data:image/…;base64 URI)")  # fmt: skip
    if "@" in parts.netloc:
        raise RefusedUrl("holds credentials (user@host), which are never sent; remove them")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise RefusedUrl("has no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise RefusedUrl(f"has a host name that is not valid: {host!r}") from None
    port = port or DEFAULT_PORTS[scheme]
    path = quote(parts.path or "/", safe=URL_SAFE) + (f"?{quote(parts.query, safe=URL_SAFE)}" if parts.query else "")
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == DEFAULT_PORTS[scheme] else f"{shown_host}:{port}"
    return Target(scheme, host, port, path, host_header)


# ------------------------------------------------------------------------------------------------ addresses


def address_refusal(address: Address) -> str | None:
    """Why an address is not fetched from unless allow-listed ("a loopback address"), or None for a public one.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, NAT64, 6to4, Teredo) is judged by the IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = address_refusal(embedded)
            return f"{reason} ({embedded} inside an IPv6 address)" if reason else None
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return f"{'an' if kind[0] in 'u' else 'a'} {kind.replace('_', '-')} address"
    return None if address.is_global else "not a public address"


def _embedded(address: Address) -> Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped
    return None


def _allowed(address: Address, policy: UrlPolicy) -> bool:
    candidates = [address, *filter(None, [_embedded(address)])]
    return any(candidate in network for candidate in candidates for network in policy.networks)


def checked_addresses(target: Target, policy: UrlPolicy) -> list[Address]:
    """Every address the host resolves to, each one public or allow-listed (else RefusedUrl naming it)."""
    try:
        addresses = [ipaddress.ip_address(target.host)]
        named = ""
    except ValueError:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchFailed(f"the host {target.host} cannot be resolved ({getattr(exc, 'strerror', exc)})") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos))
        named = f"{target.host} resolves to "
    if target.host in policy.hosts:
        return addresses
    for address in addresses:
        reason = address_refusal(address)
        if reason and not _allowed(address, policy):
            raise RefusedUrl(f"{named}{address}{', ' if named else ' is '}{reason}; allow it with FEATURES_URL_ALLOW")
    return addresses


# ------------------------------------------------------------------------------------------ one request's fetching


class _CutShort(Exception):
    """A fetch ended by the deadline, or because another one of the same request failed. Which of several cut
    short at once raises first is chance: fetch_all names the lowest-indexed one (or the failure that came first)."""


class _Deadline:
    """The time all of one request's URLs have. When it passes (or `end` is called after a failure), every socket
    still open is shut down, which ends any read or handshake blocked on it, however slowly the server drips."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._ended = False
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.end)
        self._timer.daemon = True
        self._timer.start()

    def timed_out(self) -> FetchFailed:
        return FetchFailed(f"not fetched within {self.seconds:g} s (FEATURES_URL_TIMEOUT_S, the time for all of "
                           "a request's URLs)")  # fmt: skip

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0 or self._ended:
            raise _CutShort()
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._ended:
                raise _CutShort()
            self._sockets.add(sock)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def end(self) -> None:
        with self._lock:
            self._ended = True
            sockets, self._sockets = self._sockets, set()
        self._timer.cancel()
        for sock in sockets:
            with contextlib.suppress(OSError):  # not connected yet, or already closed
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: safe under a TLS read

    @property
    def ended(self) -> bool:
        return self._ended or time.monotonic() >= self.at


class _Budget:
    """The body limit, shared by a request's URLs: their images together may not pass it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def announce(self, length: int) -> None:
        """Refuse a Content-Length that cannot fit before reading any of it."""
        room = self.limit - self.used
        if length > room:
            left = "" if room == self.limit else f"the {room} bytes left of "
            raise self._too_large(f"its Content-Length {length} is over {left}the body limit")

    def take(self, count: int) -> None:
        with self._lock:
            self.used += count
            over = self.used > self.limit
        if over:
            raise self._too_large("it sent more than the body limit")

    def _too_large(self, what: str) -> TooLarge:
        return TooLarge(f"{what} of {self.limit} bytes (FEATURES_MAX_BODY_BYTES, for all of a request's images)",
                        limit=self.limit)  # fmt: skip


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # certificates checked against the system's CAs, for the URL's host name


def fetch_all(urls: dict[int, str], policy: UrlPolicy) -> dict[int, bytes]:
    """The bytes at each http(s) URL (keyed by its input's index), fetched FETCH_CONCURRENCY at a time within one
    deadline; the first failure (lowest index) is raised as the error of that input, naming its URL."""
    if not urls:
        return {}
    first = min(urls)
    if not policy.enabled:
        raise RefusedUrl(
            "fetching image URLs is off in this deployment (FEATURES_URL_FETCH=off); send the image itself, "
            "e.g. in a data:image/…;base64 URI"
        ).about(_subject(first, urls[first]), index=first, url=display(urls[first]))
    for index, url in sorted(urls.items()):  # every refusal that needs no network comes before any connection
        try:
            parse_url(url)
        except FeaturesError as exc:
            raise exc.about(_subject(index, url), index=index, url=display(url)) from None
    deadline, budget = _Deadline(policy.timeout_s), _Budget(policy.max_bytes)
    pool = ThreadPoolExecutor(max_workers=min(len(urls), FETCH_CONCURRENCY), thread_name_prefix="url-fetch")
    try:
        futures = {index: pool.submit(_fetch_one, index, url, policy, deadline, budget) for index, url in urls.items()}
        _, pending = wait(futures.values(), timeout=policy.timeout_s + STOP_GRACE_S, return_when=FIRST_EXCEPTION)
        if pending:  # one failed, or the deadline passed with a resolver still busy: the others are moot
            deadline.end()
            wait(pending, timeout=STOP_GRACE_S)
        return _results(futures, urls, deadline)
    finally:
        deadline.end()
        pool.shutdown(wait=False, cancel_futures=True)  # a resolver past the deadline finishes on its own


def _results(futures: dict[int, Future], urls: dict[int, str], deadline: _Deadline) -> dict[int, bytes]:
    """Each URL's bytes, or the error of the lowest-indexed URL that failed for a reason of its own, or else the
    timeout of the lowest-indexed one that was cut short."""
    ended = {index: future for index, future in sorted(futures.items()) if future.done() and future.exception()}
    for error in map(Future.exception, ended.values()):
        if not isinstance(error, _CutShort):
            raise error
    unfinished = sorted(set(ended) | {index for index, future in futures.items() if not future.done()})
    if unfinished:
        index = unfinished[0]
        raise deadline.timed_out().about(_subject(index, urls[index]), index=index, url=display(urls[index]))
    return {index: future.result() for index, future in futures.items()}


def _subject(index: int, url: str) -> str:
    return f"inputs[{index}] ({display(url)})"


def _fetch_one(index: int, url: str, policy: UrlPolicy, deadline: _Deadline, budget: _Budget) -> bytes:
    try:
        return _fetch(url, policy, deadline, budget)
    except FeaturesError as exc:
        raise exc.about(_subject(index, url), index=index, url=display(url)) from None


def _fetch(url: str, policy: UrlPolicy, deadline: _Deadline, budget: _Budget) -> bytes:
    """GET, following redirects here (at most MAX_REDIRECTS), every hop's scheme and addresses checked anew."""
    for hop in range(MAX_REDIRECTS + 1):
        deadline.remaining()  # a URL that waited for a free fetcher may have none left
        try:
            target = parse_url(url)
            addresses = checked_addresses(target, policy)
        except FeaturesError as exc:
            raise (exc.about(f"redirected to {display(url)}") if hop else exc) from None
        deadline.remaining()  # DNS may have used it all
        connection, response, sock = _get(target, addresses, deadline)
        try:
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchFailed(f"the server answered {response.status} without a Location to redirect to")
                url = urljoin(url, location.strip())
                continue
            if response.status != 200:
                raise FetchFailed(f"the server answered HTTP {response.status} {response.reason}".rstrip(),
                                  upstream_status=response.status)  # fmt: skip
            return _body(response, deadline, budget)
        except (OSError, http.client.HTTPException) as exc:
            broken = FetchFailed(f"the answer broke off ({_why(exc)})")
            raise (_CutShort() if deadline.ended else broken) from None
        finally:
            deadline.forget(sock)
            response.close()
            connection.close()
            sock.close()
    raise FetchFailed(f"redirected more than {MAX_REDIRECTS} times")


def _get(target: Target, addresses: list[Address], deadline: _Deadline):
    """Connect to the first address that answers (one of those checked, never a name resolved again), then send
    the GET: the connection, the response (its head read) and the socket the deadline watches."""
    sock = _connect(target, addresses, deadline)
    connection = http.client.HTTPConnection(target.host, target.port)  # given its socket, so it never connects
    try:
        if target.scheme == "https":
            plain = sock
            sock = _tls().wrap_socket(plain, server_hostname=target.host, do_handshake_on_connect=False)
            deadline.forget(plain)
            deadline.watch(sock)
            sock.do_handshake()
        connection.sock = sock
        connection.putrequest("GET", target.path, skip_host=True)  # Accept-Encoding: identity (nothing to inflate)
        for name, value in (("Host", target.host_header), ("User-Agent", USER_AGENT), ("Accept", "image/*"),
                            ("Connection", "close")):  # fmt: skip
            connection.putheader(name, value)
        connection.endheaders()
        return connection, connection.getresponse(), sock
    except BaseException as exc:
        deadline.forget(sock)
        connection.close()
        sock.close()
        if not isinstance(exc, OSError | http.client.HTTPException):
            raise
        if deadline.ended:
            raise _CutShort() from None
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise FetchFailed(f"the TLS certificate of {target.host} is not valid ({exc.verify_message})") from None
        raise FetchFailed(f"no valid HTTP answer from {target.host_header} ({_why(exc)})") from None


def _connect(target: Target, addresses: list[Address], deadline: _Deadline) -> socket.socket:
    failures = []
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        deadline.watch(sock)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect((str(address), target.port))
            deadline.remaining()  # the end may have come while connecting, too early to shut this socket
            return sock
        except BaseException as exc:
            deadline.forget(sock)
            sock.close()
            if not isinstance(exc, OSError):
                raise
            if deadline.ended:
                raise _CutShort() from None
            failures.append(f"{address}: {_why(exc)}")
    raise FetchFailed(f"cannot connect to {target.host_header} ({'; '.join(failures)})")


def _body(response: http.client.HTTPResponse, deadline: _Deadline, budget: _Budget) -> bytes:
    """The answer's body, refused as soon as it is known to pass the body limit (Content-Length, or bytes read)."""
    announced = response.length  # None: chunked, or until the server closes
    if announced is not None:
        budget.announce(announced)
    parts = []
    while chunk := response.read1(READ_CHUNK):
        budget.take(len(chunk))
        parts.append(chunk)
        deadline.remaining()
    if deadline.ended:  # the deadline shut the socket: what arrived is cut off, not the whole image
        raise _CutShort()
    data = b"".join(parts)
    if announced is not None and len(data) < announced:
        raise FetchFailed(f"the answer ended after {len(data)} of its {announced} bytes")
    return data


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return re.sub(r"\s+", " ", text)[:200]
