"""Event fan-out: one `publish` reaches the requester, every registered OSC listener and ZeroMQ PUB.

Jobs and streams publish from worker threads; the hub hops onto the event loop before touching
any socket, because neither asyncio transports nor ZeroMQ sockets may be used from two threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from bridge.errors import BadRequest
from bridge.protocol import Event, EventSpec, Origin

log = logging.getLogger(__name__)

Sink = Callable[[Event, "Origin | None"], None]


class EventHub:
    """Owns the listener table and the sinks (OSC listeners, ZeroMQ PUB) events go through."""

    def __init__(self, specs: dict[str, EventSpec], max_listeners: int) -> None:
        self._specs = specs
        self._max_listeners = max_listeners
        self._sinks: list[Sink] = []
        self._listeners: dict[tuple[str, int], None] = {}  # ordered set of (host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the hub to the daemon's loop; publish() from other threads hops onto it."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    # -- listeners (Protocol v1 `register` / `unregister`) --------------------------------------

    def register(self, host: str, port: int) -> bool:
        """Add a listener; returns False when it was already registered."""
        key = (host, port)
        if key in self._listeners:
            return False
        if len(self._listeners) >= self._max_listeners:
            raise BadRequest(
                f"register: {len(self._listeners)} listeners already registered "
                f"(daemon.max_listeners = {self._max_listeners}); unregister one first"
            )
        self._listeners[key] = None
        log.info("listener registered: %s:%d", host, port)
        return True

    def unregister(self, host: str, port: int) -> bool:
        removed = self._listeners.pop((host, port), "absent") is None
        if removed:
            log.info("listener unregistered: %s:%d", host, port)
        return removed

    def listeners(self) -> list[tuple[str, int]]:
        return list(self._listeners)

    def listeners_on_host(self, host: str) -> list[tuple[str, int]]:
        return [key for key in self._listeners if key[0] == host]

    def is_listener(self, key: tuple[Any, ...]) -> bool:
        return len(key) == 3 and key[0] == "udp" and (key[1], key[2]) in self._listeners

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
