"""A simulated `reaper_python`: REAPER's ReaScript Python API over an in-memory project.

REAPER cannot run here, so the Flowstate ReaScripts run against this instead. Every `RPR_`
function here has the parameters, return convention and null-pointer behaviour of REAPER's
generated `reaper_python.py` (the ctypes wrapper REAPER writes into its plug-in folder; read for
REAPER 6/7, where each wrapper is `CFUNCTYPE(<C types>)` plus `rpr_packp`/`rpr_unpackp`), and the
meanings of the parameter names (`D_PLAY_OFFSET` ...) of REAPER's API documentation (the
`GetSetMediaTrackInfo` list of reaper_plugin_functions.h / the ReaScript help page):

- functions are `RPR_<name>` with every C parameter positional (a wrong count is a TypeError);
- objects are passed as text pointers, "(MediaItem*)0x0000000000001234" (`rpr_unpackp` writes
  '(%s)0x%08X%08X'); `rpr_packp` turns a pointer that does not match its regex, is of another
  type or fails `ValidatePtr` (a deleted track, an item of a deleted track) into NULL, and the C
  function then does nothing and returns 0 / NULL / "". The simulation does the same and also
  notes each such call in `null_pointer_calls`, so a test can say a script never relied on it;
- C `bool` results are `c_byte`, so Python sees 0 or 1, never True/False;
- functions with out-parameters or string buffers return a tuple of the return value (if the C
  function has one) followed by every parameter, out-values filled in: e.g.
  `RPR_GetMediaSourceFileName(src, "", 4096)` -> (src, filename, 4096) because the C function is
  void, `RPR_GetSetMediaTrackInfo_String(tr, "P_NAME", "x", 1)` -> (1, tr, "P_NAME", "x", 1);
  functions whose string parameters are `const char*` (`InsertMedia`, `SetExtState`, ...) return
  just the C result;
- `RPR_defer(code)` and `RPR_atexit(code)` take Python source text that REAPER evaluates later in
  the script's own global namespace; deferred code runs once per UI cycle (`pump()` here);
- scripts run without `__file__` (REAPER does not define it).

Behaviour that the scripts depend on is modelled after REAPER's: `InsertMedia(file, 0)` inserts
at the edit cursor on the last touched track, selects the new item and moves the edit cursor to
its end; action 40914 makes the first selected track the last touched one; a file that cannot be
read imports nothing. `InsertMedia`'s int result is undocumented, so the simulation returns
`insert_media_result` when a test sets it (any value: scripts must not read meaning into it).
Anything not modelled raises, so a script that starts relying on it fails here instead of passing
by accident.
"""

from __future__ import annotations

import builtins
import re
import sys
import time
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import soundfile

ACTION_SELECTED_TRACK_AS_LAST_TOUCHED = 40914
# rpr_packp's pattern: only upper-case hex digits make a pointer.
_POINTER = re.compile(r"^\((\w+\*|HWND)\)0x([0-9A-F]+)$")


def _guid() -> str:
    """REAPER's text form of a GUID (API doc: "If using a _String() function, GUID is a string
    {xyz-...}"): {8-4-4-4-12}, upper case."""
    return "{%s}" % str(uuid.uuid4()).upper()


@dataclass(eq=False)
class Source:
    filename: str  # "" for sources without a file (MIDI, in-project data, a section)
    # A SECTION source (an item's "Section" or "Reverse" in its properties) wraps its parent and has
    # no file of its own: (offset into the parent, length, reversed), PCM_Source_GetSectionInfo's.
    parent: Source | None = None
    section: tuple[float, float, bool] | None = None


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
    guid: str = field(default_factory=_guid)
    loop_source: float = 1.0  # B_LOOPSRC (bool): repeat the source past its end

    @property
    def take(self) -> Take | None:
        return self.takes[self.active_take] if self.takes else None


@dataclass(eq=False)
class Track:
    name: str
    items: list[Item] = field(default_factory=list)
    selected: bool = False
    guid: str = field(default_factory=_guid)
    # Track media playback offset: I_PLAY_OFFSET_FLAG (&1 bypassed, &2 samples, else seconds)
    # and D_PLAY_OFFSET, in the unit the flag says.
    play_offset_flag: int = 0
    play_offset: float = 0.0


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
        self.insert_media_result: int | None = None  # what InsertMedia returns; None: 1 if imported, else 0
        # Preferences > Project > Media item defaults, loop source for new items: a user preference,
        # which the scripts must not depend on (the tests set it both ways).
        self.loop_new_items = True
        self.null_pointer_calls: list[tuple[str, str]] = []  # (function, pointer) REAPER saw as NULL
        self.proj_ext_state: dict[tuple[str, str], str] = {}  # saved with the project
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
                 empty: bool = False, selected: bool = True,
                 section: tuple[float, float, bool] | None = None, loop_source: bool = True) -> Item:
        """`section` (offset, length, reversed): the take plays a section of the file, or the file
        reversed, through a SECTION source whose parent is the file's (REAPER's item properties)."""
        item = Item(track, position, length, selected=selected, loop_source=float(loop_source))
        if not empty:
            source = Source(filename) if section is None else Source("", parent=Source(filename), section=section)
            item.takes.append(Take(source, midi=midi, start_offset=start_offset, playrate=playrate))
        track.items.append(item)
        track.items.sort(key=lambda each: each.position)  # GetTrackMediaItem counts in time order
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
        self._end_finished({id(namespace): namespace})  # a script that deferred nothing has ended
        return namespace

    @property
    def running(self) -> bool:
        """Whether a script still has deferred code queued."""
        return bool(self._deferred)

    def pump(self) -> None:
        """One UI cycle: run the code deferred during the previous one (exceptions propagate)."""
        queued, self._deferred = self._deferred, []
        for code, namespace in queued:
            self._namespace = namespace  # what it defers is its own script's (scripts run side by side)
            exec(code, namespace)
        self._end_finished({id(namespace): namespace for _, namespace in queued})

    def _end_finished(self, ran: dict[int, dict[str, Any]]) -> None:
        """Each script in `ran` that deferred nothing more has ended: its atexit code runs (REAPER's
        ReaScript docs: atexit code runs "when the script finishes or is ended by the user"; each
        script instance runs and ends on its own)."""
        going = {id(namespace) for _, namespace in self._deferred}
        for key, namespace in ran.items():
            if key not in going:
                self._run_at_exit(namespace)

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

    def _run_at_exit(self, only: dict[str, Any] | None = None) -> None:
        """Atexit code: every script's, or `only` that script's."""
        pending: list[tuple[str, dict[str, Any]]] = []
        kept: list[tuple[str, dict[str, Any]]] = []
        for entry in self._at_exit:
            (pending if only is None or entry[1] is only else kept).append(entry)
        self._at_exit = kept
        for code, namespace in pending:
            self._namespace = namespace
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

    def resolve(self, pointer: Any, kind: type) -> Any:
        """The object behind `pointer`, or None where REAPER's rpr_packp would pass NULL: a pointer
        that does not match its pattern, of another type, or that ValidatePtr refuses because the
        object is no longer in the project. A non-null pointer that becomes NULL is noted."""
        text = str(pointer)
        match = _POINTER.match(text)
        obj = self._objects.get(text) if match else None
        if not isinstance(obj, kind) or not self._alive(obj):
            if match is None or int(match.group(2), 16) != 0:
                self.null_pointer_calls.append((self._api_caller(), text))
            return None
        return obj

    @staticmethod
    def _api_caller() -> str:
        """The RPR_ function being run (the innermost on the stack)."""
        frame = sys._getframe(1)
        while frame is not None and not frame.f_code.co_name.startswith("RPR_"):
            frame = frame.f_back
        return frame.f_code.co_name if frame is not None else "?"

    def _alive(self, obj: Any) -> bool:
        if isinstance(obj, Track):
            return any(track is obj for track in self.tracks)
        if isinstance(obj, Item):
            return self._alive(obj.track) and any(item is obj for item in obj.track.items)
        if isinstance(obj, Take):
            return any(take is obj for item in self._all_items() for take in item.takes)
        if isinstance(obj, Source):  # a take's source, or a source a take's SECTION source wraps
            return any(self._wraps(take.source, obj) for item in self._all_items() for take in item.takes)
        return False

    @staticmethod
    def _wraps(source: Source | None, obj: Source) -> bool:
        while source is not None:
            if source is obj:
                return True
            source = source.parent
        return False

    def _all_items(self) -> list[Item]:
        return [item for track in self.tracks for item in track.items]

    # -- the API ---------------------------------------------------------------------------------

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType("reaper_python", "Simulated REAPER ReaScript Python API")
        for name in dir(self):
            if name.startswith("RPR_"):
                setattr(module, name, getattr(self, name))
        return module

    def _selected_items(self) -> list[Item]:
        return [item for item in self._all_items() if item.selected]

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
                          retvals_csv_sz: int) -> tuple[int, str, int, str, str, int]:
        """The dialog: one field per caption; `separator=X` and `extrawidth=N` captions are options
        (X separates the values, default ","), and the values must match the number of fields.
        The C function returns bool (c_byte: 1 for OK, 0 for Cancel), then every parameter."""
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
        answer = text if ok else retvals_csv
        return (int(ok), title, num_inputs, captions_csv, answer[: max(retvals_csv_sz - 1, 0)], retvals_csv_sz)

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

    def RPR_GetProjExtState(self, proj: Any, extname: str, key: str, valOutNeedBig: str,
                            valOutNeedBig_sz: int) -> tuple[int, Any, str, str, str, int]:
        """int GetProjExtState(ReaProject*, const char* extname, const char* key, char* valOutNeedBig,
        int valOutNeedBig_sz): the value's length (0: none), then every parameter."""
        self._project(proj)
        value = self.proj_ext_state.get((str(extname), str(key)), "")
        return (len(value), proj, extname, key, value[: max(valOutNeedBig_sz - 1, 0)], valOutNeedBig_sz)

    def RPR_SetProjExtState(self, proj: Any, extname: str, key: str, value: str) -> int:
        """API doc: an empty value deletes the key, an empty key all of extname's; returns "the size
        of the state for this extname", a size in no stated unit (the scripts do not read it): here
        the number of keys extname keeps."""
        self._project(proj)
        section, key, value = str(extname), str(key), str(value)
        if not key:
            for each in [k for k in self.proj_ext_state if k[0] == section]:
                del self.proj_ext_state[each]
        elif not value:
            self.proj_ext_state.pop((section, key), None)
        else:
            self.proj_ext_state[(section, key)] = value
        return sum(1 for k in self.proj_ext_state if k[0] == section)

    # items, takes, sources

    def RPR_CountSelectedMediaItems(self, proj: Any) -> int:
        self._project(proj)
        return len(self._selected_items())

    def RPR_GetSelectedMediaItem(self, proj: Any, selitem: int) -> str:
        self._project(proj)
        items = self._selected_items()
        return self.pointer(items[selitem] if 0 <= selitem < len(items) else None, "MediaItem*")

    def RPR_GetActiveTake(self, item: str) -> str:
        found = self.resolve(item, Item)
        return self.pointer(found.take if found else None, "MediaItem_Take*")

    def RPR_CountTakes(self, item: str) -> int:
        found = self.resolve(item, Item)
        return len(found.takes) if found else 0

    def RPR_GetTake(self, item: str, takeidx: int) -> str:
        found = self.resolve(item, Item)
        takes = found.takes if found else []
        return self.pointer(takes[takeidx] if 0 <= takeidx < len(takes) else None, "MediaItem_Take*")

    def RPR_TakeIsMIDI(self, take: str) -> int:
        found = self.resolve(take, Take)
        return int(bool(found and found.midi))

    def RPR_GetMediaItemTake_Source(self, take: str) -> str:
        found = self.resolve(take, Take)
        return self.pointer(found.source if found else None, "PCM_source*")

    def RPR_GetMediaSourceFileName(self, source: str, filenamebuf: str, filenamebuf_sz: int) -> tuple[str, str, int]:
        found = self.resolve(source, Source)
        name = found.filename if found else ""
        return (source, name[: max(filenamebuf_sz - 1, 0)], filenamebuf_sz)

    def RPR_GetMediaSourceParent(self, src: str) -> str:
        """The source a SECTION source wraps; NULL for a root source (API doc: "Returns the parent
        source, or NULL if src is the root source ... sections or reversed sources")."""
        found = self.resolve(src, Source)
        return self.pointer(found.parent if found else None, "PCM_source*")

    def RPR_PCM_Source_GetSectionInfo(self, src: str, offsOut: float, lenOut: float,
                                      revOut: int) -> tuple[int, str, float, float, int]:
        """reaper_python.py: `(Boolean retval, PCM_source src, Float offsOut, Float lenOut, Boolean
        revOut)`, "If a section/reverse block, retrieves offset/len/reverse. return true if
        success"; otherwise the out-values come back as passed."""
        found = self.resolve(src, Source)
        if found is None or found.section is None:
            return (0, src, float(offsOut), float(lenOut), int(revOut))
        offset, length, reverse = found.section
        return (1, src, float(offset), float(length), int(reverse))

    def RPR_GetMediaItem_Track(self, item: str) -> str:
        found = self.resolve(item, Item)
        return self.pointer(found.track if found else None, "MediaTrack*")

    _ITEM_FIELDS: ClassVar[dict[str, str]] = {"D_POSITION": "position", "D_LENGTH": "length",
                                              "B_LOOPSRC": "loop_source"}
    _TAKE_FIELDS: ClassVar[dict[str, str]] = {"D_STARTOFFS": "start_offset", "D_PLAYRATE": "playrate"}

    def _get_field(self, pointer: str, kind: type, fields: dict[str, str], parmname: str) -> float:
        found = self.resolve(pointer, kind)
        return float(getattr(found, fields[parmname])) if found else 0.0

    def _set_field(self, pointer: str, kind: type, fields: dict[str, str], parmname: str, value: float) -> int:
        found = self.resolve(pointer, kind)
        if found is None:
            return 0
        # A B_ parameter is a C bool (REAPER's API doc): any non-zero value is stored as 1.
        setattr(found, fields[parmname], float(bool(value)) if parmname.startswith("B_") else float(value))
        return 1

    def RPR_GetMediaItemInfo_Value(self, item: str, parmname: str) -> float:
        return self._get_field(item, Item, self._ITEM_FIELDS, parmname)

    def RPR_SetMediaItemInfo_Value(self, item: str, parmname: str, newvalue: float) -> int:
        return self._set_field(item, Item, self._ITEM_FIELDS, parmname, newvalue)

    def RPR_GetSetMediaItemInfo_String(self, item: str, parmname: str, stringNeedBig: str,
                                       setNewValue: bool) -> tuple[int, str, str, str, bool]:
        if parmname != "GUID" or setNewValue:
            raise NotImplementedError(f"item string {parmname} (set={setNewValue}) is not simulated")
        found = self.resolve(item, Item)
        return (int(found is not None), item, parmname, found.guid if found else "", setNewValue)

    def RPR_GetMediaItemTakeInfo_Value(self, take: str, parmname: str) -> float:
        return self._get_field(take, Take, self._TAKE_FIELDS, parmname)

    def RPR_SetMediaItemTakeInfo_Value(self, take: str, parmname: str, newvalue: float) -> int:
        return self._set_field(take, Take, self._TAKE_FIELDS, parmname, newvalue)

    def RPR_InsertMedia(self, file: str, mode: int) -> int:
        if mode != 0:
            raise NotImplementedError(f"InsertMedia mode {mode} is not simulated (0: add to current track)")
        imported = self._insert_media(str(file))
        if self.insert_media_result is not None:
            return self.insert_media_result
        return int(imported)

    def _insert_media(self, file: str) -> bool:
        track = self.last_touched
        if track is None or not self._alive(track):
            return False
        try:
            info = soundfile.info(file)
        except (RuntimeError, soundfile.LibsndfileError):
            return False  # REAPER imports nothing it cannot read
        for other in self._selected_items():
            other.selected = False
        length = info.frames / info.samplerate
        item = Item(track, self.cursor, length, [Take(Source(file))], selected=True,
                    loop_source=float(self.loop_new_items))
        track.items.append(item)
        track.items.sort(key=lambda each: each.position)  # GetTrackMediaItem counts in time order
        self.cursor += length  # REAPER's default: the edit cursor moves to the end of inserted media
        return True

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
        track = self.resolve(tr, Track)
        if parmname == "IP_TRACKNUMBER":
            return float(self.tracks.index(track) + 1) if track else 0.0
        if parmname == "I_PLAY_OFFSET_FLAG":
            return float(track.play_offset_flag) if track else 0.0
        if parmname == "D_PLAY_OFFSET":
            return float(track.play_offset) if track else 0.0
        raise NotImplementedError(f"track parameter {parmname} is not simulated")

    def RPR_SetMediaTrackInfo_Value(self, tr: str, parmname: str, newvalue: float) -> int:
        track = self.resolve(tr, Track)
        if parmname == "I_PLAY_OFFSET_FLAG":
            if track:
                track.play_offset_flag = int(newvalue)
        elif parmname == "D_PLAY_OFFSET":
            if track:
                track.play_offset = float(newvalue)
        else:
            raise NotImplementedError(f"setting track parameter {parmname} is not simulated")
        return int(track is not None)

    def RPR_GetSetMediaTrackInfo_String(self, tr: str, parmname: str, stringNeedBig: str,
                                         setNewValue: bool) -> tuple[int, str, str, str, bool]:
        track = self.resolve(tr, Track)
        if parmname == "GUID" and not setNewValue:
            return (int(track is not None), tr, parmname, track.guid if track else "", setNewValue)
        if parmname != "P_NAME":
            raise NotImplementedError(f"track string {parmname} (set={setNewValue}) is not simulated")
        if track is None:
            return (0, tr, parmname, str(stringNeedBig), setNewValue)
        if setNewValue:
            track.name = str(stringNeedBig)
        return (1, tr, parmname, track.name, setNewValue)

    def RPR_DeleteTrack(self, tr: str) -> None:
        track = self.resolve(tr, Track)
        if track is None:
            return
        self.tracks.remove(track)
        if self.last_touched is track:
            self.last_touched = None

    def RPR_CountSelectedTracks(self, proj: Any) -> int:
        self._project(proj)
        return sum(1 for track in self.tracks if track.selected)

    def RPR_GetSelectedTrack(self, proj: Any, seltrackidx: int) -> str:
        self._project(proj)
        selected = [track for track in self.tracks if track.selected]
        return self.pointer(selected[seltrackidx] if 0 <= seltrackidx < len(selected) else None, "MediaTrack*")

    def RPR_SetOnlyTrackSelected(self, track: str) -> None:
        chosen = self.resolve(track, Track)
        if chosen is None:
            return
        for each in self.tracks:
            each.selected = each is chosen

    def RPR_CountTrackMediaItems(self, track: str) -> int:
        found = self.resolve(track, Track)
        return len(found.items) if found else 0

    def RPR_GetTrackMediaItem(self, tr: str, itemidx: int) -> str:
        found = self.resolve(tr, Track)
        items = found.items if found else []
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


# The modules the Flowstate scripts import from their folder (install-reaper writes them there).
SCRIPT_MODULES = ("flowstate_reaper", "flowstate_osc")


@contextmanager
def scripts_running_in(sim: Reaper) -> Iterator[Reaper]:
    """While inside: `import reaper_python` gives `sim.module` and the scripts' own modules load afresh
    from their folder; after: what still runs is stopped, and sys.path and sys.modules are as before."""
    saved_path = list(sys.path)
    for name in SCRIPT_MODULES:
        sys.modules.pop(name, None)
    sys.modules["reaper_python"] = sim.module
    try:
        yield sim
    finally:
        sim.terminate()
        sys.path[:] = saved_path
        for name in (*SCRIPT_MODULES, "reaper_python"):
            sys.modules.pop(name, None)
