"""Live's side of "separate the selected clip": find the clip, then put each stem where it was.

Only documented Live Object Model calls are used: `Song.view.detail_clip` and
`highlighted_clip_slot`, `Application.view.focused_document_view`, `Clip.file_path`,
`is_audio_clip`, `is_arrangement_clip`, `start_time`, `canonical_parent`, `Song.create_audio_track`,
and, new in Live 12, `Track.create_audio_clip(file_path, position)` (Arrangement) and
`ClipSlot.create_audio_clip(file_path)` (Session). The last two are checked before use, because
older Lives lack them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SESSION_VIEW = "Session"
# The Live version that has both Track.create_audio_clip and ClipSlot.create_audio_clip.
LIVE_WITH_AUDIO_CLIP_IMPORT = "Live 12.0.5"


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
