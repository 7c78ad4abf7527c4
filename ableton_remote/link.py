"""The script's side of Protocol v1 over OSC/UDP, polled from Live's timer: no threads in Live.

Two non-blocking UDP sockets:

- the *request* socket is connected to the daemon. Replies (`/flow/reply/<path>`), errors
  (`/flow/error <address> <code> <message>`) and the events of our own jobs come back on it.
  Being connected, it also learns at once (ICMP) when nothing listens at the daemon's port.
- the *event* socket is registered with `/flow/register <port>`, so it receives every event,
  e.g. `stream.started` when another client starts the stream, or `daemon.stopping`. The daemon
  also copies every reply of this host's requests to it (other clients' too), so replies that
  arrive there are ignored: only the request socket's replies can be matched to our requests.

OSC replies carry no request id; the daemon answers one socket's requests to one address in
order, so replies are matched to the oldest pending request for that address.

A request sent with a patience (stream.start, which loads its model: seconds, minutes while the
weights download) is waited for as long as the daemon answers: while one waits, the link pings the
daemon every PROBE_SECONDS, and each answered ping gives it its timeout again, up to its patience.
A daemon that has gone answers no ping, and the request fails its timeout after the last answer.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence, Tuple

from .osc import OscArg, OscError, OscMessage, decode_packet, encode_message

# Evaluated at import, so spelled with `typing`'s generics: Live 11 and 12.0 run Python 3.7, where
# `tuple[...]` and `collections.abc.Callable[...]` raise TypeError (annotations are strings, fine).
OnReply = Callable[[Tuple[OscArg, ...]], None]
OnError = Callable[[str, str], None]  # (Protocol v1 code, message)
OnEvent = Callable[[str, Tuple[OscArg, ...]], None]  # (event name, args)
Log = Callable[[str], None]

UNAVAILABLE = "unavailable"
# At most this many packets per socket per timer tick, so one flood cannot stall Live's UI.
MAX_PACKETS_PER_TICK = 256
RECEIVE_BYTES = 65536
PROBE_SECONDS = 1.0  # while a patient request waits, ping the daemon this often

REPLY_PREFIX = "/flow/reply/"
EVENT_PREFIX = "/flow/event/"
ERROR_ADDRESS = "/flow/error"


def command_address(name: str) -> str:
    """`stems.separate` -> `/flow/stems/separate` (Protocol v1: one name, every wire)."""
    return "/flow/" + name.replace(".", "/")


def _event_name(address: str) -> str:
    return address[len(EVENT_PREFIX) :].replace("/", ".")


@dataclass
class _Pending:
    name: str
    on_reply: OnReply
    on_error: OnError
    deadline: float
    timeout: float = 0.0
    patience: float = 0.0
    patience_deadline: float | None = None  # a patient request: answered pings push `deadline` up to this


@dataclass
class DaemonLink:
    """Requests to the daemon and what comes back, handled when `poll()` runs (Live's timer)."""

    host: str
    port: int
    listen_host: str
    on_event: OnEvent
    log: Log
    online: bool = False
    _requests: socket.socket | None = field(default=None, init=False, repr=False)
    _events: socket.socket | None = field(default=None, init=False, repr=False)
    _pending: dict[str, deque[_Pending]] = field(default_factory=dict, init=False, repr=False)
    _daemon_addresses: set[tuple[str, int]] = field(default_factory=set, init=False, repr=False)
    _next_probe: float = field(default=0.0, init=False, repr=False)
    probes_answered: int = field(default=0, init=False)  # pings answered while a patient request waited

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._requests is not None

    @property
    def event_port(self) -> int | None:
        """The registered listener port, or None when closed."""
        return self._events.getsockname()[1] if self._events is not None else None

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return sum(len(queue) for queue in self._pending.values())

    def open(self) -> None:
        """Create both sockets. Raises OSError when the OS refuses (the caller tells the user)."""
        requests = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        events = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            requests.setblocking(False)
            requests.connect((self.host, self.port))
            events.setblocking(False)
            events.bind((self.listen_host, 0))
        except OSError:
            requests.close()
            events.close()
            raise
        self._requests, self._events = requests, events
        self._daemon_addresses = {requests.getpeername()}

    def close(self) -> None:
        """Close both sockets; pending requests are dropped without callbacks (Live is leaving)."""
        for sock in (self._requests, self._events):
            if sock is not None:
                sock.close()
        self._requests = self._events = None
        self._pending.clear()
        self.online = False

    # -- sending ---------------------------------------------------------------------------------

    def request(
        self, name: str, args: Sequence[OscArg], on_reply: OnReply, on_error: OnError, timeout_seconds: float,
        patience_seconds: float | None = None,
    ) -> None:
        """Send one command; exactly one of the callbacks runs later, from `poll()`.

        A failure to send is reported through `on_error` at once, so callers have one path. With
        `patience_seconds`, the request waits while the daemon answers pings, up to that long.
        """
        address = command_address(name)
        if self._requests is None:
            on_error(UNAVAILABLE, "the Flowstate script is not connected (its socket is closed)")
            return
        try:
            packet = encode_message(address, list(args))
        except OscError as err:
            on_error("bad_request", f"{name}: {err}")
            return
        try:
            self._requests.send(packet)
        except ConnectionError:
            self._went_offline()
            on_error(UNAVAILABLE, self.unreachable_message())
            return
        except OSError as err:
            on_error(UNAVAILABLE, f"cannot send to the daemon at {self.where}: {err}")
            return
        now = time.monotonic()
        patience = max(patience_seconds or 0.0, timeout_seconds)
        pending = _Pending(name, on_reply, on_error, now + timeout_seconds, timeout_seconds, patience,
                           None if patience_seconds is None else now + patience)
        self._pending.setdefault(address, deque()).append(pending)

    def unreachable_message(self) -> str:
        return f"no daemon at {self.where}: start it with `flowstate up`"

    # -- receiving -------------------------------------------------------------------------------

    def poll(self) -> None:
        """Handle everything that arrived, then expire requests that waited too long."""
        if self._requests is not None:
            self._drain(self._requests, from_requests=True)
        if self._events is not None:
            self._drain(self._events, from_requests=False)
        now = time.monotonic()
        self._probe(now)
        self._expire(now)

    def _drain(self, sock: socket.socket, from_requests: bool) -> None:
        for _ in range(MAX_PACKETS_PER_TICK):
            if sock.fileno() < 0:
                return  # a callback closed the link (Live is disconnecting the script)
            try:
                data, sender = sock.recvfrom(RECEIVE_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionError:
                # ICMP port unreachable on the connected socket: nothing listens at the daemon's port.
                self._went_offline()
                return
            if not from_requests and sender not in self._daemon_addresses:
                self.log(f"ignored a packet from {sender[0]}:{sender[1]}, which is not the daemon")
                continue
            try:
                messages = decode_packet(data)
            except OscError as err:
                self.log(f"ignored a malformed packet from the daemon: {err}")
                continue
            for message in messages:
                self._dispatch(message, from_requests)

    def _dispatch(self, message: OscMessage, from_requests: bool) -> None:
        address, args = message
        if address.startswith(EVENT_PREFIX):
            self.on_event(_event_name(address), args)
        elif not from_requests:
            return  # copies of this host's replies: not ours to match
        elif address.startswith(REPLY_PREFIX):
            self.online = True
            pending = self._pop("/flow/" + address[len(REPLY_PREFIX) :])
            if pending is not None:
                pending.on_reply(args)
        elif address == ERROR_ADDRESS:
            self.online = True
            failed, code, text = (list(args) + ["", "internal", ""])[:3]
            pending = self._pop(str(failed))
            if pending is not None:
                pending.on_error(str(code), str(text))
            else:
                self.log(f"daemon error for {(failed or 'a packet')!s}: {code!s}: {text!s}")

    def _pop(self, address: str) -> _Pending | None:
        queue = self._pending.get(address)
        if not queue:
            self.log(f"a reply for {address} arrived with no request waiting for it")
            return None
        return queue.popleft()

    def _went_offline(self) -> None:
        """Every waiting request fails now: the daemon cannot answer them."""
        self.online = False
        waiting = [pending for queue in self._pending.values() for pending in queue]
        self._pending.clear()
        for pending in waiting:
            pending.on_error(UNAVAILABLE, self.unreachable_message())

    def _patient(self) -> list[_Pending]:
        return [p for queue in self._pending.values() for p in queue if p.patience_deadline is not None]

    def _probe(self, now: float) -> None:
        """While a patient request waits, ping every PROBE_SECONDS (one ping in flight at a time)."""
        if now < self._next_probe or self._pending.get(command_address("ping")):
            return
        patient = self._patient()
        if not patient:
            return
        self._next_probe = now + PROBE_SECONDS
        timeout = max(patient[0].timeout, PROBE_SECONDS)
        self.request("ping", [], self._alive, lambda code, message: None, timeout)  # an unanswered one: see _expire

    def _alive(self, args: Tuple[OscArg, ...]) -> None:
        """A ping answered: the daemon is working on the patient requests; each gets its timeout again."""
        self.probes_answered += 1
        now = time.monotonic()
        for pending in self._patient():
            assert pending.patience_deadline is not None
            pending.deadline = max(pending.deadline, min(now + pending.timeout, pending.patience_deadline))

    def _expire(self, now: float) -> None:
        for queue in self._pending.values():
            while queue and queue[0].deadline <= now:
                pending = queue.popleft()
                if pending.patience_deadline is not None and now >= pending.patience_deadline:
                    text = (f"{pending.name}: the daemon at {self.where} answers, but has not finished it within "
                            f"{pending.patience:.0f} s; it goes on with it")
                else:
                    text = f"{pending.name}: no answer from the daemon at {self.where}; is `flowstate up` running?"
                pending.on_error(UNAVAILABLE, text)
