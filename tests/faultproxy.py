"""A fault-injecting HTTP/1.1 reverse proxy for the moto S3 server the tests use.

Every request is forwarded to the upstream endpoint unchanged (method, path and query, headers
including the SigV4-signed ``Host``, body), except that the proxy can:

* answer every ``slowdown_every``-th request with ``503 SlowDown`` without forwarding it, never on a
  call's last attempt (botocore's ``amz-sdk-request: attempt=N; max=M`` header), so that no call can
  run out of retries by chance and a test's outcome does not depend on thread timing;
* answer every request whose key contains one of ``deny`` with ``403 AccessDenied``, unforwarded;
* forward a PUT whose key contains one of ``lose_response`` (each entry once) and then lose the answer:
  the client gets ``503 ServiceUnavailable`` instead (``lose_by="503"``) or a closed connection (``"close"``);
* serialise conditional PUTs (``If-Match`` / ``If-None-Match``) per key, so that moto's unlocked
  check-then-write becomes atomic as it is on S3 (``serialise_conditional_puts``);
* count requests per (method, key) in ``counts`` and injected faults per kind in ``faults``.

Bodies are buffered (the tests' objects are small). ``Expect: 100-continue`` is answered by
``http.server`` itself; a ``Transfer-Encoding: chunked`` body is decoded and forwarded with a
``Content-Length``; ``Content-Encoding: aws-chunked`` bodies pass through byte for byte.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import unquote, urlsplit

# Headers that belong to one connection, not to the request (RFC 9110 7.6.1), and Expect: the proxy
# has answered 100-continue and holds the whole body.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "expect", "content-length",
}  # fmt: skip
_ATTEMPT = re.compile(r"attempt=(\d+);\s*max=(\d+)")


class FaultProxy(ThreadingHTTPServer):
    """``with FaultProxy("http://127.0.0.1:5000") as proxy:`` -> ``proxy.endpoint_url``."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.endpoint_url = f"http://127.0.0.1:{self.server_address[1]}"
        self._lock = threading.Lock()
        self._key_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._thread = threading.Thread(target=self.serve_forever, name="faultproxy", daemon=True)
        self.reset()

    def reset(self) -> None:
        """No faults, no counts."""
        self.slowdown_every = 0
        self.deny: tuple[str, ...] = ()
        self.lose_response: list[str] = []
        self.lose_by: Literal["503", "close"] = "503"
        self.serialise_conditional_puts = False
        self.counts: Counter[tuple[str, str]] = Counter()
        self.faults: Counter[str] = Counter()
        self._seen = 0

    def count(self, method: str, key: str) -> int:
        """Requests of ``method`` (``"*"``: any) whose path contains ``key``."""
        return sum(n for (m, path), n in self.counts.items() if method in ("*", m) and key in path)

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is not news
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def decide(self, method: str, path: str, headers: Message) -> str | None:
        """The fault for this request, if any: "deny", "slowdown" or "lose"; counts it."""
        with self._lock:
            self.counts[method, path] += 1
            self._seen += 1
            fault = None
            if any(key in path for key in self.deny):
                fault = "deny"
            elif self.slowdown_every and self._seen % self.slowdown_every == 0 and not _last_attempt(headers):
                fault = "slowdown"
            elif method == "PUT" and (lost := next((k for k in self.lose_response if k in path), None)):
                self.lose_response.remove(lost)
                fault = "lose"
            if fault:
                self.faults[fault] += 1
            return fault

    @contextlib.contextmanager
    def serialised(self, method: str, path: str, headers: Message) -> Iterator[None]:
        """Hold the key's lock around a conditional PUT when asked to; otherwise nothing."""
        conditional = method == "PUT" and ("If-Match" in headers or "If-None-Match" in headers)
        if not (conditional and self.serialise_conditional_puts):
            yield
            return
        with self._lock:
            key_lock = self._key_locks[path]
        with key_lock:
            yield


def _last_attempt(headers: Message) -> bool:
    match = _ATTEMPT.search(headers.get("amz-sdk-request", ""))
    return match is not None and int(match[1]) >= int(match[2])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and http.server answers Expect: 100-continue
    server: FaultProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def proxy(self) -> None:
        body = self._read_body()
        path = unquote(urlsplit(self.path).path)
        fault = self.server.decide(self.command, path, self.headers)
        if fault == "deny":
            return self._error(403, "AccessDenied", "Access Denied", path)
        if fault == "slowdown":
            return self._error(503, "SlowDown", "Please reduce your request rate.", path)
        with self.server.serialised(self.command, path, self.headers):
            status, reason, headers, data = self._forward(body)
        if fault == "lose" and self.server.lose_by == "close":
            self.close_connection = True  # the write landed; its answer never arrives
            return None
        if fault == "lose":
            return self._error(503, "ServiceUnavailable", "Please retry.", path)
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":  # no body, but the object's length
            length = next((v for n, v in headers if n.lower() == "content-length"), "0")
        else:
            length = str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return None

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = proxy  # noqa: N815 - http.server's names

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)  # Host kept as signed
            response = upstream.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            upstream.close()

    def _error(self, status: int, code: str, message: str, path: str) -> None:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{path}</Resource>"
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "faultproxy")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(xml)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(xml)
