"""The simulated `reaper_python` keeps the conventions of REAPER's generated one (see reaper_sim's
docstring for the source): c_byte results as 0/1, tuples for out-parameters, NULL for a pointer
that `rpr_packp` would refuse. The ReaScript tests are only as good as these."""

from __future__ import annotations

from pathlib import Path

import soundfile

from tests.integrations.reaper_sim import Reaper


def test_bool_results_are_ints_and_buffers_come_back_in_tuples(tmp_path: Path) -> None:
    sim = Reaper(tmp_path)
    track = sim.add_track("Keys")
    sim.add_item(track, str(tmp_path / "a.wav"), 0.0, 1.0, midi=True)
    api = sim.module
    item = api.RPR_GetSelectedMediaItem(0, 0)
    take = api.RPR_GetActiveTake(item)
    assert api.RPR_TakeIsMIDI(take) == 1 and type(api.RPR_TakeIsMIDI(take)) is int
    assert api.RPR_SetMediaItemInfo_Value(item, "D_LENGTH", 2.0) == 1
    source = api.RPR_GetMediaItemTake_Source(take)
    assert api.RPR_GetMediaSourceFileName(source, "", 4096) == (source, str(tmp_path / "a.wav"), 4096)
    pointer = api.RPR_GetTrack(0, 0)
    assert api.RPR_GetSetMediaTrackInfo_String(pointer, "P_NAME", "", False) == (1, pointer, "P_NAME", "Keys", False)
    sim.user_answers = [(False, "")]
    assert api.RPR_GetUserInputs("T", 1, "Bars", "4", 64) == (0, "T", 1, "Bars", "4", 64)


def test_a_pointer_rpr_packp_refuses_becomes_null(tmp_path: Path) -> None:
    sim = Reaper(tmp_path)
    api = sim.module
    sim.add_item(sim.add_track("Mix"), str(tmp_path / "a.wav"), 0.0, 1.0)
    track = api.RPR_GetTrack(0, 0)
    item = api.RPR_GetTrackMediaItem(track, 0)
    assert api.RPR_CountTrackMediaItems(item) == 0  # an item where a track is expected
    assert api.RPR_GetMediaTrackInfo_Value(track.lower(), "IP_TRACKNUMBER") == 0.0  # rpr_packp: upper-case hex
    api.RPR_DeleteTrack(track)
    assert api.RPR_GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER") == 0.0  # ValidatePtr: gone
    assert api.RPR_GetActiveTake(item) == "(MediaItem_Take*)0x0000000000000000"  # its items too
    assert [call for call, _ in sim.null_pointer_calls] == [
        "RPR_CountTrackMediaItems", "RPR_GetMediaTrackInfo_Value", "RPR_GetMediaTrackInfo_Value", "RPR_GetActiveTake"]


def test_insertmedia_returns_what_a_test_chooses_and_the_item_lands_regardless(tmp_path: Path) -> None:
    sim = Reaper(tmp_path)
    api = sim.module
    wav = tmp_path / "loop.wav"
    soundfile.write(str(wav), [[0.0]] * 4410, 44100)
    sim.add_track("Loop").selected = True
    api.RPR_Main_OnCommand(40914, 0)  # first selected track -> last touched
    sim.insert_media_result = 0
    assert api.RPR_InsertMedia(str(wav), 0) == 0
    assert api.RPR_CountTrackMediaItems(api.RPR_GetTrack(0, 0)) == 1
    assert sim.cursor == 0.1  # the edit cursor moves to the end of what was inserted
