"""A simulated `reaper_python`: REAPER's ReaScript Python API over an in-memory project.

REAPER cannot run here, so the Flowstate ReaScripts run against this instead. It follows the
ReaScript Python conventions the real module has (REAPER's generated `reaper_python.py`):

- functions are `RPR_<name>` with every C parameter positional (a wrong count is a TypeError);
- objects are passed as text pointers, e.g. "(MediaItem*)0x0000000000001234", and a missing
  object is a null pointer of its type, "(MediaItem_Take*)0x0000000000000000";
- functions with out-parameters or string buffers return a tuple of the return value (if the C
  function has one) followed by every parameter, out-values filled in: e.g.
  `RPR_GetMediaSourceFileName(src, "", 4096)` -> (src, filename, 4096) because the C function is
  void, `RPR_GetSetMediaTrackInfo_String(tr, "P_NAME", "x", True)` -> (True, tr, "P_NAME", "x", True);
- `RPR_defer(code)` and `RPR_atexit(code)` take Python source text that REAPER evaluates later in
  the script's own global namespace; deferred code runs once per UI cycle (`pump()` here);
- scripts run without `__file__` (REAPER does not define it).

Behaviour that the scripts depend on is modelled after REAPER's: `InsertMedia(file, 0)` inserts
at the edit cursor on the last touched track, selects the new item and moves the edit cursor to
its end; action 40914 makes the first selected track the last touched one; a file that cannot be
read imports nothing (returns 0). Anything not modelled raises, so a script that starts relying
on it fails here instead of passing by accident.
"""

from __future__ import annotations

import builtins
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile

ACTION_SELECTED_TRACK_AS_LAST_TOUCHED = 40914


@dataclass(eq=False)
class Source:
    filename: str  # "" for sources without a file (MIDI, in-project data)


@dataclass(eq=False)
class Take:
    source: Source
    midi: bool = False
    start_offset: float = 0.0
    playrate: float = 1.0


@dataclass(eq=False)
class Item:
    track: Track
    position: float
    length: float
    takes: list[Take] = field(default_factory=list)
    active_take: int = 0
    selected: bool = False

    @property
    def take(self) -> Take | None:
        return self.takes[self.active_take] if self.takes else None


@dataclass(eq=False)
class Track:
    name: str
    items: list[Item] = field(default_factory=list)
    selected: bool = False


@dataclass(frozen=True)
class TempoMarker:
    time: float
    bpm: float
    numerator: int
    denominator: int


class Reaper:
    """One REAPER instance with one open project; `module` is what `import reaper_python` gives."""

    def __init__(self, resource_path: Path) -> None:
        self.resource_path = resource_path
        self.tracks: list[Track] = []
        self.cursor = 0.0
        self.play_state = 0  # &1 playing, &2 paused, &4 recording
        self.play_position = 0.0
        self.tempo_markers: list[TempoMarker] = [TempoMarker(0.0, 120.0, 4, 4)]
        self.last_touched: Track | None = None
        self.console: list[str] = []
        self.message_boxes: list[tuple[str, str, int]] = []
        self.ext_state: dict[tuple[str, str], str] = {}
        self.persisted: set[tuple[str, str]] = set()
        self.user_answers: list[tuple[bool, str]] = []  # what the user types in GetUserInputs
        self.prompts: list[tuple[str, str, str]] = []
        self.undo_points: list[str] = []
        self.undo_depth = 0
        self.ui_refresh_prevented = 0
        self._deferred: list[tuple[str, dict[str, Any]]] = []
        self._at_exit: list[tuple[str, dict[str, Any]]] = []
        self._namespace: dict[str, Any] | None = None
        self._objects: dict[str, Any] = {}
        self._ids: dict[int, str] = {}
        self.module = self._build_module()

    # -- building a project ----------------------------------------------------------------------

    def add_track(self, name: str) -> Track:
        track = Track(name)
        self.tracks.append(track)
        return track

    def add_item(self, track: Track, filename: str, position: float, length: float, *,
                 start_offset: float = 0.0, playrate: float = 1.0, midi: bool = False,
                 empty: bool = False, selected: bool = True) -> Item:
        item = Item(track, position, length, selected=selected)
        if not empty:
            item.takes.append(Take(Source(filename), midi=midi, start_offset=start_offset, playrate=playrate))
        track.items.append(item)
        return item

    def console_text(self) -> str:
        return "".join(self.console)

    # -- running scripts -------------------------------------------------------------------------

    def run_script(self, path: Path) -> dict[str, Any]:
        """Run a ReaScript as REAPER does: its own globals, no __file__; returns those globals."""
        namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self._namespace = namespace
        code = compile(path.read_text(encoding="ascii"), str(path), "exec")
        exec(code, namespace)
        if not self._deferred:
            self._run_at_exit()  # a script that deferred nothing has ended
        return namespace

    @property
    def running(self) -> bool:
        """Whether a script still has deferred code queued."""
        return bool(self._deferred)

    def pump(self) -> None:
        """One UI cycle: run the code deferred during the previous one (exceptions propagate)."""
        queued, self._deferred = self._deferred, []
        for code, namespace in queued:
            exec(code, namespace)
        if not self._deferred:
            self._run_at_exit()

    def run_until_done(self, timeout_seconds: float = 60.0, cycle_seconds: float = 0.01) -> None:
        """Run UI cycles until no deferred code is left; fail if a script still runs at the timeout."""
        deadline = time.monotonic() + timeout_seconds
        while self._deferred:
            if time.monotonic() > deadline:
                raise AssertionError(f"the script still runs after {timeout_seconds} s:\n{self.console_text()}")
            self.pump()
            time.sleep(cycle_seconds)  # REAPER runs deferred code about 30 times a second

    def terminate(self) -> None:
        """The user stops a running script (REAPER's "terminate instances"): atexit code runs."""
        self._deferred.clear()
        self._run_at_exit()

    def _run_at_exit(self) -> None:
        pending, self._at_exit = self._at_exit, []
        for code, namespace in pending:
            exec(code, namespace)

    # -- pointers --------------------------------------------------------------------------------

    def pointer(self, obj: Any, kind: str) -> str:
        if obj is None:
            return "(%s)0x%016X" % (kind, 0)
        key = id(obj)
        if key not in self._ids:
            text = "(%s)0x%016X" % (kind, 0x10000 + 16 * len(self._ids))
            self._ids[key] = text
            self._objects[text] = obj
        return self._ids[key]

    def resolve(self, pointer: str, kind: type) -> Any:
        obj = self._objects.get(pointer)
        if not isinstance(obj, kind):
            raise ValueError(f"not a valid {kind.__name__} pointer: {pointer!r}")
        return obj

    # -- the API ---------------------------------------------------------------------------------

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType("reaper_python", "Simulated REAPER ReaScript Python API")
        for name in dir(self):
            if name.startswith("RPR_"):
                setattr(module, name, getattr(self, name))
        return module

    def _selected_items(self) -> list[Item]:
        return [item for track in self.tracks for item in track.items if item.selected]

    def _project(self, proj: Any) -> None:
        if proj not in (0, None):
            raise NotImplementedError("the simulation has one project: pass 0")

    # console and dialogs

    def RPR_ShowConsoleMsg(self, msg: str) -> None:
        self.console.append(str(msg))

    def RPR_ShowMessageBox(self, msg: str, title: str, type: int) -> int:
        self.message_boxes.append((str(msg), str(title), int(type)))
        return 1  # OK

    def RPR_GetUserInputs(self, title: str, num_inputs: int, captions_csv: str, retvals_csv: str,
                          retvals_csv_sz: int) -> tuple[bool, str, int, str, str, int]:
        """The dialog: one field per caption; `separator=X` and `extrawidth=N` captions are options
        (X separates the values, default ","), and the values must match the number of fields."""
        captions = captions_csv.split(",")
        options = {c.split("=", 1)[0]: c.split("=", 1)[1] for c in captions if c.split("=", 1)[0] in
                   ("separator", "extrawidth")}
        fields = [c for c in captions if c.split("=", 1)[0] not in options]
        separator = options.get("separator", ",")
        if len(fields) != num_inputs or len(retvals_csv.split(separator)) != num_inputs:
            raise AssertionError(f"GetUserInputs: {num_inputs} inputs, captions {fields}, values {retvals_csv!r}")
        self.prompts.append((title, captions_csv, retvals_csv))
        if not self.user_answers:
            raise AssertionError(f"the script asked for input ({captions_csv!r}) the test did not provide")
        ok, text = self.user_answers.pop(0)
        return (ok, title, num_inputs, captions_csv, text if ok else retvals_csv, retvals_csv_sz)

    # script lifecycle

    def RPR_defer(self, code: str) -> None:
        assert self._namespace is not None
        self._deferred.append((str(code), self._namespace))

    def RPR_atexit(self, code: str) -> None:
        assert self._namespace is not None
        self._at_exit.append((str(code), self._namespace))

    def RPR_GetResourcePath(self) -> str:
        return str(self.resource_path)

    def RPR_GetExtState(self, section: str, key: str) -> str:
        return self.ext_state.get((section, key), "")

    def RPR_SetExtState(self, section: str, key: str, value: str, persist: bool) -> None:
        self.ext_state[(section, key)] = str(value)
        if persist:
            self.persisted.add((section, key))

    # items, takes, sources

    def RPR_CountSelectedMediaItems(self, proj: Any) -> int:
        self._project(proj)
        return len(self._selected_items())

    def RPR_GetSelectedMediaItem(self, proj: Any, selitem: int) -> str:
        self._project(proj)
        items = self._selected_items()
        return self.pointer(items[selitem] if 0 <= selitem < len(items) else None, "MediaItem*")

    def RPR_GetActiveTake(self, item: str) -> str:
        return self.pointer(self.resolve(item, Item).take, "MediaItem_Take*")

    def RPR_TakeIsMIDI(self, take: str) -> bool:
        return self.resolve(take, Take).midi

    def RPR_GetMediaItemTake_Source(self, take: str) -> str:
        return self.pointer(self.resolve(take, Take).source, "PCM_source*")

    def RPR_GetMediaSourceFileName(self, source: str, filenamebuf: str, filenamebuf_sz: int) -> tuple[str, str, int]:
        name = self.resolve(source, Source).filename
        return (source, name[: max(filenamebuf_sz - 1, 0)], filenamebuf_sz)

    def RPR_GetMediaItem_Track(self, item: str) -> str:
        return self.pointer(self.resolve(item, Item).track, "MediaTrack*")

    _ITEM_FIELDS = {"D_POSITION": "position", "D_LENGTH": "length"}
    _TAKE_FIELDS = {"D_STARTOFFS": "start_offset", "D_PLAYRATE": "playrate"}

    def RPR_GetMediaItemInfo_Value(self, item: str, parmname: str) -> float:
        return float(getattr(self.resolve(item, Item), self._ITEM_FIELDS[parmname]))

    def RPR_SetMediaItemInfo_Value(self, item: str, parmname: str, newvalue: float) -> bool:
        setattr(self.resolve(item, Item), self._ITEM_FIELDS[parmname], float(newvalue))
        return True

    def RPR_GetMediaItemTakeInfo_Value(self, take: str, parmname: str) -> float:
        return float(getattr(self.resolve(take, Take), self._TAKE_FIELDS[parmname]))

    def RPR_SetMediaItemTakeInfo_Value(self, take: str, parmname: str, newvalue: float) -> bool:
        setattr(self.resolve(take, Take), self._TAKE_FIELDS[parmname], float(newvalue))
        return True

    def RPR_InsertMedia(self, file: str, mode: int) -> int:
        if mode != 0:
            raise NotImplementedError(f"InsertMedia mode {mode} is not simulated (0: add to current track)")
        track = self.last_touched
        if track is None:
            return 0
        try:
            info = soundfile.info(file)
        except (RuntimeError, soundfile.LibsndfileError):
            return 0  # REAPER imports nothing it cannot read
        for other in self._selected_items():
            other.selected = False
        length = info.frames / info.samplerate
        item = Item(track, self.cursor, length, [Take(Source(str(file)))], selected=True)
        track.items.append(item)
        self.cursor += length  # REAPER's default: the edit cursor moves to the end of inserted media
        return 1

    # tracks

    def RPR_CountTracks(self, proj: Any) -> int:
        self._project(proj)
        return len(self.tracks)

    def RPR_InsertTrackAtIndex(self, idx: int, wantDefaults: bool) -> None:
        self.tracks.insert(max(0, min(int(idx), len(self.tracks))), Track(""))

    def RPR_GetTrack(self, proj: Any, trackidx: int) -> str:
        self._project(proj)
        found = self.tracks[trackidx] if 0 <= trackidx < len(self.tracks) else None
        return self.pointer(found, "MediaTrack*")

    def RPR_GetMediaTrackInfo_Value(self, tr: str, parmname: str) -> float:
        if parmname != "IP_TRACKNUMBER":
            raise NotImplementedError(f"track parameter {parmname} is not simulated")
        return float(self.tracks.index(self.resolve(tr, Track)) + 1)

    def RPR_GetSetMediaTrackInfo_String(self, tr: str, parmname: str, stringNeedBig: str,
                                         setNewValue: bool) -> tuple[bool, str, str, str, bool]:
        if parmname != "P_NAME":
            raise NotImplementedError(f"track string {parmname} is not simulated")
        track = self.resolve(tr, Track)
        if setNewValue:
            track.name = str(stringNeedBig)
        return (True, tr, parmname, track.name, setNewValue)

    def RPR_DeleteTrack(self, tr: str) -> None:
        track = self.resolve(tr, Track)
        self.tracks.remove(track)
        if self.last_touched is track:
            self.last_touched = None

    def RPR_GetSelectedTrack(self, proj: Any, seltrackidx: int) -> str:
        self._project(proj)
        selected = [track for track in self.tracks if track.selected]
        return self.pointer(selected[seltrackidx] if 0 <= seltrackidx < len(selected) else None, "MediaTrack*")

    def RPR_SetOnlyTrackSelected(self, track: str) -> None:
        chosen = self.resolve(track, Track)
        for each in self.tracks:
            each.selected = each is chosen

    def RPR_GetTrackMediaItem(self, tr: str, itemidx: int) -> str:
        items = self.resolve(tr, Track).items
        return self.pointer(items[itemidx] if 0 <= itemidx < len(items) else None, "MediaItem*")

    def RPR_Main_OnCommand(self, command: int, flag: int) -> None:
        if command != ACTION_SELECTED_TRACK_AS_LAST_TOUCHED:
            raise NotImplementedError(f"action {command} is not simulated")
        selected = [track for track in self.tracks if track.selected]
        if selected:
            self.last_touched = selected[0]

    # edit cursor, transport, tempo

    def RPR_GetCursorPosition(self) -> float:
        return self.cursor

    def RPR_SetEditCurPos(self, time: float, moveview: bool, seekplay: bool) -> None:
        self.cursor = float(time)

    def RPR_GetPlayState(self) -> int:
        return self.play_state

    def RPR_GetPlayPosition(self) -> float:
        return self.play_position

    def RPR_Master_GetTempo(self) -> float:
        return self._marker_at(self.play_position if self.play_state & 1 else self.cursor).bpm

    def RPR_TimeMap_GetTimeSigAtTime(self, proj: Any, time: float, timesig_numOut: int, timesig_denomOut: int,
                                     tempoOut: float) -> tuple[Any, float, int, int, float]:
        self._project(proj)
        marker = self._marker_at(time)
        return (proj, time, marker.numerator, marker.denominator, marker.bpm)

    def _marker_at(self, time: float) -> TempoMarker:
        return [marker for marker in self.tempo_markers if marker.time <= time][-1]

    # undo and refresh

    def RPR_Undo_BeginBlock(self) -> None:
        self.undo_depth += 1

    def RPR_Undo_EndBlock(self, descchange: str, extraflags: int) -> None:
        if self.undo_depth < 1:
            raise AssertionError("Undo_EndBlock without Undo_BeginBlock")
        self.undo_depth -= 1
        if self.undo_depth == 0:
            self.undo_points.append(str(descchange))

    def RPR_PreventUIRefresh(self, prevent_count: int) -> None:
        self.ui_refresh_prevented += int(prevent_count)

    def RPR_TrackList_AdjustWindows(self, isMinor: bool) -> None:
        pass  # only redraws in REAPER

    def RPR_UpdateArrange(self) -> None:
        pass  # only redraws in REAPER

