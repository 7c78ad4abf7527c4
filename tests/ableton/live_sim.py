"""A simulated Live Object Model, faithful to the documented API the Remote Script uses.

Built from Live's own API, not from our script: a Live 12 API dump (the `Live` module's classes
and Boost.Python signatures, e.g. `Track.create_audio_clip( (Track)arg1, (object)arg2, (float)arg3)
-> Clip`, "Throws an error when called on a non-audio or a frozen track, when the specified time is
outside the [0., 1576800.] range ..."; `Clip.add_warp_marker( (Clip)self, (object)warp_marker)`;
no delay on `Track`), and Ableton's decompiled scripts (gluon/AbletonLive11_MIDIRemoteScripts,
`_Framework/ControlSurface.py`): `ControlSurface.application()` returns
`Live.Application.get_application()`, while the `c_instance` Live hands a script serves `song()`,
`show_message`, `log_message`, `request_rebuild_midi_map`, `handle()`; it has no `application()`.

Live itself cannot run here, so this stands in for it: Application (with its view's
`focused_document_view` and `get_major/minor/bugfix_version`), Song (tempo, time signature,
transport, `current_song_time`, tracks,
scenes, the view's `selected_track` / `selected_scene` / `detail_clip` / `highlighted_clip_slot`,
`create_audio_track`, `delete_track`), Track,
ClipSlot, Clip and Scene, with Live's listener methods (`add_<prop>_listener`,
`remove_<prop>_listener`, `<prop>_has_listener`), the `c_instance` a Remote Script receives, and
Live's `Live` module (`Live.Application.get_application()`, `Live.MidiMap.forward_midi_note/_cc`,
`Live.Track.Track`, `Live.ClipSlot.ClipSlot`).

Where Live is strict, so is this: adding a listener twice or removing one that is not there
raises; changing the set from inside a listener raises (Live: "Changes cannot be triggered by
notifications"); `create_audio_clip` reads the file (with libsndfile) and refuses a non-audio
track, an occupied slot or a position outside [0, 1576800] beats.

Versions come with their own Python, as in Live: 11.x and 12.0.x embed Python 3.7.3, 12.1 and later
3.11.6. A LiveSet refuses to start under another interpreter, so an old Live's object model runs only
in the Python 3.7 check (`tests/ableton/py37.py`). `Track.create_audio_clip` and
`ClipSlot.create_audio_clip` exist from Live 11.3.25 (in 11.x) and 12.0.5 (in 12.x).
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Tuple, Union

try:  # Python 3.11 (Live 12.1+): read the file for real
    import soundfile
except ImportError:  # the Python 3.7 check (Live 11, 12.0) has only the standard library
    soundfile = None

Version = Tuple[int, int, int]
# Live 11.x and 12.0.x run Python 3.7 (3.7.3); Live 12.1 moved to 3.11 (3.11.6).
PYTHON_3_11_FROM: Version = (12, 1, 0)
# Track.create_audio_clip and ClipSlot.create_audio_clip: from 11.3.25 in Live 11, 12.0.5 in Live 12.
AUDIO_CLIP_IMPORT_11: Version = (11, 3, 25)
AUDIO_CLIP_IMPORT_12: Version = (12, 0, 5)


def python_for(version: Version) -> Tuple[int, int]:
    """(major, minor) of the Python a Live version embeds."""
    return (3, 11) if tuple(version) >= PYTHON_3_11_FROM else (3, 7)


def has_audio_clip_import(version: Version) -> bool:
    version = tuple(version)
    return AUDIO_CLIP_IMPORT_11 <= version < (12, 0, 0) or version >= AUDIO_CLIP_IMPORT_12


def parse_version(version: Union[str, Version]) -> Version:
    """"11.3.25" or (11, 3, 25) -> (11, 3, 25)."""
    parts = [int(part) for part in version.split(".")] if isinstance(version, str) else list(version)
    if len(parts) != 3:
        raise ValueError(f"a Live version is major.minor.bugfix, got {version!r}")
    return parts[0], parts[1], parts[2]

ARRANGEMENT_MAX_BEATS = 1576800.0
SESSION = "Session"
ARRANGER = "Arranger"


class Observable:
    """Live-style listeners for the names in `_observed`, and setters that notify them."""

    _observed: tuple[str, ...] = ()

    def __init__(self, live: LiveSet) -> None:
        self._live = live
        self._listeners: dict[str, list[Callable[[], None]]] = {name: [] for name in self._observed}

    def __getattr__(self, attr: str) -> Any:
        for name in self._observed:
            if attr == f"add_{name}_listener":
                return lambda callback, name=name: self._add(name, callback)
            if attr == f"remove_{name}_listener":
                return lambda callback, name=name: self._remove(name, callback)
            if attr == f"{name}_has_listener":
                return lambda callback, name=name: callback in self._listeners[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def _add(self, name: str, callback: Callable[[], None]) -> None:
        if callback in self._listeners[name]:
            raise RuntimeError("Listener already connected")
        self._listeners[name].append(callback)

    def _remove(self, name: str, callback: Callable[[], None]) -> None:
        if callback not in self._listeners[name]:
            raise RuntimeError("Listener not connected")
        self._listeners[name].remove(callback)

    def listener_count(self, name: str) -> int:
        return len(self._listeners[name])

    def _notify(self, name: str) -> None:
        self._live.notifying += 1
        try:
            for callback in list(self._listeners[name]):
                callback()
        finally:
            self._live.notifying -= 1


def _check_not_notifying(live: LiveSet) -> None:
    if live.notifying:
        raise RuntimeError("Changes cannot be triggered by notifications. You will need to defer your response.")


def _check_audio_file(path: str) -> None:
    """Live reads the file it is given: an absolute path to audio it can decode."""
    if not os.path.isabs(path):
        raise RuntimeError(f"Invalid file path (must be absolute): {path}")
    if soundfile is None:
        _check_audio_header(path)
        return
    try:
        soundfile.info(path)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise RuntimeError(f"Failed to load audio file {path}: {err}") from None


def _check_audio_header(path: str) -> None:
    """Without libsndfile (the Python 3.7 check): a WAV or AIFF file, by its header."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError as err:
        raise RuntimeError(f"Failed to load audio file {path}: {err}") from None
    if not (head[:4] == b"RIFF" and head[8:12] == b"WAVE") and not (head[:4] == b"FORM" and head[8:11] == b"AIF"):
        raise RuntimeError(f"Failed to load audio file {path}: not a WAV or AIFF file")


def _duration_seconds(path: str) -> float:
    """The audio file's length, as Live reads it when it makes a clip."""
    if soundfile is not None:
        return float(soundfile.info(path).duration)
    with open(path, "rb") as handle:  # the Python 3.7 check: a RIFF/WAVE file's fmt and data chunks
        data = handle.read()
    offset, rate, frame_bytes, frames = 12, 0, 0, 0
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        if chunk == b"fmt ":
            rate = int.from_bytes(data[offset + 12:offset + 16], "little")
            frame_bytes = int.from_bytes(data[offset + 20:offset + 22], "little")
        elif chunk == b"data" and frame_bytes:
            frames = size // frame_bytes
        offset += 8 + size + (size & 1)
    return frames / rate if rate else 0.0


@dataclass(frozen=True)
class WarpMarker:
    """Live.Clip.WarpMarker: beat_time (beats) and sample_time (seconds into the file), read-only."""

    beat_time: float
    sample_time: float


class Clip:
    """Live.Clip.Clip. Audio clips have `warping`, `warp_mode`, `warp_markers` (read-only; changed with
    `add_warp_marker(WarpMarker)`, `remove_warp_marker(beat_time)`), `looping` ("Only Warped Audio
    Clips or MIDI Clip can be looped"), `loop_start/loop_end` and `start_marker/end_marker` (beats
    when warped, seconds when not). The dump documents these; the refusals below for a start after its
    end, a second marker on one beat, or markers out of the sample's order are this simulation's
    guess at Live's (it gives no messages for them)."""

    def __init__(self, parent: Any, name: str, file_path: str = "", *, is_audio: bool = True,
                 arrangement: bool = False, start_time: float = 0.0, length: float = 4.0,
                 seconds: float = 2.0) -> None:
        self.canonical_parent = parent
        self.name = name
        self.file_path = file_path if is_audio else ""
        self.is_audio_clip = is_audio
        self.is_midi_clip = not is_audio
        self.is_arrangement_clip = arrangement
        self.start_time = start_time if arrangement else 0.0
        self.length = length
        self.end_time = self.start_time + length
        # A new audio clip: warped, a marker at its start and one at its end, markers around it all.
        self.warping = is_audio
        self.warp_mode = 0  # Live.Clip.WarpMode.beats
        self._warp_markers = [WarpMarker(0.0, 0.0), WarpMarker(length, seconds)] if is_audio else []
        self._looping = False
        self._loop_start = self._start_marker = 0.0
        self._loop_end = self._end_marker = length

    @property
    def warp_markers(self) -> Tuple[WarpMarker, ...]:
        return tuple(self._warp_markers)

    def add_warp_marker(self, warp_marker: WarpMarker) -> None:
        if not self.is_audio_clip:
            raise RuntimeError("Available for AudioClips only")
        if not isinstance(warp_marker, WarpMarker):  # Boost.Python: a dict is not a TWarpMarker
            raise TypeError(f"No registered converter was able to produce a C++ rvalue of type TWarpMarker "
                            f"from this Python object of type {type(warp_marker).__name__}")
        if any(m.beat_time == warp_marker.beat_time for m in self._warp_markers):
            raise RuntimeError(f"Cannot add a warp marker at beat {warp_marker.beat_time}: one is there")
        self._warp_markers = sorted([*self._warp_markers, warp_marker], key=lambda m: m.beat_time)
        if [m.sample_time for m in self._warp_markers] != sorted(m.sample_time for m in self._warp_markers):
            self._warp_markers.remove(warp_marker)
            raise RuntimeError("Warp markers must keep their order in the sample")

    def remove_warp_marker(self, beat_time: float) -> None:
        kept = [m for m in self._warp_markers if m.beat_time != beat_time]
        if len(kept) == len(self._warp_markers):
            raise RuntimeError(f"No warp marker at beat {beat_time}")
        self._warp_markers = kept

    @property
    def looping(self) -> bool:
        return self._looping

    @looping.setter
    def looping(self, value: bool) -> None:
        if value and self.is_audio_clip and not self.warping:
            raise RuntimeError("Only Warped Audio Clips or MIDI Clip can be looped")
        self._looping = bool(value)

    def _range(start: str, end: str) -> Tuple[property, property]:
        def set_start(self: Clip, value: float) -> None:
            if float(value) >= getattr(self, end):
                raise RuntimeError(f"{start} {value} must be before {end} {getattr(self, end)}")
            setattr(self, f"_{start}", float(value))

        def set_end(self: Clip, value: float) -> None:
            if float(value) <= getattr(self, start):
                raise RuntimeError(f"{end} {value} must be after {start} {getattr(self, start)}")
            setattr(self, f"_{end}", float(value))

        return (property(lambda self: getattr(self, f"_{start}"), set_start),
                property(lambda self: getattr(self, f"_{end}"), set_end))

    loop_start, loop_end = _range("loop_start", "loop_end")
    start_marker, end_marker = _range("start_marker", "end_marker")
    del _range


class ClipSlot:
    def __init__(self, track: Track) -> None:
        self.canonical_parent = track
        self.clip: Clip | None = None

    @property
    def has_clip(self) -> bool:
        return self.clip is not None


class ClipSlot12(ClipSlot):
    def create_audio_clip(self, path: str) -> Clip:
        """Live 11.3.25/12.0.5: import an audio file into this (empty) slot of an audio track."""
        _check_not_notifying(self.canonical_parent._live)
        if not self.canonical_parent.has_audio_input:
            raise RuntimeError("Clip slot does not belong to an audio track")
        if self.has_clip:
            raise RuntimeError("Clip slot is not empty")
        _check_audio_file(path)
        self.clip = Clip(self, os.path.splitext(os.path.basename(path))[0], path, seconds=_duration_seconds(path))
        return self.clip


class Track(Observable):
    _observed = ("name",)

    def __init__(self, live: LiveSet, name: str, audio: bool = True) -> None:
        super().__init__(live)
        self._name = name
        self.has_audio_input = audio
        self.has_midi_input = not audio
        self.clip_slots = [live.slot_class(self) for _ in live.song.scenes]
        self.arrangement_clips: list[Clip] = []

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        _check_not_notifying(self._live)
        self._name = str(value)
        self._notify("name")

    # Helpers for tests (what the user would do with the mouse), not Live API.
    def add_arrangement_clip(self, file_path: str, start_time: float, name: str = "", audio: bool = True) -> Clip:
        seconds = _duration_seconds(file_path) if audio and os.path.isfile(file_path) else 2.0
        clip = Clip(self, name or os.path.splitext(os.path.basename(file_path))[0], file_path,
                    is_audio=audio, arrangement=True, start_time=start_time, seconds=seconds)
        self.arrangement_clips.append(clip)
        return clip

    def add_session_clip(self, scene_index: int, file_path: str, name: str = "", audio: bool = True) -> Clip:
        slot = self.clip_slots[scene_index]
        slot.clip = Clip(slot, name or os.path.splitext(os.path.basename(file_path))[0], file_path, is_audio=audio)
        return slot.clip


class Track12(Track):
    def create_audio_clip(self, file_path: str, position: float) -> Clip:
        """Live 12: an Arrangement clip referencing the file, starting at `position` beats."""
        _check_not_notifying(self._live)
        if not self.has_audio_input:
            raise RuntimeError("Track is not an audio track")
        if not 0.0 <= float(position) <= ARRANGEMENT_MAX_BEATS:
            raise RuntimeError(f"Position {position} out of range [0, {ARRANGEMENT_MAX_BEATS:g}]")
        _check_audio_file(file_path)
        return self.add_arrangement_clip(file_path, float(position))


@dataclass(eq=False)  # Live objects compare by identity: two scenes may share a name
class Scene:
    name: str = ""


@dataclass
class SongView:
    selected_track: Track | None = None
    selected_scene: Scene | None = None
    detail_clip: Clip | None = None
    highlighted_clip_slot: ClipSlot | None = None


class Song(Observable):
    _observed = ("tempo", "signature_numerator", "signature_denominator", "is_playing", "tracks",
                 "current_song_time")

    def __init__(self, live: LiveSet, num_scenes: int) -> None:
        super().__init__(live)
        self.scenes = [Scene(str(index + 1)) for index in range(num_scenes)]
        self._tracks: list[Track] = []
        self.view = SongView(selected_scene=self.scenes[0] if self.scenes else None)  # Live always has one
        self._tempo = 120.0
        self._signature_numerator = 4
        self._signature_denominator = 4
        self._is_playing = False
        self._current_song_time = 0.0  # the playhead (or, stopped, the insert marker), in beats

    @property
    def tracks(self) -> tuple[Track, ...]:
        return tuple(self._tracks)

    def create_audio_track(self, index: int = -1) -> None:
        """Insert an audio track at `index` (0..len(tracks); -1: at the end). Returns nothing."""
        _check_not_notifying(self._live)
        if index != -1 and not 0 <= index <= len(self._tracks):
            raise RuntimeError(f"Index {index} out of range [0, {len(self._tracks)}] (or -1)")
        track = self._live.track_class(self._live, f"{len(self._tracks) + 1}-Audio")
        self._tracks.insert(len(self._tracks) if index == -1 else index, track)
        self.view.selected_track = track  # Live selects the new track
        self._notify("tracks")

    def delete_track(self, index: int) -> None:
        """Delete the track at `index` (0..len(tracks)-1)."""
        _check_not_notifying(self._live)
        if not 0 <= index < len(self._tracks):
            raise RuntimeError(f"Index {index} out of range [0, {len(self._tracks) - 1}]")
        track = self._tracks.pop(index)
        if self.view.selected_track is track:
            self.view.selected_track = self._tracks[min(index, len(self._tracks) - 1)] if self._tracks else None
        self._notify("tracks")

    def _set(self, name: str, value: Any) -> None:
        _check_not_notifying(self._live)
        if getattr(self, f"_{name}") != value:
            setattr(self, f"_{name}", value)
            self._notify(name)

    tempo = property(lambda self: self._tempo, lambda self, v: self._set("tempo", float(v)))
    signature_numerator = property(lambda self: self._signature_numerator,
                                   lambda self, v: self._set("signature_numerator", int(v)))
    signature_denominator = property(lambda self: self._signature_denominator,
                                     lambda self, v: self._set("signature_denominator", int(v)))
    is_playing = property(lambda self: self._is_playing, lambda self, v: self._set("is_playing", bool(v)))

    @property
    def current_song_time(self) -> float:
        return self._current_song_time

    @current_song_time.setter
    def current_song_time(self, value: float) -> None:
        if float(value) < 0:
            raise RuntimeError(f"Song time {value} must be >= 0")
        self._set("current_song_time", float(value))

    def start_playing(self) -> None:
        self.is_playing = True

    def stop_playing(self) -> None:
        self.is_playing = False


@dataclass
class ApplicationView:
    focused_document_view: str = ARRANGER


@dataclass
class Application:
    """Live.Application.Application: what `Live.Application.get_application()` returns."""

    view: ApplicationView = field(default_factory=ApplicationView)
    version: Version = (12, 1, 5)

    def get_major_version(self) -> int:
        return self.version[0]

    def get_minor_version(self) -> int:
        return self.version[1]

    def get_bugfix_version(self) -> int:
        return self.version[2]


class CInstance:
    """What Live hands a Remote Script: its song, the status bar, the log and its MIDI handle.

    No `application()`: Live's c_instance has none (scripts call Live.Application.get_application()).
    """

    def __init__(self, live: LiveSet) -> None:
        self._live = live
        self.messages: list[str] = []  # the status bar, oldest first
        self.log: list[str] = []  # Live's Log.txt
        self.rebuild_requests = 0

    def song(self) -> Song:
        return self._live.song

    def show_message(self, message: str) -> None:
        self.messages.append(str(message))

    def log_message(self, message: str) -> None:
        self.log.append(str(message))

    def handle(self) -> object:
        return self._live.script_handle

    def request_rebuild_midi_map(self) -> None:
        self.rebuild_requests += 1

    def send_midi(self, midi_bytes: tuple[int, ...]) -> None:
        pass  # Flowstate sends no MIDI feedback


# Live runs one Application per process: the LiveSet started last is the one
# `Live.Application.get_application()` returns.
_RUNNING: list = []


def running() -> LiveSet:
    if not _RUNNING:
        raise RuntimeError("no Live is running (make a LiveSet first)")
    return _RUNNING[-1]


class LiveSet:
    """One running Live of `version` ("12.1.5"): the audio-clip calls exist from 11.3.25 and 12.0.5.

    Refuses to start under a Python that this Live does not embed (3.7 before 12.1, 3.11 after).
    """

    def __init__(self, version: Union[str, Version] = (12, 1, 5), num_scenes: int = 4) -> None:
        self.version = parse_version(version)
        wanted = python_for(self.version)
        if sys.version_info[:2] != wanted:
            raise RuntimeError(
                "Live {} embeds Python {}.{}; this is Python {}.{}: run it in the Python 3.7 check "
                "(tests/ableton/py37.py)".format(".".join(map(str, self.version)), *wanted, *sys.version_info[:2])
            )
        self.notifying = 0
        imports = has_audio_clip_import(self.version)
        self.track_class: type[Track] = Track12 if imports else Track
        self.slot_class: type[ClipSlot] = ClipSlot12 if imports else ClipSlot
        self.song = Song(self, num_scenes)
        self.application = Application(version=self.version)
        _RUNNING[:] = [self]
        self.script_handle = object()
        self.c_instance = CInstance(self)

    def add_audio_track(self, name: str, audio: bool = True) -> Track:
        """A track the user made before the script ran."""
        track = self.track_class(self, name, audio)
        self.song._tracks.append(track)
        return track

    def select_arrangement_clip(self, clip: Clip) -> None:
        self.application.view.focused_document_view = ARRANGER
        self.song.view.detail_clip = clip
        self.song.view.selected_track = clip.canonical_parent

    def select_session_slot(self, slot: ClipSlot) -> None:
        self.application.view.focused_document_view = SESSION
        self.song.view.highlighted_clip_slot = slot
        self.song.view.detail_clip = slot.clip
        self.song.view.selected_track = slot.canonical_parent

    def select_scene(self, index: int) -> None:
        """The user clicks a scene in Session view (Live also highlights that row)."""
        self.application.view.focused_document_view = SESSION
        self.song.view.selected_scene = self.song.scenes[index]

    def show_arrangement(self, song_time: float) -> None:
        """The user looks at the Arrangement with the playhead (insert marker) at `song_time` beats."""
        self.application.view.focused_document_view = ARRANGER
        self.song.current_song_time = song_time


@dataclass
class MidiMapHandle:
    """What Live passes to build_midi_map; records what the script asked to be forwarded."""

    notes: list[tuple[object, int, int]] = field(default_factory=list)  # (script handle, channel, note)
    ccs: list[tuple[object, int, int]] = field(default_factory=list)  # (script handle, channel, cc)


# Live.MidiMap.MapMode's values (Live 12 API dump: absolute, absolute_14_bit, relative_signed_bit,
# relative_binary_offset, relative_signed_bit2, relative_two_compliment, relative_smooth_signed_bit,
# relative_smooth_binary_offset, relative_smooth_signed_bit2, relative_smooth_two_compliment).
MAP_MODES = range(10)


def suggest_map_mode(surface: Any, cc_no: int, channel: int) -> int:
    """Live in MIDI Map mode (Cmd/Ctrl-M), mapping a CC that came in on the surface's input port:
    it asks the surface `suggest_map_mode(cc_no, channel)`, which every script Live ships defines
    (_Framework/ControlSurface.py answers -1, no suggestion, for a CC it has no control for; the
    hand-written Tranzport/Tranzport.py a MapMode), and takes -1 or a MapMode."""
    answer = surface.suggest_map_mode(cc_no, channel)  # no such method: AttributeError in Log.txt
    if isinstance(answer, bool) or not isinstance(answer, int) or (answer != -1 and answer not in MAP_MODES):
        raise TypeError(f"suggest_map_mode: expected -1 or a Live.MidiMap.MapMode, got {answer!r}")
    return answer


class _RunningClasses(types.ModuleType):
    """`Live.Track` / `Live.ClipSlot`: their class as the running Live has it (with or without
    `create_audio_clip`, by version)."""

    def __init__(self, name: str, attribute: str) -> None:
        super().__init__(f"Live.{name}")
        self._attribute = attribute

    def __getattr__(self, attr: str) -> Any:
        if attr == self.__name__.split(".")[-1]:
            return getattr(running(), self._attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


def live_module() -> types.ModuleType:
    """Live's `Live` module as far as the script uses it: `Live.Application.get_application()` (a
    module function), `Live.MidiMap.forward_midi_*`, and the classes `Live.Track.Track` and
    `Live.ClipSlot.ClipSlot` of the running Live."""

    def forward(kind: str) -> Callable[[object, MidiMapHandle, int, int], bool]:
        def forward_midi(script_handle: object, handle: MidiMapHandle, channel: int, number: int) -> bool:
            if not isinstance(handle, MidiMapHandle):
                raise TypeError(f"forward_midi: expected the midi_map_handle Live passed, got {handle!r}")
            if not (0 <= channel <= 15 and 0 <= number <= 127):
                raise RuntimeError(f"forward_midi: channel {channel} or number {number} out of range")
            getattr(handle, kind).append((script_handle, channel, number))
            return True

        return forward_midi

    module = types.ModuleType("Live")
    module.MidiMap = types.SimpleNamespace(  # type: ignore[attr-defined]
        forward_midi_note=forward("notes"), forward_midi_cc=forward("ccs")
    )
    module.Application = types.SimpleNamespace(  # type: ignore[attr-defined]
        get_application=lambda: running().application
    )
    module.Track = _RunningClasses("Track", "track_class")  # type: ignore[attr-defined]
    module.ClipSlot = _RunningClasses("ClipSlot", "slot_class")  # type: ignore[attr-defined]
    return module
