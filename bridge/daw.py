"""What the daemon knows of the DAW's musical state: tempo, time signature, transport.

Two sources feed it: the DAW side reports changes (`daw.set`, sent by the Live Remote Script's
listeners and the REAPER scripts), and MIDI clock (24 pulses per quarter note, see
`bridge/transports/midi.py`) gives a tempo estimate. Jobs that need a tempo (`generate` in bars)
take the one from their request, else the most recently updated of the two, else the default
from config. Thread-safe: the MIDI thread and the event loop both write.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

DAW = "daw"
MIDI_CLOCK = "midi_clock"
DEFAULT = "default"


@dataclass
class _Reading:
    value: float
    at: float  # time.monotonic()


class DawState:
    def __init__(self, default_tempo: float = 120.0) -> None:
        self.default_tempo = default_tempo
        self._lock = threading.Lock()
        self._tempo: dict[str, _Reading] = {}
        self.numerator = 4
        self.denominator = 4
        self.playing: bool | None = None
        self.updated_at: float | None = None

    def set_tempo(self, bpm: float, source: str = DAW) -> None:
        with self._lock:
            self._tempo[source] = _Reading(float(bpm), time.monotonic())

    def forget_tempo(self, source: str) -> None:
        """Drop a source's reading, e.g. when MIDI clock stops arriving."""
        with self._lock:
            self._tempo.pop(source, None)

    def update(
        self,
        tempo: float | None = None,
        numerator: int | None = None,
        denominator: int | None = None,
        playing: bool | None = None,
    ) -> None:
        """What the DAW side reported; None leaves a field as it was."""
        with self._lock:
            now = time.monotonic()
            if tempo is not None:
                self._tempo[DAW] = _Reading(float(tempo), now)
            if numerator is not None:
                self.numerator = int(numerator)
            if denominator is not None:
                self.denominator = int(denominator)
            if playing is not None:
                self.playing = bool(playing)
            self.updated_at = now

    def tempo(self) -> tuple[float, str]:
        """(bpm, source): the freshest reading, else the configured default."""
        with self._lock:
            if not self._tempo:
                return self.default_tempo, DEFAULT
            source, reading = max(self._tempo.items(), key=lambda item: item[1].at)
            return reading.value, source

    def time_signature(self) -> tuple[int, int]:
        with self._lock:
            return self.numerator, self.denominator

    def snapshot(self) -> dict[str, Any]:
        bpm, source = self.tempo()
        now = time.monotonic()
        with self._lock:
            readings = {name: round(r.value, 3) for name, r in self._tempo.items()}
            ages = {name: round(now - r.at, 3) for name, r in self._tempo.items()}
            return {
                "tempo": round(bpm, 3),
                "tempo_source": source,
                "tempo_readings": readings,
                "tempo_ages_seconds": ages,
                "numerator": self.numerator,
                "denominator": self.denominator,
                "playing": self.playing,
            }


def bars_to_seconds(bars: float, bpm: float, numerator: int = 4, denominator: int = 4) -> float:
    """Length of `bars` bars at `bpm` quarter notes per minute in numerator/denominator time."""
    quarter_notes_per_bar = numerator * 4.0 / denominator
    return bars * quarter_notes_per_bar * 60.0 / bpm
