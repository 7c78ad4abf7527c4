"""Run by Python 3.7, as Live 11 and 12.0 embed it: the script's real code in a simulated old Live.

`tests/ableton/py37.py` starts this file with a Python 3.7 interpreter; it must itself run there
(standard library, `live_sim` and `ableton_remote` only). Its one argument is a JSON object:

    {"version": "11.3.25", "port": <the daemon's OSC UDP port>,
     "clip": {"view": "arrangement" | "session", "file": <path>, "start": <beats>, "scene": <row>},
     "tracks": ["Guitar"], "view": "session" | "arrangement", "press": <note> | null,
     "until": [<status-bar text>, ...], "timeout": <seconds>}

It loads the script the way Live does (`create_instance`), ticks Live's timer until the script has
registered with the daemon, prints `ready`, presses `press` on MIDI channel 16 (as Live forwards a
pad), ticks until the status bar shows one of `until`, then prints one JSON line: the status bar,
Log.txt and the set's tracks with their clips. Nothing here is a test: the caller asserts.
"""

import json
import sys
import time


def main() -> int:
    request = json.loads(sys.argv[1])
    from tests.ableton import live_sim

    sys.modules["Live"] = live_sim.live_module()  # before the script imports it, as inside Live
    import ableton_remote
    from ableton_remote import surface as surface_module

    surface_module.DAEMON_PORT = int(request["port"])
    live = live_sim.LiveSet(request["version"])
    for name in request.get("tracks", []):
        live.add_audio_track(name)
    clip = request.get("clip")
    if clip:
        track = live.song.tracks[0]
        if clip["view"] == "arrangement":
            live.select_arrangement_clip(track.add_arrangement_clip(clip["file"], start_time=float(clip["start"])))
        else:
            track.add_session_clip(int(clip["scene"]), clip["file"])
            live.select_session_slot(track.clip_slots[int(clip["scene"])])
    elif request.get("view") == "session":
        live.select_scene(0)
    elif request.get("view") == "arrangement":
        live.show_arrangement(song_time=0.0)
    c_instance = live.c_instance
    surface = ableton_remote.create_instance(c_instance)
    deadline = time.monotonic() + float(request.get("timeout", 60))

    def tick_until(done) -> bool:
        while not done():
            if time.monotonic() > deadline:
                return False
            surface.update_display()
            time.sleep(0.01)  # Live's timer runs about every 100 ms; faster here
        return True

    registered = tick_until(lambda: any(" is Flowstate " in line for line in c_instance.log))  # the handshake
    print("ready" if registered else "not-registered", flush=True)
    if registered and request.get("press") is not None:
        surface.receive_midi((0x9F, int(request["press"]), 100))  # note on, MIDI channel 16
    until = request.get("until", [])
    found = registered and tick_until(lambda: any(text in m for text in until for m in c_instance.messages))
    for _ in range(5):  # what arrived with the last packet (the second copy of each event)
        surface.update_display()
    surface.disconnect()
    tracks = [
        {
            "name": track.name,
            "arrangement": [[clip.file_path, clip.start_time] for clip in track.arrangement_clips],
            "slots": [slot.clip.file_path if slot.has_clip else None for slot in track.clip_slots],
        }
        for track in live.song.tracks
    ]
    result = {"found": found, "python": list(sys.version_info[:3]), "messages": c_instance.messages,
              "log": c_instance.log, "tracks": tracks}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
