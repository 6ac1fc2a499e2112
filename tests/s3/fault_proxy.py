"""An HTTP/1.1 proxy in front of the test S3 server that breaks chosen connections, as a network does.

Each request is forwarded on the proxy's own connection to the server and its answer relayed back. A request
the proxy is told to break (by method and path, the first ``faults`` of them after ``skip`` others, each
object once: the same request sent again goes through) is not answered: with ``fault="reset"`` the
client's connection is reset before the request is forwarded (it never reaches the server); with
``fault="lost"`` it is forwarded, then the connection is reset instead of the reply (the write landed; the
client cannot know).
"""

from __future__ import annotations

import re
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Faults:
    """Which requests to break: ``method`` in ``methods``, path matching ``path`` (a regex), not ``spare``."""

    fault: str = "lost"
    methods: tuple[str, ...] = ("PUT",)
    path: str = ""
    spare: str | None = None
    skip: int = 0
    faults: int = 0
    broken: list[tuple[str, str]] = field(default_factory=list)


def _head(sock: socket.socket, buf: bytearray) -> tuple[str, list[tuple[str, str]]]:
    """A message's first line and headers (consumed from ``buf``, read from ``sock`` as needed)."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        buf += data
    first, *lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    fields = (line.partition(":") for line in lines)
    return first, [(name.strip(), value.strip()) for name, _, value in fields]


def _body(sock: socket.socket, buf: bytearray, headers: list[tuple[str, str]], bodiless: bool) -> bytes:
    """A message's body: ``Content-Length`` bytes, or chunks (re-framed as the body they carry)."""
    values = {name.lower(): value for name, value in headers}
    if bodiless:
        return b""
    if "chunked" in values.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            while (end := buf.find(b"\r\n")) < 0:
                buf += sock.recv(65536)
            size = int(bytes(buf[:end]).split(b";")[0], 16)
            del buf[: end + 2]
            while len(buf) < size + 2:
                buf += sock.recv(65536)
            out += buf[:size]
            del buf[: size + 2]
            if size == 0:
                return bytes(out)
    size = int(values.get("content-length", "0"))
    while len(buf) < size:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        buf += data
    body = bytes(buf[:size])
    del buf[:size]
    return body


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """The proxy, listening on loopback (:attr:`endpoint`) until :meth:`close`; :attr:`faults` says what
    to break (replace it to change that)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port)
        self.faults = Faults()
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _breaks(self, method: str, target: str) -> str | None:
        faults, path = self.faults, target.split("?")[0]
        with self._lock:
            if method not in faults.methods or not re.search(faults.path, path):
                return None
            if faults.spare is not None and re.search(faults.spare, path):
                return None
            if faults.skip > 0:
                faults.skip -= 1
                return None
            if len(faults.broken) >= faults.faults or (method, path) in faults.broken:
                return None
            faults.broken.append((method, path))
            return faults.fault

    def _serve(self, client: socket.socket) -> None:
        buf, upstream, up_buf = bytearray(), None, bytearray()
        try:
            while True:
                first, headers = _head(client, buf)
                method, target, _ = first.split(" ", 2)
                body = _body(client, buf, headers, bodiless=False)
                fault = self._breaks(method, target)
                if fault == "reset":
                    _reset(client)
                    return
                if upstream is None:
                    upstream, up_buf = socket.create_connection(self._upstream), bytearray()
                upstream.sendall(_message(first, _framed(headers, body), body))
                status, answer_headers = _head(upstream, up_buf)
                code = int(status.split(" ")[1])
                bodiless = method == "HEAD" or code in (204, 304)
                answer = _body(upstream, up_buf, answer_headers, bodiless)
                if fault == "lost":
                    _reset(client)
                    return
                if method != "HEAD":
                    answer_headers = _framed(answer_headers, answer)
                client.sendall(_message(status, answer_headers, answer))
        except (ConnectionError, OSError, ValueError):
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()


def _framed(headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
    """``headers`` of a message whose ``body`` is sent whole (a chunked one given its length instead)."""
    kept = [(k, v) for k, v in headers if k.lower() not in ("transfer-encoding", "content-length")]
    return [*kept, ("Content-Length", str(len(body)))]


def _message(first: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [first, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
