"""Putting audio files into the set: the stems of the selected clip where it was, and generated
loops where the user is looking (the next bar in the Arrangement, the selected scene in Session).

Only documented Live Object Model calls are used: `Song.view.detail_clip`, `highlighted_clip_slot`,
`selected_track` and `selected_scene`, `Song.scenes`, `current_song_time`, `signature_numerator`
and `signature_denominator`, `Application.view.focused_document_view`, `Clip.file_path`,
`is_audio_clip`, `is_arrangement_clip`, `start_time`, `canonical_parent`, `Song.create_audio_track`,
`Song.delete_track`, and, new in Live 11.3.25 and 12.0.5, `Track.create_audio_clip(file_path,
position)` (Arrangement) and `ClipSlot.create_audio_clip(file_path)` (Session). The last two are
checked before use, because older Lives lack them.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

SESSION_VIEW = "Session"
# The Lives that have both Track.create_audio_clip and ClipSlot.create_audio_clip.
LIVE_WITH_AUDIO_CLIP_IMPORT = "Live 11.3.25+ and 12.0.5+"


# The source clip's timing, copied onto each stem clip so that it plays in step with the source:
# the stems have the source's length and sample rate, so its warp markers (beat time -> sample time
# in seconds) and its markers (beats when warped, seconds when not) mean the same on them.
TIMING_RANGES = (("loop_start", "loop_end"), ("start_marker", "end_marker"))


@dataclass(frozen=True)
class ClipTiming:
    """Warping and markers of the source clip, read when the user asked (None: this Live lacks it)."""

    warping: bool | None = None
    warp_mode: Any = None
    warp_markers: tuple[Any, ...] = ()  # Live's WarpMarker objects (beat_time, sample_time)
    looping: bool | None = None
    loop_start: float | None = None
    loop_end: float | None = None
    start_marker: float | None = None
    end_marker: float | None = None


def clip_timing(clip: Any) -> ClipTiming:
    """The timing of a Live audio clip (`Clip.warping`, `warp_mode`, `warp_markers`, `looping`,
    `loop_start/end`, `start/end_marker`), leaving out what this Live does not have."""

    def number(name: str) -> float | None:
        value = getattr(clip, name, None)
        return float(value) if isinstance(value, (int, float)) else None

    warping = getattr(clip, "warping", None)
    looping = getattr(clip, "looping", None)
    return ClipTiming(
        warping=None if warping is None else bool(warping),
        warp_mode=getattr(clip, "warp_mode", None),
        warp_markers=tuple(getattr(clip, "warp_markers", None) or ()),
        looping=None if looping is None else bool(looping),
        loop_start=number("loop_start"), loop_end=number("loop_end"),
        start_marker=number("start_marker"), end_marker=number("end_marker"),
    )


def align_clip(clip: Any, timing: ClipTiming) -> list[str]:
    """Give a new stem clip the source's warping, warp markers and markers; what Live refused.

    Each step is tried on its own, so one refusal (e.g. a warp marker Live cannot place) leaves
    the others done; the caller tells the user which to set by hand.
    """
    refused: list[str] = []

    def attempt(what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - Live raises RuntimeError, ArgumentError...: report each
            refused.append(f"{what}: {type(err).__name__}: {err}")

    if timing.warping is not None:
        attempt("warping", lambda: setattr(clip, "warping", timing.warping))
    if timing.warping:
        if timing.warp_mode is not None:
            attempt("warp mode", lambda: setattr(clip, "warp_mode", timing.warp_mode))
        if timing.warp_markers:
            attempt("warp markers", lambda: _copy_warp_markers(clip, timing.warp_markers))
    if timing.looping is not None:
        attempt("loop switch", lambda: setattr(clip, "looping", timing.looping))
    for start_name, end_name in TIMING_RANGES:
        start, end = getattr(timing, start_name), getattr(timing, end_name)
        if start is not None and end is not None:
            attempt(f"{start_name}/{end_name}", functools.partial(_set_range, clip, start_name, end_name, start, end))
    return refused


def _set_range(clip: Any, start_name: str, end_name: str, start: float, end: float) -> None:
    """Set a (start, end) pair without ever making start >= end, which Live refuses."""
    if start >= float(getattr(clip, end_name)):
        setattr(clip, end_name, end)
        setattr(clip, start_name, start)
    else:
        setattr(clip, start_name, start)
        setattr(clip, end_name, end)


def _copy_warp_markers(clip: Any, markers: Sequence[Any]) -> None:
    """The new clip's warp markers become the source's (Live's WarpMarker objects, which
    `Clip.add_warp_marker` takes; it refuses a dict from a Remote Script)."""
    wanted = {(float(m.beat_time), float(m.sample_time)) for m in markers}
    for marker in list(clip.warp_markers):
        if (float(marker.beat_time), float(marker.sample_time)) not in wanted:
            clip.remove_warp_marker(marker.beat_time)
    present = {(float(m.beat_time), float(m.sample_time)) for m in clip.warp_markers}
    for marker in markers:
        if (float(marker.beat_time), float(marker.sample_time)) not in present:
            clip.add_warp_marker(marker)


class PlacementError(Exception):
    """Something the user can fix in Live; the message goes to the status bar as it is."""


@dataclass(frozen=True)
class ClipTarget:
    """Where the separated clip sits, captured when the user asked for the separation."""

    clip_name: str
    file_path: str
    track: Any  # the Live Track that holds the clip
    in_arrangement: bool
    start_time: float = 0.0  # beats from the song start (Arrangement clips)
    scene_index: int = -1  # row in Session view (Session clips)
    timing: ClipTiming = ClipTiming()  # the clip's warping and markers, for the stems

    @property
    def where(self) -> str:
        if self.in_arrangement:
            return f"Arrangement, beat {self.start_time:g}"
        return f"Session, scene {self.scene_index + 1}"


@dataclass
class PlacementReport:
    created: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (stem, why)
    unaligned: list[tuple[str, str]] = field(default_factory=list)  # (stem, what Live refused of the timing)


def _index_of(items: Sequence[Any], wanted: Any) -> int:
    """Position of a Live object in a Live list (Live's wrappers compare by ==), or -1."""
    for index, item in enumerate(items):
        if item == wanted:
            return index
    return -1


def _selected(song: Any, application: Any) -> Any:
    """The clip the user means: the highlighted Session slot's, else the one in Detail View."""
    if application.view.focused_document_view == SESSION_VIEW:
        slot = song.view.highlighted_clip_slot
        if slot is not None and slot.has_clip:
            return slot.clip
    return song.view.detail_clip


def _is_arrangement_clip(clip: Any) -> bool:
    flag = getattr(clip, "is_arrangement_clip", None)
    if flag is not None:
        return bool(flag)
    # Lives before 11 lack the flag: an Arrangement clip's parent is its Track, which has slots.
    return hasattr(clip.canonical_parent, "clip_slots")


def selected_clip(song: Any, application: Any) -> ClipTarget:
    """The selected audio clip and where it sits, or PlacementError saying what to select."""
    clip = _selected(song, application)
    if clip is None:
        raise PlacementError(
            "select an audio clip first: click it in the Arrangement, or highlight its slot in Session view"
        )
    name = clip.name or "untitled clip"
    if not clip.is_audio_clip:
        raise PlacementError(f"'{name}' is a MIDI clip; select an audio clip to separate")
    file_path = clip.file_path
    if not file_path:
        raise PlacementError(f"'{name}' has no audio file on disk to separate")
    parent = clip.canonical_parent
    timing = clip_timing(clip)
    if _is_arrangement_clip(clip):
        return ClipTarget(name, file_path, parent, in_arrangement=True, start_time=float(clip.start_time),
                          timing=timing)
    track = parent.canonical_parent
    return ClipTarget(name, file_path, track, in_arrangement=False, scene_index=_index_of(track.clip_slots, parent),
                      timing=timing)


def missing_api(song: Any, target: ClipTarget) -> str | None:
    """The Live call this Live lacks for placing stems at `target`, or None when it has them all."""
    if not hasattr(song, "create_audio_track"):
        return "Song.create_audio_track"
    if target.in_arrangement:
        return None if hasattr(target.track, "create_audio_clip") else "Track.create_audio_clip"
    slots = target.track.clip_slots
    if 0 <= target.scene_index < len(slots) and hasattr(slots[target.scene_index], "create_audio_clip"):
        return None
    return "ClipSlot.create_audio_clip"


def stems_folder(paths: Mapping[str, str]) -> str:
    """The folder the stems were written to (they share one)."""
    return os.path.dirname(next(iter(paths.values()), "")) or "?"


def place_stems(song: Any, target: ClipTarget, paths: Mapping[str, str]) -> PlacementReport:
    """One new audio track per stem, named after it, right after the clip's track, with the stem
    where the clip was: same start in the Arrangement, same scene in Session view, and the clip's
    warping, warp markers and markers (`align_clip`), so the stems play in step with it.

    Call only from Live's timer or a user action (Live forbids changing the set from a listener).
    A stem that fails is reported and the others still go in.
    """
    report = PlacementReport()
    first = _index_of(song.tracks, target.track)  # looked up now: the user may have moved tracks
    for offset, (stem, path) in enumerate(paths.items()):
        index = first + 1 + offset if first >= 0 else -1  # -1: at the end, as Live defines it
        try:
            song.create_audio_track(index)
            track = song.tracks[index]
            track.name = stem
            if target.in_arrangement:
                clip = track.create_audio_clip(path, target.start_time)
            else:
                clip = track.clip_slots[target.scene_index].create_audio_clip(path)
        except Exception as err:  # noqa: BLE001 - Live raises RuntimeError, ArgumentError, IndexError...: report each
            report.failed.append((stem, f"{type(err).__name__}: {err}"))
            continue
        report.created.append(stem)
        for why in align_clip(clip, target.timing) if clip is not None else ["Live returned no clip"]:
            report.unaligned.append((stem, why))
    return report


# -- generated loops -------------------------------------------------------------------------------

# A playhead this close before a bar line counts as on it (Live reports beats as floats).
BAR_EPSILON_BEATS = 1e-6


@dataclass(frozen=True)
class LoopTarget:
    """Where a generated loop lands, decided when it arrives: in the view the user is looking at."""

    in_arrangement: bool
    track_index: int = -1  # where the new track goes: after the selected track, or -1 (the end)
    position: float = 0.0  # beats from the song start (Arrangement)
    bar: int = 1  # the bar that starts at `position`, counted from 1 (for messages)
    scene_index: int = 0  # row in Session view

    @property
    def where(self) -> str:
        if self.in_arrangement:
            return f"Arrangement, bar {self.bar}"
        return f"Session, scene {self.scene_index + 1}"


def bar_beats(numerator: int, denominator: int) -> float:
    """Beats (quarter notes, Live's unit) in one bar: 4/4 -> 4, 7/8 -> 3.5, 6/8 -> 3."""
    return int(numerator) * 4.0 / int(denominator)


def next_bar(song_time: float, numerator: int, denominator: int) -> tuple[float, int]:
    """(beats, bar number from 1) of the first bar line at or after `song_time` beats."""
    length = bar_beats(numerator, denominator)
    index = max(math.ceil(float(song_time) / length - BAR_EPSILON_BEATS), 0)
    return index * length, index + 1


def loop_target(song: Any, application: Any) -> LoopTarget:
    """The selected scene in Session view; else the next bar line from the playhead."""
    selected = _index_of(song.tracks, song.view.selected_track)
    track_index = selected + 1 if selected >= 0 else -1
    if application.view.focused_document_view == SESSION_VIEW:
        scene = _index_of(song.scenes, song.view.selected_scene)
        return LoopTarget(in_arrangement=False, track_index=track_index, scene_index=max(scene, 0))
    position, bar = next_bar(song.current_song_time, song.signature_numerator, song.signature_denominator)
    return LoopTarget(in_arrangement=True, track_index=track_index, position=position, bar=bar)


class MissingApi(PlacementError):
    """This Live lacks a call the placement needs (`call`, e.g. "Track.create_audio_clip")."""

    def __init__(self, call: str) -> None:
        super().__init__(f"this Live has no {call} ({LIVE_WITH_AUDIO_CLIP_IMPORT} have it)")
        self.call = call


def missing_loop_api(song: Any, target: LoopTarget) -> str | None:
    """The Live call this Live lacks for placing a loop at `target`, or None when it has them all.

    Asked of a track already in the set (every Live track is of one class), so that a Live without
    the calls is told so before a track is made; in an empty set `place_loop` asks the new track.
    """
    if not hasattr(song, "create_audio_track"):
        return "Song.create_audio_track"
    tracks = song.tracks
    return _missing_on(tracks[0], target) if tracks else None


def _missing_on(track: Any, target: LoopTarget) -> str | None:
    if target.in_arrangement:
        return None if hasattr(track, "create_audio_clip") else "Track.create_audio_clip"
    slots = track.clip_slots
    return None if slots and hasattr(slots[0], "create_audio_clip") else "ClipSlot.create_audio_clip"


def place_loop(song: Any, target: LoopTarget, track_name: str, path: str) -> Any:
    """A new audio track named `track_name` with the file at `target`; returns the track.

    Call only from Live's timer or a user action (Live forbids changing the set from a listener).
    When Live refuses the clip (or lacks the call: MissingApi), the new track is deleted again and
    the error is raised.
    """
    song.create_audio_track(target.track_index)
    tracks = song.tracks
    track = tracks[target.track_index if target.track_index >= 0 else len(tracks) - 1]  # -1: at the end
    try:
        missing = _missing_on(track, target)
        if missing is not None:
            raise MissingApi(missing)
        track.name = track_name
        if target.in_arrangement:
            track.create_audio_clip(path, target.position)
        else:
            track.clip_slots[target.scene_index].create_audio_clip(path)
    except Exception:  # Live raises RuntimeError, ArgumentError, IndexError...: undo, then report
        _delete_track(song, track)
        raise
    return track


def _delete_track(song: Any, track: Any) -> None:
    """Take back a track made for a clip Live refused: no empty tracks are left behind."""
    index = _index_of(song.tracks, track)
    if index >= 0 and hasattr(song, "delete_track"):
        song.delete_track(index)
