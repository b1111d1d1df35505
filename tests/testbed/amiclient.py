"""A small blocking AMI client for tests: actions, awaited events with a
deadline, and the raw byte stream kept for transcript fixtures. (The product's
AMI client is pbxhost.ami on panoramisk; this one only observes.)"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable

EOL = b"\r\n"


class Message(dict[str, str]):
    """Headers of one AMI message; repeated headers (Output:) also in .multi."""

    def __init__(self) -> None:
        super().__init__()
        self.multi: dict[str, list[str]] = {}

    @classmethod
    def parse(cls, block: bytes) -> Message:
        msg = cls()
        for line in block.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                key, value = key.strip(), value.strip()
                msg.setdefault(key, value)
                msg.multi.setdefault(key, []).append(value)
        return msg


class AmiClient:
    def __init__(self, sock: socket.socket, username: str, secret: str) -> None:
        self.sock = sock
        self.transcript = bytearray()  # everything received, for fixtures
        self.events: list[Message] = []
        self._responses: dict[str, Message] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        banner = b""
        while not banner.endswith(EOL):
            chunk = sock.recv(1)
            if not chunk:
                raise ConnectionError("AMI closed before its banner")
            banner += chunk
        self.transcript += banner
        self.banner = banner.decode().strip()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        reply = self.action("Login", Username=username, Secret=secret)
        if reply.get("Response") != "Success":
            raise ConnectionError(f"AMI login refused: {reply.get('Message')}")

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            self.transcript += chunk
            buf += chunk
            *blocks, buf = buf.split(EOL + EOL)
            with self._cond:
                for block in blocks:
                    msg = Message.parse(block)
                    if "Event" in msg:
                        self.events.append(msg)
                    elif "ActionID" in msg:
                        self._responses[msg["ActionID"]] = msg
                self._cond.notify_all()

    def action(self, name: str, timeout: float = 10, **fields: str | list[str]) -> Message:
        """A list value is sent as one header line per item (Originate's Variable:)."""
        action_id = f"tb-{next(self._ids)}"
        lines = [f"Action: {name}", f"ActionID: {action_id}"]
        lines += [f"{k}: {item}" for k, v in fields.items()
                  for item in (v if isinstance(v, list) else [v])]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self._wait(lambda: self._responses.pop(action_id, None), timeout, f"reply to {name}")

    def command(self, cli: str) -> str:
        """Run a CLI command; its output as text."""
        reply = self.action("Command", Command=cli)
        return "\n".join(reply.multi.get("Output", []))

    def wait_event(self, predicate: Callable[[Message], bool], timeout: float = 10,
                   what: str = "event") -> Message:
        """The first event so far or to come that satisfies predicate."""
        def find() -> Message | None:
            return next((e for e in self.events if predicate(e)), None)
        return self._wait(find, timeout, what)

    def _wait(self, find: Callable[[], Message | None], timeout: float, what: str) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (found := find()) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    state = "connection closed" if self._closed else f"{timeout}s passed"
                    raise TimeoutError(f"AMI: no {what} ({state})")
                self._cond.wait(left)
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
