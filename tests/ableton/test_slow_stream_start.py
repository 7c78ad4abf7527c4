"""Live stems started from the pad while the daemon loads the model for minutes (its first
download): the script waits as long as the daemon answers, and says at once when it has gone.

The daemon loads the pass-through HTDemucs from a local repo whose `passthrough.yaml` is a named
pipe (tests/bridge/test_slow_replies.py): the load lasts until the test lets it go, on any machine.
Without its patience the start would fail after the script's request timeout (5 s).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ableton_remote import link as link_module
from ableton_remote import surface as surface_module
from bridge.client import Client
from bridge.testing import DaemonProcess
from tests.ableton.conftest import LoadedScript
from tests.ableton.live_sim import LiveSet
from tests.bridge.test_slow_replies import _starting, loading_daemon
from tests.conftest import JackServer

Load = Callable[[LiveSet, int], LoadedScript]


Starting = tuple[LoadedScript, DaemonProcess, Callable[[], None]]


@pytest.fixture
def starting(jack_server: JackServer, tiny_repo: Path, tmp_path: Path, load_script: Load) -> Iterator[Starting]:
    """A daemon whose model load is held, and Live's script that has pressed the start pad: the
    script, the daemon and what lets the load go on."""
    with loading_daemon(jack_server, tiny_repo, tmp_path) as (daemon, release):
        script = load_script(LiveSet(), daemon.osc_udp[1])
        script.tick_until(lambda: script.surface._registered, "registered with the daemon")
        script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_START, 100))  # channel 16, as Live forwards
        yield script, daemon, release


@pytest.mark.timeout(300)
def test_the_pad_waits_for_a_model_that_loads_for_longer_than_the_timeout(starting: Starting) -> None:
    script, daemon, release = starting
    link = script.surface._link
    # Pings answered while stream.start loads, past its timeout: still waiting.
    past = surface_module.REQUEST_TIMEOUT_SECONDS / link_module.PROBE_SECONDS + 2
    script.tick_until(lambda: link.probes_answered >= past, "the daemon answered pings during the load")
    assert not script.shown("did not start"), script.messages
    release()
    script.tick_until(lambda: script.shown("live stems running"), "the stream started", timeout=120)
    assert not script.shown("did not start"), script.messages
    script.surface.disconnect()
    assert daemon.stop() == 0, daemon.log()


@pytest.mark.timeout(300)
def test_a_daemon_that_dies_during_the_load_is_said_within_seconds(starting: Starting) -> None:
    script, daemon, _ = starting
    link = script.surface._link
    script.tick_until(lambda: link.probes_answered >= 1, "the daemon answered a ping during the load")
    daemon.stop(signal.SIGKILL)
    # Not after the 900 s the start may take: once the pings go unanswered.
    script.tick_until(lambda: script.shown("live stems did not start: unavailable"), "the loss said", timeout=30)


@pytest.mark.timeout(300)
def test_the_stop_pad_cancels_a_start_that_is_still_loading(starting: Starting) -> None:
    # The stop pad during a long load waited behind it past the script's patience ("did not stop"),
    # and the stems then started anyway.
    script, daemon, release = starting
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        _starting(client, "loading passthrough", script.tick)
    script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_STOP, 100))
    script.tick_until(lambda: script.shown("live stems start cancelled: passthrough on the default audio device "
                                           "(loading passthrough, "), "stream.stop answered during the load")
    release()
    script.tick_until(lambda: script.shown("live stems did not start: unavailable: stream.start: cancelled by "
                                           "stream.stop while loading passthrough"), "the start answered", timeout=120)
    assert not script.shown("live stems running"), script.messages
    assert not script.shown("did not stop"), script.messages
    script.surface.disconnect()
    assert daemon.stop() == 0, daemon.log()


@pytest.mark.timeout(300)
def test_a_start_cancelled_from_another_client_is_shown_at_once(starting: Starting) -> None:
    # REAPER's action, the Max device or `flowstate send stream.stop` cancels the start the pad
    # began: the status bar said so only once the load ended, as the start's error.
    script, daemon, release = starting
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        _starting(client, "loading passthrough", script.tick)
        assert client.call("stream.stop")["cancelled"]
    script.tick_until(lambda: script.shown("live stems start cancelled: passthrough on the default audio device "
                                           "(loading passthrough, "), "the cancel said while the load is held")
    assert not script.shown("did not start"), script.messages
    release()
    script.tick_until(lambda: script.shown("live stems did not start: unavailable: stream.start: cancelled by "
                                           "stream.stop while loading passthrough"), "the start answered", timeout=120)
    assert not script.shown("live stems running"), script.messages
    script.surface.disconnect()
    assert daemon.stop() == 0, daemon.log()
