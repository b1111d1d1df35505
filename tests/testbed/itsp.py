"""A fake ITSP on a test host of its own: an HTTP(S) API that records every
request and answers as the test scripts it, and a client that sends
webhooks to the PBX from that host's namespace.

Both run in the test process: their sockets are made in the host's network
namespace (Host.socket), so no process is started and nothing is left
behind when the test ends."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from .netns import Host
from .wait import poll as poll  # re-exported for tests that import it from here


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"status":"success"}'
    content_type: str = "application/json"


@dataclass
class Script:
    """What the API answers: the queued answers first, then `default`."""

    queue: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=Answer)

    def next(self) -> Answer:
        return self.queue.pop(0) if self.queue else self.default


class FakeItsp:
    """An ITSP's SMS API on HOST:PORT (HTTPS with a self-signed certificate if tls)."""

    def __init__(self, host: Host, workdir: Path, port: int = 8080, tls: bool = False) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.requests: list[Recorded] = []
        self.script = Script()
        self.cond = threading.Condition()
        self.cafile: Path | None = None
        sock = host.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.v4, port))
        sock.listen(16)
        if tls:
            self.cafile, key = self._certificate(workdir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cafile, key)
            sock = context.wrap_socket(sock, server_side=True)
        self.server = http.server.ThreadingHTTPServer((host.v4, port), self._handler(),
                                                      bind_and_activate=False)
        self.server.socket = sock
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host.v4}:{self.port}"

    def _certificate(self, workdir: Path) -> tuple[Path, Path]:
        cert, key = workdir / "itsp-cert.pem", workdir / "itsp-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=itsp.test", "-addext", f"subjectAltName=IP:{self.host.v4}",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        return cert, key

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        itsp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads .requests

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = itsp.script.next()
                with itsp.cond:
                    itsp.requests.append(Recorded(self.command, self.path, dict(self.headers),
                                                  body, time.monotonic()))
                    itsp.cond.notify_all()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_POST = do_GET = _serve

        return Handler

    def answer(self, *answers: Answer, default: Answer | None = None) -> None:
        """Answer the next requests with ANSWERS, then with DEFAULT (if given)."""
        with self.cond:
            self.script.queue.extend(answers)
            if default is not None:
                self.script.default = default

    def wait_requests(self, count: int, timeout: float = 15) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake ITSP: {len(self.requests)} of {count} requests")
                self.cond.wait(left)
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


class WebhookClient:
    """HTTP requests to the PBX's webhook, made from HOST's namespace."""

    def __init__(self, host: Host, target: str, port: int) -> None:
        self.host, self.target, self.port = host, target, port

    def request(self, method: str, path: str = "/", body: bytes = b"",
                headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:
        host, family = self.host, socket.AF_INET6 if ":" in self.target else socket.AF_INET
        target, port = self.target, self.port

        class Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = host.socket(family, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect((target, port))

        conn = Connection(target, port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, resp.read(), dict(resp.getheaders()))
        finally:
            conn.close()

    def post_form(self, fields: dict[str, str], path: str = "/", **kw) -> Reply:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kw.pop("headers", {})}
        return self.request("POST", path, urlencode(fields).encode(), headers, **kw)

    def post_json(self, doc: object, path: str = "/", **kw) -> Reply:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return self.request("POST", path, json.dumps(doc).encode(), headers, **kw)

    def get(self, fields: dict[str, str], path: str = "/", **kw) -> Reply:
        return self.request("GET", f"{path}?{urlencode(fields)}", **kw)
