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

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SESSION_VIEW = "Session"
# The Lives that have both Track.create_audio_clip and ClipSlot.create_audio_clip.
LIVE_WITH_AUDIO_CLIP_IMPORT = "Live 11.3.25+ and 12.0.5+"


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

    @property
    def where(self) -> str:
        if self.in_arrangement:
            return f"Arrangement, beat {self.start_time:g}"
        return f"Session, scene {self.scene_index + 1}"


@dataclass
class PlacementReport:
    created: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (stem, why)


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
    if _is_arrangement_clip(clip):
        return ClipTarget(name, file_path, parent, in_arrangement=True, start_time=float(clip.start_time))
    track = parent.canonical_parent
    return ClipTarget(name, file_path, track, in_arrangement=False, scene_index=_index_of(track.clip_slots, parent))


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
    where the clip was: same start in the Arrangement, same scene in Session view.

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
                track.create_audio_clip(path, target.start_time)
            else:
                track.clip_slots[target.scene_index].create_audio_clip(path)
        except Exception as err:  # Live raises RuntimeError, ArgumentError, IndexError...: report each
            report.failed.append((stem, f"{type(err).__name__}: {err}"))
            continue
        report.created.append(stem)
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
