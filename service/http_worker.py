"""gunicorn worker that buffers each request in its event loop, so slow clients never hold a request thread.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives; a client that
then trickles its headers or body, or stops mid-request, holds that thread, and eight of them starve the
service. This worker reads every request in the event loop instead (like nginx's request buffering) and gives
a thread only a request whose every byte is in: framing and size limits are checked as bytes arrive
(service/framing.py), a request that is not in within its deadline is answered 408, and refused connections
linger closed in the loop rather than in a thread. A thread then parses the buffered bytes with gunicorn's own
parser; its writes are bounded by a send timeout, so a client that stops reading frees the thread too.
gunicorn's own error pages (a malformed request line, a header it refuses) become problem+json as well.
SIGHUP (forwarded by the master, service/gunicorn.conf.py) asks for a reload of the models in place.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from http import HTTPStatus

import orjson
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import TConn, ThreadWorker

from engine.settings import Settings
from service.framing import FramingError, RequestFramer
from service.logs import request_id_from
from service.v2_framing import speaks_v2

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; gunicorn's finer per-line limits still apply after
SPOOL_IN_MEMORY = 1024 * 1024  # a request body above this waits on disk, not in the worker's memory
RECV_BYTES = 256 * 1024
LINGER_SECONDS = 2.0  # after a refusal, read and drop what the client still sends so it sees the answer
_STOP_LINGER = 2.0  # a stopping worker still takes a request already on its way on an idle connection

_CLIENT_ERROR_STATUS = {  # gunicorn's parser exceptions -> status; any other is answered 400
    http_errors.LimitRequestLine: 414,
    http_errors.LimitRequestHeaders: 431,
    http_errors.ExpectationFailed: 417,
    http_errors.ForbiddenProxyRequest: 403,
}


def problem_bytes(
    status: int, detail: str, request_id: str | None = None, target: bytes | None = None, **extensions: object
) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, with a request id like the app's.

    problem+json, or `{"error": …}` when the request was meant for the Open Inference Protocol's routes."""
    title = HTTPStatus(status).phrase
    request_id = request_id_from(request_id)
    if target is not None and speaks_v2(target.partition(b"?")[0].decode("latin-1")):
        body, media_type = orjson.dumps({"error": detail}), "application/json"
    else:
        problem = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extensions}
        body, media_type = orjson.dumps({**problem, "request_id": request_id}), "application/problem+json"
    head = (f"HTTP/1.1 {status} {title}\r\nContent-Type: {media_type}\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\nConnection: close\r\n\r\n")  # fmt: skip
    return head.encode("latin-1") + body


def _count_refusal(reason: str) -> None:
    # imported on first use, in the worker: gunicorn imports this module in the master before on_starting
    # sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client picks its storage when service.metrics is imported
    from service import metrics

    metrics.REFUSED.labels(reason).inc()


def _new_store():
    """Where a request's bytes wait: memory up to SPOOL_IN_MEMORY, then an unlinked temporary file."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)


def _read_and_close(store) -> Iterator[bytes]:
    store.seek(0)
    try:
        while chunk := store.read(SPOOL_IN_MEMORY):
            yield chunk
    finally:
        store.close()


class _BufferedRequest(Request):
    """The loop has already answered `Expect: 100-continue`; gunicorn must not send a second 100."""

    _policy_expect_continue = False


class _BufferedParser(RequestParser):
    mesg_class = _BufferedRequest


class BufferedConn(TConn):
    """A client connection with the request being received: its framer, its bytes and its deadline."""

    def __init__(self, cfg, sock, client, server, limits: Settings):
        super().__init__(cfg, sock, client, server)
        self.limits = limits
        self.store = None
        self.leftover = b""  # bytes of a pipelined next request, read with the previous one
        self.lingering = False
        self.expect_next_request(limits.header_timeout)

    def expect_next_request(self, idle_seconds: float) -> None:
        """Start over for the next request on this connection (a new one, or kept alive)."""
        self.framer = RequestFramer(MAX_HEAD_BYTES, self.limits.max_body_bytes)
        if self.store is not None:
            self.store.close()
        self.store = _new_store()
        self.deadline = time.monotonic() + idle_seconds
        self.head_started: float | None = None
        self.body_started: float | None = None
        self.continued = False

    def update_deadline(self) -> None:
        """Headers within header_timeout of the first byte; the body within body_timeout, extended by one second
        per body_min_rate bytes received (Apache's mod_reqtimeout model), so only slow trickles are cut off."""
        now = time.monotonic()
        if self.framer.head is None:
            if self.head_started is None:
                self.head_started = now
                self.deadline = now + self.limits.header_timeout
            return
        if self.body_started is None:
            self.body_started = now
        grace = self.framer.body_bytes / self.limits.body_min_rate
        self.deadline = self.body_started + self.limits.body_timeout + grace

    def request_bytes(self) -> Iterator[bytes]:
        """The buffered request for gunicorn's parser, a megabyte at a time; its store is closed at the end."""
        return _read_and_close(self.store)

    def close(self, graceful=False):
        self.store.close()
        util.close(self.sock)


class BufferingWorker(ThreadWorker):
    """gthread, but a thread only ever sees a request that has fully arrived."""

    # SIGHUP is left out of the signals gunicorn resets to their default (which would end the worker) before
    # init_signals installs this worker's own handler
    SIGNALS = tuple(sig for sig in ThreadWorker.SIGNALS if sig != signal.SIGHUP)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = Settings.from_env()
        self.receiving: set[BufferedConn] = set()  # waiting for (the rest of) a request, or lingering closed
        self._idle_capped = False  # on stop, idle connections were given their last moments
        self._answering = threading.local()  # .target: the request a thread is answering, for handle_error

    def init_process(self):
        """After the fork: give freed image memory back to the OS (engine/memory.py), then gthread's set-up."""
        from engine import memory

        memory.tune_malloc()
        super().init_process()

    def init_signals(self):
        """gunicorn's signals, plus SIGHUP: noted in `reload_requested`, which the reloader follows once the app is
        loaded (gunicorn.conf.py post_worker_init); one that arrives while the app loads is kept for after."""
        super().init_signals()
        self.reload_requested = threading.Event()
        signal.signal(signal.SIGHUP, self.handle_hup)
        signal.siginterrupt(signal.SIGHUP, False)  # like SIGTERM: never interrupt a request's system calls

    def handle_hup(self, sig, frame):
        self.reload_requested.set()  # nothing more in a signal handler: the reloader's thread does the work

    # --- the event loop: receive, frame, dispatch ----------------------------------------------------------

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = BufferedConn(self.cfg, client_sock, client_addr, listener.getsockname(), self.limits)
        self._receive(conn)

    def _receive(self, conn: BufferedConn) -> None:
        conn.sock.setblocking(False)
        self.receiving.add(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if conn.leftover:
            data, conn.leftover = conn.leftover, b""
            self._take(conn, data)

    def _on_readable(self, conn: BufferedConn, _sock) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if conn.lingering:
            if not data:
                self._close(conn)
            return
        if not data:  # the client went away, mid-request or between requests
            self._close(conn)
            return
        self._take(conn, data)

    def _take(self, conn: BufferedConn, data: bytes) -> None:
        try:
            used = conn.framer.feed(data)
        except FramingError as exc:
            reason = "too_large" if exc.status == 413 else "malformed"
            self._refuse(conn, exc.status, exc.detail, reason, exc.request_id, exc.target, **exc.extensions)
            return
        conn.store.write(data[:used])
        conn.leftover = data[used:]
        head = conn.framer.head
        if head is not None and head.expect_continue and not conn.continued and not conn.framer.done:
            conn.continued = True
            self._send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.update_deadline()
        if conn.framer.done:
            self._dispatch(conn)

    def _dispatch(self, conn: BufferedConn) -> None:
        """The whole request is in: unregister from the loop and let a thread parse and answer it."""
        self.poller.unregister(conn.sock)
        self.receiving.discard(conn)
        conn.parser = _BufferedParser(self.cfg, conn.request_bytes(), conn.client)
        conn.initialized = conn.data_ready = True  # gthread's handle() then skips its own waiting and set-up
        self.enqueue_req(conn)

    def finish_request(self, conn: BufferedConn, fs):
        """Back on the loop after a thread answered: keep the connection for the next request, or close it."""
        try:
            keep_alive = bool(fs.result()) if not fs.cancelled() else False
        except Exception:
            keep_alive = False
        if not keep_alive:
            self._linger(conn)
            return
        idle = self.cfg.keepalive if self.alive else min(self.cfg.keepalive, _STOP_LINGER)
        conn.expect_next_request(idle)
        try:
            self._receive(conn)
        except (OSError, ValueError):
            self._close(conn)

    # --- refusing and closing, without blocking the loop ---------------------------------------------------

    def _refuse(self, conn: BufferedConn, status: int, detail: str, reason: str, request_id: str | None = None,
                target: bytes | None = None, **extensions: object) -> None:  # fmt: skip
        head = conn.framer.head
        request_id = request_id_from(request_id or (head.request_id if head else None))
        self.log.info("refused request %s from %s: %d %s", request_id, conn.client[0] if conn.client else "?",
                      status, detail)  # fmt: skip
        _count_refusal(reason)
        target = target or (head.target if head else None)
        self._send_quietly(conn, problem_bytes(status, detail, request_id, target, **extensions))
        self._linger(conn)

    def _linger(self, conn: BufferedConn) -> None:
        """Half-close, then drop what the client still sends for a moment (RFC 9112 9.6), so it reads our
        answer instead of a reset; the loop, not a thread, waits."""
        conn.store.close()
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.lingering = True
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self.receiving.add(conn)
        try:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        except KeyError:  # still registered (refused while receiving)
            self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        except (OSError, ValueError):
            self._close(conn)

    def _send_quietly(self, conn: BufferedConn, data: bytes) -> None:
        """A short answer from the loop: the socket buffer of a fresh connection takes it whole."""
        with contextlib.suppress(OSError):
            conn.sock.send(data)

    def _close(self, conn: BufferedConn) -> None:
        if conn in self.receiving:
            self.receiving.discard(conn)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """Every loop turn: answer 408 to requests past their deadline, end lingering closes, and on stop
        give idle connections a last moment for a request already on its way."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and not self._idle_capped:
            self._idle_capped = True
            for conn in self.receiving:
                if not conn.lingering and not conn.framer.received:
                    conn.deadline = min(conn.deadline, now + _STOP_LINGER)
        for conn in [c for c in self.receiving if c.deadline <= now]:
            if conn.lingering or not conn.framer.received:
                self._close(conn)  # an idle connection, or a lingering close: nothing to answer
            else:
                waited = "headers" if conn.framer.head is None else "body"
                self._refuse(conn, 408, f"the request {waited} did not arrive in time; the connection is closed",
                             f"{waited}_timeout")  # fmt: skip

    # --- in a request thread ---------------------------------------------------------------------------------

    def handle(self, conn):
        """gthread's, noting which target this thread answers: gunicorn's own refusals are not told the request."""
        head = conn.framer.head
        self._answering.target = head.target if head else None
        try:
            return super().handle(conn)
        finally:
            self._answering.target = None

    def handle_request(self, req, conn):
        """gthread's handler, with writes bounded: a client that stops reading frees the thread."""
        conn.sock.settimeout(self.limits.send_timeout)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.info("client %s took no response bytes for %ss; connection closed", conn.client[0],
                          self.limits.send_timeout)  # fmt: skip
            _count_refusal("send_timeout")
            return False

    def handle_error(self, req, client, addr, exc):
        """gunicorn's own answers (a request it cannot parse) as problem+json instead of an HTML page."""
        app_fault = isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName))
        if isinstance(exc, http_errors.ParseException) and not app_fault:
            status = _CLIENT_ERROR_STATUS.get(type(exc), 400)
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.log.info("refused request from %s: %d %s", addr[0] if addr else "?", status, detail)
            _count_refusal("malformed")
        else:
            self.log.exception("error handling request")
            status, detail = 500, "internal error; see the server log"
        try:
            util.write_nonblock(client, problem_bytes(status, detail, target=getattr(self._answering, "target", None)))
        except Exception:
            self.log.debug("failed to send the error answer")
