"""Flowstate for REAPER: what the Flowstate ReaScripts share (standard library only).

Each action script finds its folder, imports this module, makes one task and drives it from
REAPER's defer loop: `start()` once, then `step()` on every defer cycle (about 30 a second) while
it returns True, and `close()` from `RPR_atexit`. Nothing here blocks: the UDP socket is polled,
never waited on, so REAPER stays responsive while the daemon works. Nothing raises into REAPER:
a problem becomes a message box and a line in the ReaScript console.

The daemon's address is REAPER's extended state `Flowstate/daemon_address` ("host:port",
default 127.0.0.1:9010); the "Flowstate - set daemon address" action changes it.

This file must stay ASCII: REAPER does not read every script as UTF-8 on every platform.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import reaper_python as rpr  # REAPER's own module (inside REAPER); a simulation in the tests
from flowstate_osc import OscError, decode_packet, encode_message  # the codec install-reaper copies beside

TITLE = "Flowstate"
EXT_SECTION = "Flowstate"
EXT_ADDRESS_KEY = "daemon_address"
DEFAULT_ADDRESS = "127.0.0.1:9010"

# How long to wait for the reply to a request before saying the daemon does not answer.
REPLY_TIMEOUT_SECONDS = 5.0
# stream.start loads a model (seconds; minutes while its weights download) and opens the audio
# device before it replies: it is waited for while the daemon answers a ping every PROBE_SECONDS
# (a gone daemon is said REPLY_TIMEOUT_SECONDS after the last answer), up to this long.
STREAM_START_PATIENCE_SECONDS = 900.0
# stream.stop answers within seconds: PortAudio gets 5 s to let go of the device, the model's last
# window as long to end.
STREAM_STOP_PATIENCE_SECONDS = 30.0
PROBE_SECONDS = 1.0
# A job that has been silent this long is asked for its state: UDP may lose an event.
CHECK_JOB_AFTER_SECONDS = 10.0
# REAPER action "Track: Set first selected track as last touched track": InsertMedia's mode 0
# inserts on the last touched track, which selecting a track alone does not change.
ACTION_SELECTED_TRACK_AS_LAST_TOUCHED = 40914
# Undo flag: the undo point may cover every kind of change (tracks, items, selection).
UNDO_STATE_ALL = -1
SOURCE_NAME_BUFFER = 4096
# The largest UDP payload: no reply of the daemon is cut short.
MAX_DATAGRAM_BYTES = 65535
# The generate action's questions: (extended-state key keeping the last answer, first default).
GENERATE_FIELDS = (("generate_preset", "keys"), ("generate_prompt", ""), ("generate_bars", "4"))
# A prompt may hold commas, so the answers are separated by a newline (GetUserInputs' separator=).
INPUT_SEPARATOR = "\n"
GENERATE_CAPTIONS = ",".join([
    "Preset (keys or drums...; empty: none)", "Prompt (empty: the preset's)", "Bars",
    "separator=" + INPUT_SEPARATOR, "extrawidth=220",  # REAPER's options for the dialog, not fields
])

_POINTER = re.compile(r"^\((\w+\*|HWND)\)0x([0-9A-Fa-f]+)$")


class FlowstateError(Exception):
    """A problem to tell the user about (not a bug)."""


# -- small helpers ---------------------------------------------------------------------------------


def say(text: str) -> None:
    """One line in REAPER's ReaScript console."""
    rpr.RPR_ShowConsoleMsg("Flowstate: %s\n" % text)


def alert(text: str) -> None:
    """A message box the user must acknowledge, and the same text in the console."""
    say(text)
    rpr.RPR_ShowMessageBox(text, TITLE, 0)


def is_null(pointer: Any) -> bool:
    """ReaScript's Python passes pointers as text, e.g. "(MediaItem*)0x0000000000000000"."""
    match = _POINTER.match(str(pointer or ""))
    return match is None or int(match.group(2), 16) == 0


def parse_address(text: str) -> Tuple[str, int]:
    """ "host:port" -> (host, port); FlowstateError naming the value and what is expected."""
    host, _, port_text = text.strip().rpartition(":")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise FlowstateError(
            "daemon address %r: expected host:port with a port in 1..65535, e.g. %s" % (text, DEFAULT_ADDRESS)
        )
    return host, int(port_text)


def daemon_address() -> Tuple[str, int]:
    """The address the scripts talk to: REAPER's extended state, else the default."""
    return parse_address(rpr.RPR_GetExtState(EXT_SECTION, EXT_ADDRESS_KEY) or DEFAULT_ADDRESS)


def reply_address(request_address: str) -> str:
    """/flow/stems/separate -> /flow/reply/stems/separate"""
    return "/flow/reply/" + request_address[len("/flow/") :]


# -- the wire: one non-blocking UDP socket --------------------------------------------------------


class DaemonUnreachable(OSError):
    """Nothing listens at the daemon's address (the OS reported the port closed)."""


class OscUdpClient:
    """One non-blocking UDP socket connected to the daemon: send requests, drain answers.

    Connecting the socket makes the OS report a closed port (no daemon running) as an error on
    the next send or receive, instead of leaving the script waiting for a timeout. Replies and the
    events of this socket's jobs come back to it, so no listener registration is needed.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        try:
            self._sock.connect((host, port))
        except OSError as err:
            self._sock.close()
            raise DaemonUnreachable("cannot connect: %s" % (err.strerror or err)) from None

    def send(self, address: str, *args: Any) -> None:
        """Send one message; DaemonUnreachable when the OS already knows nobody listens."""
        packet = encode_message(address, list(args))
        try:
            self._sock.send(packet)
        except BlockingIOError:
            raise DaemonUnreachable("the network send buffer is full") from None
        except (ConnectionRefusedError, ConnectionResetError) as err:
            raise DaemonUnreachable("the port is closed: %s" % (err.strerror or err)) from None

    def receive(self) -> List[Tuple[str, List[Any]]]:
        """Every message waiting now as (address, args), in order (never blocks); the messages of
        a bundle come one by one. DaemonUnreachable when the port is closed.

        Packets that are not OSC cannot come from the daemon: they are skipped.
        """
        messages: List[Tuple[str, List[Any]]] = []
        while True:
            try:
                packet = self._sock.recv(MAX_DATAGRAM_BYTES)
            except BlockingIOError:
                return messages
            except (ConnectionRefusedError, ConnectionResetError) as err:
                # Linux and macOS report ICMP port-unreachable as refused, Windows as reset.
                raise DaemonUnreachable("the port is closed: %s" % (err.strerror or err)) from None
            try:
                decoded = decode_packet(packet)
            except OscError:
                continue
            messages.extend((message.address, list(message.args)) for message in decoded)

    def close(self) -> None:
        self._sock.close()


# -- a conversation with the daemon, driven by the defer loop -------------------------------------


class Task:
    """One conversation with the daemon. Subclasses implement `_begin`, `_on_reply`, `_on_event`."""

    def __init__(self) -> None:
        self.client: Optional[OscUdpClient] = None
        self.address = ("", 0)
        self.waiting_for: Optional[str] = None  # the request whose reply has not come yet
        self.deadline = 0.0
        self.patience_deadline: Optional[float] = None  # a patient request: answered pings move `deadline`
        self.patience_seconds = 0.0
        self.next_probe = 0.0
        self.probes_answered = 0  # pings the daemon answered while a patient request waited
        self.last_heard = 0.0
        self.finished = False
        self.failure: Optional[str] = None

    # The three entry points the scripts call; each returns whether to keep deferring.

    def start(self) -> bool:
        """Begin the work; True when the script should call `step()` from RPR_defer."""
        return self._guarded(self._begin)

    def step(self) -> bool:
        """Handle what arrived and check the deadlines; True while there is more to wait for."""
        return self._guarded(self._poll)

    def close(self) -> None:
        """The script ends (RPR_atexit): release the socket."""
        self._disconnect()

    # -- for subclasses ----------------------------------------------------------------------------

    def _begin(self) -> None:
        raise NotImplementedError

    def _on_reply(self, request: str, args: List[Any]) -> None:
        raise NotImplementedError

    def _on_event(self, name: str, args: List[Any]) -> None:
        """Events of this task's jobs; the default ignores them."""

    def _on_idle(self) -> None:
        """Called on each step when nothing else is due; the default does nothing."""

    def connect(self) -> None:
        self.address = daemon_address()
        self.client = OscUdpClient(*self.address)

    def request(self, address: str, *args: Any, timeout_seconds: Optional[float] = None,
                patience_seconds: Optional[float] = None) -> None:
        """Send one command; its reply comes to `_on_reply`, its error ends the task. With
        `patience_seconds`, it is waited for while the daemon answers pings, up to that long."""
        assert self.client is not None, "connect() first"  # a bug in a subclass, not user input
        self.client.send(address, *args)
        self.waiting_for = address
        now = time.monotonic()
        self.deadline = now + (REPLY_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds)
        self.patience_deadline = None if patience_seconds is None else now + patience_seconds
        self.patience_seconds = patience_seconds or 0.0
        self.next_probe = now + PROBE_SECONDS

    def finish(self, text: str) -> None:
        """Success: say so in the console and stop."""
        say(text)
        self.finished = True
        self._disconnect()

    def fail(self, text: str) -> None:
        """Failure: a message box and a console line, then stop."""
        self.failure = text
        self.finished = True
        self._disconnect()
        alert(text)

    # -- internals ---------------------------------------------------------------------------------

    def _guarded(self, action: Callable[[], None]) -> bool:
        if self.finished:
            return False
        try:
            action()
        except FlowstateError as err:
            self.fail(str(err))
        except DaemonUnreachable as err:
            self.fail(
                "No Flowstate daemon answers at %s:%d (%s). Start it with `flowstate up`, or set its "
                "address with the action 'Flowstate - set daemon address'." % (self.address + (err,))
            )
        except Exception:  # noqa: BLE001 - a bug in these scripts must never escape into REAPER: report it in full
            say("internal error, please report it with this traceback:\n" + traceback.format_exc())
            self.fail("Internal error in the Flowstate script; the ReaScript console shows the details.")
        return not self.finished

    def _poll(self) -> None:
        assert self.client is not None, "start() first"
        for address, args in self.client.receive():
            self.last_heard = time.monotonic()
            self._dispatch(address, args)
            if self.finished:
                return
        now = time.monotonic()
        if self.waiting_for is not None and self.patience_deadline is not None and now >= self.next_probe:
            self.next_probe = now + PROBE_SECONDS
            self.client.send("/flow/ping")
        if self.waiting_for is not None and now > self.deadline:
            if self.patience_deadline is not None and now >= self.patience_deadline:
                raise FlowstateError(
                    "The Flowstate daemon at %s:%d answers, but has not finished %s in %.0f s; it goes on with it "
                    "(`flowstate send stream.status` says when the stream runs)."
                    % (self.address + (self.waiting_for, self.patience_seconds)))
            raise FlowstateError(
                "The Flowstate daemon at %s:%d did not answer %s in time. Is `flowstate up` running, "
                "and is that its OSC UDP port?" % (self.address + (self.waiting_for,))
            )
        self._on_idle()

    def _dispatch(self, address: str, args: List[Any]) -> None:
        if address == "/flow/error":
            failed, code, message = (list(args) + ["", "", ""])[:3]
            raise FlowstateError("The daemon refused %s: %s (%s)" % (failed or "a packet", message, code))
        if self.waiting_for is not None and address == reply_address(self.waiting_for):
            request, self.waiting_for = self.waiting_for, None
            self.patience_deadline = None
            self._on_reply(request, list(args))
        elif address == reply_address("/flow/ping") and self.patience_deadline is not None:
            # The daemon answers while it works on the patient request: it gets its timeout again.
            self.probes_answered += 1
            self.deadline = max(self.deadline, min(time.monotonic() + REPLY_TIMEOUT_SECONDS, self.patience_deadline))
        elif address.startswith("/flow/event/"):
            self._on_event(address[len("/flow/event/") :].replace("/", "."), list(args))

    def _disconnect(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


# -- separate the selected item ---------------------------------------------------------------------


@dataclass(frozen=True)
class SourceItem:
    """What the stems must line up with: the selected item's file, place and trim."""

    path: str
    position: float  # seconds
    length: float  # seconds
    start_offset: float  # seconds into the file where the item starts playing
    playrate: float
    track_number: int  # 1-based, as REAPER numbers tracks
    loop_source: float = 0.0  # B_LOOPSRC: the item repeats its source past the source's end

    @property
    def name(self) -> str:
        return self.path.replace("\\", "/").rsplit("/", 1)[-1]


def selected_source_item() -> SourceItem:
    """The first selected media item's audio file and placement; FlowstateError if there is none."""
    count = rpr.RPR_CountSelectedMediaItems(0)
    if count < 1:
        raise FlowstateError("Select a media item first: Flowstate separates the selected item into stems.")
    if count > 1:
        say("%d items are selected; separating the first one" % count)
    item = rpr.RPR_GetSelectedMediaItem(0, 0)
    take = rpr.RPR_GetActiveTake(item)
    if is_null(take):
        raise FlowstateError("The selected item is empty (it has no take), so there is no audio to separate.")
    if rpr.RPR_TakeIsMIDI(take):
        raise FlowstateError("The selected item is MIDI; Flowstate separates audio items only.")
    source, section_offset, section_length = file_source(rpr.RPR_GetMediaItemTake_Source(take))
    _, path, _ = rpr.RPR_GetMediaSourceFileName(source, "", SOURCE_NAME_BUFFER)
    if not path:
        raise FlowstateError(
            "The selected item's take has no audio file behind it. Glue or render it to a file "
            "(Item: Glue items) and try again."
        )
    track = rpr.RPR_GetMediaItem_Track(item)
    position = rpr.RPR_GetMediaItemInfo_Value(item, "D_POSITION")
    length = rpr.RPR_GetMediaItemInfo_Value(item, "D_LENGTH")
    start = rpr.RPR_GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
    playrate = rpr.RPR_GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
    loop_source = rpr.RPR_GetMediaItemInfo_Value(item, "B_LOOPSRC")
    if section_length is not None and (start < -1e-6 or start + length * playrate > section_length + 1e-6):
        # Outside its section the item plays the section again (Loop source) or silence, where
        # stems of the file would play the file before or after the section.
        if loop_source:
            raise FlowstateError(
                "The selected item loops a section of its file, and stems of the file would not loop that "
                "section. Glue it (Item: Glue items) to make a file that sounds as the item does, and try again."
            )
        if start < 0:  # the stems start where the section does
            position, length, start = position - start / playrate, length + start / playrate, 0.0
        length = min(length, (section_length - start) / playrate)  # and end where it ends
        if length <= 1e-6:
            raise FlowstateError("The selected item plays none of the section of its file it is set to: "
                                 "there is nothing in it to separate.")
    return SourceItem(
        path=path,
        position=position,
        length=length,
        start_offset=section_offset + start,
        playrate=playrate,
        track_number=int(rpr.RPR_GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER")),
        loop_source=loop_source,
    )


def file_source(source: str) -> Tuple[str, float, Optional[float]]:
    """The source with the file behind a take's, where in that file the take's own starts, and the
    length of the take's own where it is a section (None: the whole file).

    A take set to play a section of its file (Item properties: Section) or the file reversed plays
    a SECTION source, which has no file name of its own: its parent has (GetMediaSourceParent), at
    the section's offset (PCM_Source_GetSectionInfo). Reversed, the stems would play forward against
    it: that is refused, saying how to make a file that plays as the item does.
    """
    offset = 0.0
    length: Optional[float] = None
    parent = rpr.RPR_GetMediaSourceParent(source)
    while not is_null(parent):
        found, _, section_offset, section_length, reverse = rpr.RPR_PCM_Source_GetSectionInfo(source, 0.0, 0.0, 0)
        if found and reverse:
            raise FlowstateError(
                "The selected item plays its file reversed, and stems of the file would play forward. Glue it "
                "(Item: Glue items) to make a file that sounds as the item does, or turn Reverse off, and try again."
            )
        if found:
            offset += section_offset
            if length is None:
                length = section_length  # the take's own section: what it plays, and loops
        source = parent
        parent = rpr.RPR_GetMediaSourceParent(source)
    return source, offset, length


def same_file(a: str, b: str) -> bool:
    """Whether two spellings name one file (REAPER may keep the path as given, or normalised)."""
    return os.path.normcase(os.path.normpath(a)) == os.path.normcase(os.path.normpath(b))


def item_with_file(track: str, path: str) -> Optional[str]:
    """The item on `track` whose active take plays `path`, or None."""
    for index in range(rpr.RPR_CountTrackMediaItems(track)):
        item = rpr.RPR_GetTrackMediaItem(track, index)
        take = rpr.RPR_GetActiveTake(item)
        if is_null(take):
            continue
        _, name, _ = rpr.RPR_GetMediaSourceFileName(rpr.RPR_GetMediaItemTake_Source(take), "", SOURCE_NAME_BUFFER)
        if name and same_file(name, path):
            return item
    return None


def insert_media_on(track: str, path: str) -> Optional[str]:
    """InsertMedia(path, 0) on `track` (already the last touched track, the edit cursor placed);
    the item that landed there with `path` as its source, or None when REAPER imported nothing.
    InsertMedia's return value is undocumented in REAPER's API, so only the item counts."""
    rpr.RPR_InsertMedia(path, 0)
    return item_with_file(track, path)


def insert_stems(source: SourceItem, paths: Dict[str, str]) -> Dict[str, str]:
    """One new track per stem, named after it, below the source's track; each stem's item takes
    the source item's position, length, trim and rate. One undo point; the edit cursor is put
    back. Returns {stem: problem} for stems REAPER could not import, empty when all went in."""
    problems: Dict[str, str] = {}
    cursor = rpr.RPR_GetCursorPosition()
    rpr.RPR_Undo_BeginBlock()
    rpr.RPR_PreventUIRefresh(1)
    try:
        index = source.track_number  # 0-based index of the slot just below the source's track
        for stem, path in paths.items():
            rpr.RPR_InsertTrackAtIndex(index, True)
            track = rpr.RPR_GetTrack(0, index)
            rpr.RPR_GetSetMediaTrackInfo_String(track, "P_NAME", stem, True)
            rpr.RPR_SetOnlyTrackSelected(track)
            rpr.RPR_Main_OnCommand(ACTION_SELECTED_TRACK_AS_LAST_TOUCHED, 0)
            rpr.RPR_SetEditCurPos(source.position, False, False)
            item = insert_media_on(track, path)
            if item is None:
                problems[stem] = "REAPER could not import %s" % path
            else:
                _line_up(item, source)
            index += 1
    finally:
        rpr.RPR_SetEditCurPos(cursor, False, False)
        rpr.RPR_PreventUIRefresh(-1)
        rpr.RPR_TrackList_AdjustWindows(False)
        rpr.RPR_UpdateArrange()
        rpr.RPR_Undo_EndBlock("Flowstate: stems of %s" % source.name, UNDO_STATE_ALL)
    return problems


def _line_up(item: str, source: SourceItem) -> None:
    """The stem is the whole source file separated: trim and loop it as the source item is."""
    rpr.RPR_SetMediaItemInfo_Value(item, "D_POSITION", source.position)
    rpr.RPR_SetMediaItemInfo_Value(item, "D_LENGTH", source.length)
    # Looped or not as the source item is, whatever the user's default for new items: a looped
    # drum item's stems repeat with it, and an item's silence past its file's end stays silence.
    rpr.RPR_SetMediaItemInfo_Value(item, "B_LOOPSRC", source.loop_source)
    take = rpr.RPR_GetActiveTake(item)
    if not is_null(take):
        rpr.RPR_SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", source.start_offset)
        rpr.RPR_SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", source.playrate)


class JobTask(Task):
    """A task that starts one daemon job and waits for it from the defer loop: progress in the
    console, its events (also those that beat the reply), `job.status` after a silence, and a
    cancel when the user stops the script. Subclasses set `job_request`, `verb` and `noun`, and
    implement `_begin`, `_name` and `_job_done`."""

    job_request = ""  # the OSC address whose reply carries the job id
    verb = ""  # "Separating": how failures start
    noun = ""  # "separation": how a cancel is told

    def __init__(self) -> None:
        super().__init__()
        self.job_id: Optional[str] = None
        self._early: List[Tuple[str, List[Any]]] = []  # job events that beat the reply
        self._reported_tenth = -1

    # -- for subclasses ----------------------------------------------------------------------------

    def _name(self) -> str:
        """What the job works on, for the console and messages."""
        raise NotImplementedError

    def _job_done(self, result: Dict[str, Any]) -> None:
        """The job's result is in: put it into the project, then `finish` or `fail`."""
        raise NotImplementedError

    def _on_other_reply(self, request: str, args: List[Any]) -> None:
        """Replies to requests other than `job_request` and `job.status`; none by default."""

    def _progress_line(self, percent: int) -> str:
        return "%s: %d %%" % (self._name(), percent)

    # -- the job's life ----------------------------------------------------------------------------

    def _on_reply(self, request: str, args: List[Any]) -> None:
        if request == self.job_request:
            self.job_id, state = str(args[0]), str(args[1])
            say("job %s %s" % (self.job_id, state))
            early, self._early = self._early, []
            for name, event_args in early:
                self._on_event(name, event_args)
        elif request == "/flow/job/status":
            self._on_job_status(json.loads(args[0]))
        else:
            self._on_other_reply(request, args)

    def _on_event(self, name: str, args: List[Any]) -> None:
        if not name.startswith("job."):
            return
        if self.job_id is None:
            self._early.append((name, args))
            return
        if not args or str(args[0]) != self.job_id:
            return
        if name == "job.progress":
            self._report_progress(float(args[1]))
        elif name == "job.done":
            self._job_done(json.loads(args[1]))
        elif name == "job.failed":
            raise FlowstateError("%s %s failed: %s (%s)" % (self.verb, self._name(), args[2], args[1]))
        elif name == "job.canceled":
            raise FlowstateError("The %s of %s was canceled." % (self.noun, self._name()))

    def _on_idle(self) -> None:
        # Events travel over UDP: after a silence, ask for the job's state instead of trusting them.
        if self.job_id is not None and self.waiting_for is None:
            if time.monotonic() - self.last_heard > CHECK_JOB_AFTER_SECONDS:
                self.last_heard = time.monotonic()
                self.request("/flow/job/status", self.job_id)

    def _on_job_status(self, job: Dict[str, Any]) -> None:
        state = job.get("state")
        if state == "done":
            self._job_done(job["result"])
        elif state == "failed":
            error = job.get("error") or {}
            raise FlowstateError(
                "%s %s failed: %s (%s)" % (self.verb, self._name(), error.get("message"), error.get("code")))
        elif state == "canceled":
            raise FlowstateError("The %s of %s was canceled." % (self.noun, self._name()))
        else:
            self._report_progress(float(job.get("progress") or 0.0))

    def _report_progress(self, fraction: float) -> None:
        tenth = int(fraction * 10)  # a line per 10 %: the console is for people
        if tenth > self._reported_tenth:
            self._reported_tenth = tenth
            say(self._progress_line(int(fraction * 100)))

    def close(self) -> None:
        """The user stopped the script (or REAPER quits) mid-job: cancel the job, then disconnect."""
        if not self.finished and self.job_id is not None and self.client is not None:
            try:
                self.client.send("/flow/job/cancel", self.job_id)
                say("stopped waiting; asked the daemon to cancel job %s" % self.job_id)
            except DaemonUnreachable as err:
                say("stopped waiting; could not cancel job %s: %s" % (self.job_id, err))
        super().close()


class SeparateSelectedItem(JobTask):
    """stems.separate on the selected item's file, progress in the console, stems as new tracks."""

    job_request = "/flow/stems/separate"
    verb = "Separating"
    noun = "separation"

    def __init__(self) -> None:
        super().__init__()
        self.source: Optional[SourceItem] = None
        self.inserted: Dict[str, str] = {}

    def _begin(self) -> None:
        self.source = selected_source_item()
        self.connect()
        self.request(self.job_request, self.source.path)
        say("separating %s ..." % self.source.path)

    def _job_done(self, result: Dict[str, Any]) -> None:
        assert self.source is not None
        paths = result.get("paths") or {}
        if not paths:
            raise FlowstateError("The daemon finished %s but returned no stems." % self._name())
        problems = insert_stems(self.source, paths)
        self.inserted = {stem: path for stem, path in paths.items() if stem not in problems}
        if problems:
            self.fail("Some stems could not be imported:\n" + "\n".join(
                "%s: %s" % (stem, problem) for stem, problem in problems.items()))
            return
        self.finish("%d stems of %s are on new tracks at %.3f s: %s" % (
            len(paths), self._name(), self.source.position, ", ".join(paths)))

    def _name(self) -> str:
        return self.source.name if self.source is not None else "the item"


# -- generate a loop at the edit cursor -------------------------------------------------------------


@dataclass(frozen=True)
class LoopRequest:
    """What to generate (as the user typed it) and where it goes."""

    preset: str
    prompt: str
    bars: float
    position: float  # seconds: the edit cursor when the action ran

    @property
    def label(self) -> str:
        return self.prompt or self.preset or "a loop"


def ask_loop_request() -> Optional[LoopRequest]:
    """Ask for preset, prompt and bars (last answers offered); None when the user cancels."""
    defaults = [rpr.RPR_GetExtState(EXT_SECTION, key) or default for key, default in GENERATE_FIELDS]
    answer = rpr.RPR_GetUserInputs(TITLE + ": generate a loop", len(GENERATE_FIELDS), GENERATE_CAPTIONS,
                                   INPUT_SEPARATOR.join(defaults), 1024)
    if not answer[0]:
        return None
    values = (answer[4].split(INPUT_SEPARATOR) + ["", "", ""])[:3]
    preset, prompt, bars_text = (value.strip() for value in values)
    try:
        bars = float(bars_text)
    except ValueError:
        bars = 0.0
    if not bars > 0:
        raise FlowstateError("Bars %r: expected a number of bars greater than 0, e.g. 4" % bars_text)
    for (key, _), value in zip(GENERATE_FIELDS, (preset, prompt, bars_text)):
        rpr.RPR_SetExtState(EXT_SECTION, key, value, True)
    return LoopRequest(preset=preset, prompt=prompt, bars=bars, position=rpr.RPR_GetCursorPosition())


def musical_state_at(where: float) -> Tuple[float, int, int]:
    """(tempo, numerator, denominator) of the project at `where` seconds."""
    _, _, numerator, denominator, tempo = rpr.RPR_TimeMap_GetTimeSigAtTime(0, where, 0, 0, 0.0)
    return float(tempo), int(numerator), int(denominator)


def insert_loop(path: str, track_name: str, position: float) -> str:
    """A new track named `track_name` below the first selected track (else last) with the file at
    `position` seconds; one undo point; the edit cursor is put back. Returns REAPER's problem, or
    "" when the loop went in (a track for a file REAPER cannot read is removed again)."""
    cursor = rpr.RPR_GetCursorPosition()
    problem = ""
    rpr.RPR_Undo_BeginBlock()
    rpr.RPR_PreventUIRefresh(1)
    try:
        selected = rpr.RPR_GetSelectedTrack(0, 0)
        if is_null(selected):
            index = rpr.RPR_CountTracks(0)
        else:
            index = int(rpr.RPR_GetMediaTrackInfo_Value(selected, "IP_TRACKNUMBER"))  # 1-based: the slot below
        rpr.RPR_InsertTrackAtIndex(index, True)
        track = rpr.RPR_GetTrack(0, index)
        rpr.RPR_GetSetMediaTrackInfo_String(track, "P_NAME", track_name, True)
        rpr.RPR_SetOnlyTrackSelected(track)
        rpr.RPR_Main_OnCommand(ACTION_SELECTED_TRACK_AS_LAST_TOUCHED, 0)
        rpr.RPR_SetEditCurPos(position, False, False)
        if insert_media_on(track, path) is None:
            problem = "REAPER could not import %s" % path
            rpr.RPR_DeleteTrack(track)
    finally:
        rpr.RPR_SetEditCurPos(cursor, False, False)
        rpr.RPR_PreventUIRefresh(-1)
        rpr.RPR_TrackList_AdjustWindows(False)
        rpr.RPR_UpdateArrange()
        rpr.RPR_Undo_EndBlock("Flowstate: generated %s" % track_name, UNDO_STATE_ALL)
    return problem


class GenerateLoop(JobTask):
    """daw.set with the project's tempo and time signature at the edit cursor, then `generate`
    (preset, prompt, bars); the loop goes on a new track at the edit cursor."""

    job_request = "/flow/generate"
    verb = "Generating"
    noun = "generation"

    def __init__(self) -> None:
        super().__init__()
        self.loop: Optional[LoopRequest] = None
        self.result: Dict[str, Any] = {}

    def _begin(self) -> None:
        self.loop = ask_loop_request()
        if self.loop is None:
            self.finished = True  # the user pressed Cancel: nothing to do, nothing to say
            return
        tempo, numerator, denominator = musical_state_at(self.loop.position)
        playing = bool(rpr.RPR_GetPlayState() & 1)
        self.connect()
        # The daemon counts bars at the tempo it was told last: tell it REAPER's, at the cursor.
        self.request("/flow/daw/set", tempo, numerator, denominator, playing)
        say("generating %s: %g bars at %g BPM in %d/%d, for %.3f s ..." % (
            self.loop.label, self.loop.bars, tempo, numerator, denominator, self.loop.position))

    def _on_other_reply(self, request: str, args: List[Any]) -> None:
        if request == "/flow/daw/set":
            assert self.loop is not None
            self.request(self.job_request, self.loop.prompt, self.loop.preset, float(self.loop.bars))

    def _progress_line(self, percent: int) -> str:
        return "generating %s: %d %%" % (self._name(), percent)

    def _job_done(self, result: Dict[str, Any]) -> None:
        assert self.loop is not None
        path = str(result.get("path") or "")
        if not path:
            raise FlowstateError("The daemon finished %s but returned no file." % self._name())
        track_name = str(result.get("track_name") or path.replace("\\", "/").rsplit("/", 1)[-1])
        self.result = result
        problem = insert_loop(path, track_name, self.loop.position)
        if problem:
            self.fail("The generated loop could not be imported: %s" % problem)
            return
        self.finish("%s is on a new track at %.3f s (%.3f s long): %s" % (
            track_name, self.loop.position, float(result.get("seconds") or 0.0), path))

    def _name(self) -> str:
        return self.loop.label if self.loop is not None else "the loop"


# -- one-shot commands ------------------------------------------------------------------------------


class SendTempo(Task):
    """daw.set with the project's tempo, time signature and transport at the play or edit cursor."""

    def _begin(self) -> None:
        playing = bool(rpr.RPR_GetPlayState() & 1)
        where = rpr.RPR_GetPlayPosition() if playing else rpr.RPR_GetCursorPosition()
        tempo = float(rpr.RPR_Master_GetTempo())
        _, _, numerator, denominator, _ = rpr.RPR_TimeMap_GetTimeSigAtTime(0, where, 0, 0, 0.0)
        self.connect()
        self.request("/flow/daw/set", tempo, int(numerator), int(denominator), playing)

    def _on_reply(self, request: str, args: List[Any]) -> None:
        tempo, numerator, denominator, playing = args[:4]
        self.finish("the daemon now has %g BPM, %s/%s, transport %s" % (
            tempo, numerator, denominator, "playing" if playing else "stopped"))


# -- live stems: compensate the round trip on the tracks that record them ---------------------------
#
# The stems come back into REAPER late by the daemon's round trip (`round_trip_frames` of
# stream.status: its latency plus one block). REAPER lets a script set a track's *media playback
# offset* (GetSetMediaTrackInfo: I_PLAY_OFFSET_FLAG &1 bypassed, &2 value in samples, else seconds;
# D_PLAY_OFFSET the value), which moves everything the track plays; a negative offset plays the
# stems recorded there early by exactly the round trip. The recording input offset is REAPER's
# global audio preference (every track, every input), so it is not touched. The offset is set in
# seconds, frames / the daemon's own sample rate: exact whatever rate REAPER's project runs at.
# "Stop live stems" puts each track's offset back and moves the items recorded meanwhile earlier
# by the same amount, so they stay in time without the offset.

# Project extended state (saved with the project) from "start" to "stop": per track GUID, its
# offset flag and value before, the GUIDs of its items then, and the seconds applied.
LIVE_OFFSET_KEY = "live_stems_offset"
PLAY_OFFSET_BYPASSED = 1
PLAY_OFFSET_IN_SAMPLES = 2
PROJECT_STATE_BUFFER = 1 << 20


def track_guid(track: str) -> str:
    return str(rpr.RPR_GetSetMediaTrackInfo_String(track, "GUID", "", False)[3])


def track_label(track: str) -> str:
    name = str(rpr.RPR_GetSetMediaTrackInfo_String(track, "P_NAME", "", False)[3])
    return name or "track %d" % int(rpr.RPR_GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER"))


def track_items(track: str) -> List[str]:
    return [rpr.RPR_GetTrackMediaItem(track, index) for index in range(rpr.RPR_CountTrackMediaItems(track))]


def item_guid(item: str) -> str:
    return str(rpr.RPR_GetSetMediaItemInfo_String(item, "GUID", "", False)[3])


def selected_tracks() -> List[str]:
    return [rpr.RPR_GetSelectedTrack(0, index) for index in range(rpr.RPR_CountSelectedTracks(0))]


def find_track(guid: str) -> Optional[str]:
    for index in range(rpr.RPR_CountTracks(0)):
        track = rpr.RPR_GetTrack(0, index)
        if track_guid(track) == guid:
            return track
    return None


def load_offset_state() -> Dict[str, Any]:
    text = rpr.RPR_GetProjExtState(0, EXT_SECTION, LIVE_OFFSET_KEY, "", PROJECT_STATE_BUFFER)[4]
    if not text:
        return {}
    try:
        state = json.loads(text)
    except ValueError:
        say("ignoring unreadable saved live-stems offsets: %r" % text[:80])
        return {}
    return state if isinstance(state, dict) else {}


def save_offset_state(state: Dict[str, Any]) -> None:
    rpr.RPR_SetProjExtState(0, EXT_SECTION, LIVE_OFFSET_KEY, json.dumps(state) if state else "")


def compensate_round_trip(seconds: float) -> List[Tuple[str, float]]:
    """Set the media playback offset of the selected tracks to -`seconds` (one undo point) and
    remember what they had; returns (track name, offset REAPER now holds) for each."""
    tracks = selected_tracks()
    if not tracks:
        return []
    state = load_offset_state()
    saved = state.setdefault("tracks", {})
    done = []
    rpr.RPR_Undo_BeginBlock()
    try:
        for track in tracks:
            guid = track_guid(track)
            if guid not in saved:  # started again without a stop: keep what the user had
                saved[guid] = {
                    "flag": int(rpr.RPR_GetMediaTrackInfo_Value(track, "I_PLAY_OFFSET_FLAG")),
                    "offset": float(rpr.RPR_GetMediaTrackInfo_Value(track, "D_PLAY_OFFSET")),
                    "items": [item_guid(item) for item in track_items(track)],
                }
            saved[guid]["seconds"] = seconds
            flag = saved[guid]["flag"] & ~(PLAY_OFFSET_BYPASSED | PLAY_OFFSET_IN_SAMPLES)
            rpr.RPR_SetMediaTrackInfo_Value(track, "I_PLAY_OFFSET_FLAG", flag)
            rpr.RPR_SetMediaTrackInfo_Value(track, "D_PLAY_OFFSET", -seconds)
            # Read back: REAPER may hold less than was asked (its offset has a range).
            done.append((track_label(track), float(rpr.RPR_GetMediaTrackInfo_Value(track, "D_PLAY_OFFSET"))))
        save_offset_state(state)
    finally:
        rpr.RPR_Undo_EndBlock("Flowstate: compensate the live stems' round trip", UNDO_STATE_ALL)
    return done


def move_earlier(item: str, seconds: float) -> None:
    """Move `item` `seconds` earlier; what would fall before the project start is trimmed off."""
    position = float(rpr.RPR_GetMediaItemInfo_Value(item, "D_POSITION"))
    cut = max(0.0, seconds - position)
    if cut > 0:
        for index in range(rpr.RPR_CountTakes(item)):
            take = rpr.RPR_GetTake(item, index)
            start = float(rpr.RPR_GetMediaItemTakeInfo_Value(take, "D_STARTOFFS"))
            rate = float(rpr.RPR_GetMediaItemTakeInfo_Value(take, "D_PLAYRATE"))
            rpr.RPR_SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", start + cut * rate)
        length = float(rpr.RPR_GetMediaItemInfo_Value(item, "D_LENGTH"))
        rpr.RPR_SetMediaItemInfo_Value(item, "D_LENGTH", max(0.0, length - cut))
    rpr.RPR_SetMediaItemInfo_Value(item, "D_POSITION", position - seconds + cut)


def restore_play_offsets() -> Tuple[List[str], int]:
    """Undo `compensate_round_trip` (one undo point): each track's offset back as it was, and its
    items recorded since moved earlier by the offset they were played with. Returns the names of
    the tracks restored and the number of items moved."""
    saved = load_offset_state().get("tracks") or {}
    if not saved:
        return [], 0
    names: List[str] = []
    moved = 0
    rpr.RPR_Undo_BeginBlock()
    try:
        for guid, before in saved.items():
            track = find_track(guid)
            if track is None:
                continue  # deleted since: nothing to restore
            known = set(before.get("items") or [])
            for item in [item for item in track_items(track) if item_guid(item) not in known]:
                move_earlier(item, float(before.get("seconds") or 0.0))
                moved += 1
            rpr.RPR_SetMediaTrackInfo_Value(track, "I_PLAY_OFFSET_FLAG", int(before.get("flag") or 0))
            rpr.RPR_SetMediaTrackInfo_Value(track, "D_PLAY_OFFSET", float(before.get("offset") or 0.0))
            names.append(track_label(track))
        save_offset_state({})
    finally:
        rpr.RPR_UpdateArrange()
        rpr.RPR_Undo_EndBlock("Flowstate: live stems stopped, track offsets restored", UNDO_STATE_ALL)
    return names, moved


class StartStream(Task):
    """stream.start with the daemon's configured device and model, then stream.status for the
    exact round trip, which becomes the media playback offset of the selected tracks."""

    def __init__(self) -> None:
        super().__init__()
        self.stems: List[str] = []

    def _begin(self) -> None:
        self.connect()
        self.request("/flow/stream/start", patience_seconds=STREAM_START_PATIENCE_SECONDS)
        say("starting live stems (loading the model can take a while) ...")

    def _on_reply(self, request: str, args: List[Any]) -> None:
        if request == "/flow/stream/start":
            self.stems = list(json.loads(args[2]))
            self.request("/flow/stream/status")
            return
        status = json.loads(args[0])
        if not status.get("running") or not status.get("round_trip_frames"):
            raise FlowstateError("Live stems stopped right after starting; `flowstate status` says why.")
        frames, sample_rate = int(status["round_trip_frames"]), int(status["sample_rate"])
        seconds = frames / float(sample_rate)
        figure = "Round trip %d frames at %d Hz (%.3f ms)" % (frames, sample_rate, 1000.0 * seconds)
        if status.get("device"):  # where to route the send and take the stems from
            played = status.get("output_device") or status["device"]
            where = "On %s, in %s, out %s" % (status["device"], status.get("inputs"), status.get("outputs"))
            if played != status["device"]:
                where = "In %s on %s, out %s on %s" % (status.get("inputs"), status["device"],
                                                      status.get("outputs"), played)
            figure = "%s. %s" % (where, figure)
        done = compensate_round_trip(seconds)
        if not done:
            self.finish(
                "live stems running (%s). %s: select the tracks that record the stems before starting, "
                "and this action sets their media playback offset to -%.3f ms (or type it in: track "
                "routing, Media playback offset)." % (", ".join(self.stems), figure, 1000.0 * seconds))
            return
        short = [name for name, held in done if abs(held + seconds) > 1e-9]
        self.finish(
            "live stems running (%s). %s: media playback offset -%.3f ms on %s, so what they record "
            "plays in time; 'Flowstate - stop live stems' puts it back.%s" % (
                ", ".join(self.stems), figure, 1000.0 * seconds, ", ".join(name for name, _ in done),
                " REAPER kept less on %s: compensate the rest by hand." % ", ".join(short) if short else ""))


class StopStream(Task):
    """stream.stop (the daemon keeps the model loaded for a quick restart); the tracks that
    "start live stems" offset get their own offset back, their new recordings moved in time."""

    def __init__(self) -> None:
        super().__init__()
        self.restored: List[str] = []
        self.moved = 0

    def _begin(self) -> None:
        self.restored, self.moved = restore_play_offsets()  # REAPER's side first: it cannot fail
        self.connect()
        self.request("/flow/stream/stop", patience_seconds=STREAM_STOP_PATIENCE_SECONDS)

    def _on_reply(self, request: str, args: List[Any]) -> None:
        # running, then null or why no stream can open until the daemon restarts, then null or the
        # start this stop cancelled (still loading its model or opening the device; an older daemon
        # sends neither)
        lost = args[1] if len(args) > 1 else None
        cancelled = args[2] if len(args) > 2 else None
        text = "live stems start cancelled: %s" % cancelled if cancelled else "live stems are stopped"
        text += ", but %s" % lost if lost else ""
        if self.restored:
            text += ("; media playback offset restored on %s (%d item%s recorded meanwhile moved earlier by "
                     "the round trip, so %s in time)") % (
                        ", ".join(self.restored), self.moved, "" if self.moved == 1 else "s",
                        "it stays" if self.moved == 1 else "they stay")
        self.finish(text)


class SetDaemonAddress(Task):
    """Ask for host:port, keep it in REAPER's extended state, then ping the daemon there."""

    def _begin(self) -> None:
        current = rpr.RPR_GetExtState(EXT_SECTION, EXT_ADDRESS_KEY) or DEFAULT_ADDRESS
        answer = rpr.RPR_GetUserInputs(TITLE, 1, "Daemon OSC address (host:port)", current, 256)
        if not answer[0]:
            self.finished = True  # the user pressed Cancel: nothing to do, nothing to say
            return
        text = answer[4].strip()
        parse_address(text)  # refuse a bad value before saving it
        rpr.RPR_SetExtState(EXT_SECTION, EXT_ADDRESS_KEY, text, True)
        say("daemon address set to %s" % text)
        self.connect()
        self.request("/flow/ping")

    def _on_reply(self, request: str, args: List[Any]) -> None:
        version = args[1] if len(args) > 1 else "?"
        self.finish("Flowstate %s answers at %s:%d" % ((version,) + self.address))
