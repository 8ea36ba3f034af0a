"""A real S3 endpoint on loopback (moto's threaded server) and a fault-injecting proxy in front of it.

The proxy forwards every request unchanged, except those a rule picks, which get an S3-style
error response instead (or, with RESET, a connection reset and no response at all), and the
request bodies a mutator changes on the way: the way to test retries, outages, interrupted
uploads and corruption in transit against real HTTP without touching the code under test.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESET = -1  # a rule's answer: reset the connection instead of responding
Rule = Callable[[str, str], int | None]  # (method, path) -> HTTP status to fail with, RESET, or None to forward
Mutator = Callable[[str, str, bytes], bytes]  # (method, path, body) -> the body forwarded upstream


class FaultyProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.mutators: list[Mutator] = []
        self.failed: list[tuple[str, str, int]] = []
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _handle(self):
                body = self._body()
                proxy.requests.append((self.command, self.path))
                for rule in proxy.rules:
                    status = rule(self.command, self.path)
                    if status == RESET:  # the request was read; the answer never comes
                        proxy.failed.append((self.command, self.path, status))
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.close_connection = True
                        self.connection.close()  # with linger 0: a TCP reset
                        return
                    if status:
                        proxy.failed.append((self.command, self.path, status))
                        code = "SlowDown" if status == 503 else "InternalError"
                        payload = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                        self.send_response(status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(payload)
                        return
                for mutate in proxy.mutators:
                    body = mutate(self.command, self.path, body)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")
                }
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header(
                    "Content-Length",
                    str(len(data) if self.command != "HEAD" else resp.getheader("Content-Length", "0")),
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
