"""Event fan-out: one `publish` reaches the requester, every registered OSC listener and ZeroMQ PUB.

Jobs and streams publish from worker threads; the hub hops onto the event loop before touching
any socket, because neither asyncio transports nor ZeroMQ sockets may be used from two threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import Busy, Forbidden
from bridge.protocol import Event, EventSpec, Origin

log = logging.getLogger(__name__)

Sink = Callable[[Event, "Origin | None"], None]


@dataclass
class _Listener:
    """A registered listener: who registered it (the only one allowed to remove it) and until when."""

    owner: tuple[Any, ...]
    owner_text: str
    expires: float  # time.monotonic()


class EventHub:
    """Owns the listener table and the sinks (OSC listeners, ZeroMQ PUB) events go through.

    Every local process shares 127.0.0.1, so a listener belongs to the socket that registered
    it: only that socket (same transport, host and source port) or the listener's own address
    may unregister it, and an entry that is not registered again within `ttl_seconds` expires,
    so a table filled by a stray or hostile process empties by itself.
    """

    def __init__(self, specs: dict[str, EventSpec], max_listeners: int, ttl_seconds: float = 300.0) -> None:
        self._specs = specs
        self._max_listeners = max_listeners
        self._ttl = ttl_seconds
        self._sinks: list[Sink] = []
        self._listeners: dict[tuple[str, int], _Listener] = {}  # ordered by first registration
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._topics: set[str] = set()  # ZeroMQ subscriptions (topic prefixes) someone holds now
        self._waiting: list[tuple[str, Callable[[], object]]] = []  # when_heard() callbacks not run yet

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the hub to the daemon's loop; publish() from other threads hops onto it."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    # -- listeners (Protocol v1 `register` / `unregister`) --------------------------------------

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    def register(self, host: str, port: int, owner: tuple[Any, ...] = (), owner_text: str = "") -> bool:
        """Add a listener, or refresh its expiry; returns False when it was already registered.

        A refresh from another socket extends the expiry but does not change the owner: otherwise
        any process could take a listener over and then unregister it.
        """
        self._expire()
        key = (host, port)
        expires = time.monotonic() + self._ttl
        entry = self._listeners.get(key)
        if entry is not None:
            entry.expires = expires
            return False
        if len(self._listeners) >= self._max_listeners:
            raise Busy(
                f"register: {len(self._listeners)} listeners already registered "
                f"(daemon.max_listeners = {self._max_listeners}); unregister one first, or wait: "
                f"a listener not registered again within daemon.listener_ttl_seconds ({self._ttl:g} s) expires"
            )
        self._listeners[key] = _Listener(owner, owner_text, expires)
        log.info("listener registered: %s:%d (by %s)", host, port, owner_text or "?")
        self._run_waiting(lambda name: True)  # a listener hears every event
        return True

    def unregister(self, host: str, port: int, owner: tuple[Any, ...] = ()) -> bool:
        """Remove a listener; only its owner or the listener's own address may (else Forbidden)."""
        self._expire()
        key = (host, port)
        entry = self._listeners.get(key)
        if entry is None:
            return False
        if owner not in (entry.owner, ("osc.udp", host, port)):
            raise Forbidden(
                f"unregister: listener {host}:{port} was registered by another socket ({entry.owner_text}); "
                f"only that socket or the listener itself may unregister it. It expires "
                f"daemon.listener_ttl_seconds ({self._ttl:g} s) after its last register"
            )
        del self._listeners[key]
        log.info("listener unregistered: %s:%d", host, port)
        return True

    def listeners(self) -> list[tuple[str, int]]:
        self._expire()
        return list(self._listeners)

    def listeners_on_host(self, host: str) -> list[tuple[str, int]]:
        self._expire()
        return [key for key in self._listeners if key[0] == host]

    def is_listener(self, key: tuple[Any, ...]) -> bool:
        return len(key) == 3 and key[0] == "udp" and (key[1], key[2]) in self._listeners

    def _expire(self) -> None:
        now = time.monotonic()
        stale = [key for key, entry in self._listeners.items() if entry.expires <= now]
        for key in stale:
            del self._listeners[key]
            log.info(
                "listener expired: %s:%d (not registered again within daemon.listener_ttl_seconds = %g s)",
                key[0], key[1], self._ttl,
            )

    # -- who can hear what --------------------------------------------------------------------

    def subscribed(self, topic: str) -> None:
        """A ZeroMQ subscriber now holds the topic prefix `topic` ("" is every event)."""
        self._topics.add(topic)
        self._run_waiting(lambda name: name.startswith(topic))

    def unsubscribed(self, topic: str) -> None:
        """The last ZeroMQ subscriber to `topic` left."""
        self._topics.discard(topic)

    def can_hear(self, name: str) -> bool:
        """Whether an event `name` published now reaches anyone beyond its requester."""
        return bool(self.listeners()) or any(name.startswith(topic) for topic in self._topics)

    def when_heard(self, name: str, callback: Callable[[], object]) -> None:
        """Run `callback` (which publishes `name`) once someone can hear it: now if anyone can,
        else at the next listener registration or ZeroMQ subscription that takes `name`.

        For what is said once at start-up (jobs given up while the daemon was down): a client
        that reconnects after a restart subscribes some milliseconds after the sockets are up,
        and a PUB socket drops whatever it sends before then.
        """
        if self.can_hear(name):
            callback()
        else:
            self._waiting.append((name, callback))

    def _run_waiting(self, hears: Callable[[str], bool]) -> None:
        ready = [entry for entry in self._waiting if hears(entry[0])]
        self._waiting = [entry for entry in self._waiting if not hears(entry[0])]
        for _, callback in ready:
            callback()

    # -- publishing ----------------------------------------------------------------------------

    def event(self, name: str, **data: Any) -> Event:
        spec = self._specs.get(name)
        if spec is None:
            raise KeyError(f"event {name!r} is not declared in bridge/commands.py EVENTS")
        missing = [f for f in spec.fields if f not in data]
        if missing:
            raise TypeError(f"event {name}: missing field(s) {missing}")
        return Event(name=name, data=data, spec=spec)

    def publish(self, name: str, origin: Origin | None = None, **data: Any) -> None:
        """Publish an event to the requester (if any), all listeners and PUB. Thread-safe."""
        event = self.event(name, **data)
        if self._loop is None:
            log.debug("event %s dropped: hub not attached to a loop", name)
            return
        if threading.get_ident() == self._loop_thread:
            self._deliver(event, origin)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, event, origin)

    def _deliver(self, event: Event, origin: Origin | None) -> None:
        if origin is not None and not self.is_listener(origin.key):
            origin.send_event(event)
        for sink in self._sinks:
            try:
                sink(event, origin)
            except OSError as err:  # a vanished peer must not stop the others
                log.warning("event %s: sink %s failed: %s", event.name, sink, err)
