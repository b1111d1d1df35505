"""A real SMTP server (aiosmtpd) on this host's loopback that keeps every mail
it accepts, for tests that follow a voicemail to the mailbox."""

from __future__ import annotations

import threading
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from .netns import Host, in_netns


class _Keep:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], Message]] = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        with self.cond:
            self.mails.append((list(envelope.rcpt_tos), message_from_bytes(data)))
            self.cond.notify_all()
        return "250 kept"


class _Controller(Controller):
    def _trigger_server(self) -> None:
        # port 0: the kernel picks a free port; learn it before the first connection
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """start() it; `address` is HOST:PORT for minivm-send's -H. On this host's
    loopback, or on test host HOST (its own namespace and address)."""

    def __init__(self, host: Host | None = None) -> None:
        self._keep = _Keep()
        self.host = host
        self.bind = host.v4 if host else "127.0.0.1"
        self._controller = _Controller(self._keep, hostname=self.bind, port=0,
                                       ready_timeout=10)

    def start(self) -> SmtpServer:
        if self.host is None:
            self._controller.start()
        else:  # the server's thread, started from inside the namespace, stays in it
            in_netns(self.host.ns, self._controller.start)
        return self

    @property
    def address(self) -> str:
        return f"{self.bind}:{self._controller.port}"

    def wait_mail(self, timeout: float = 10) -> tuple[list[str], Message]:
        """The first mail accepted (so far or to come): its recipients and the message."""
        with self._keep.cond:
            if not self._keep.cond.wait_for(lambda: self._keep.mails, timeout):
                raise TimeoutError(f"no mail within {timeout}s")
            return self._keep.mails[0]

    def stop(self) -> None:
        self._controller.stop()
