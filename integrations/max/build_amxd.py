"""Build `Flowstate.amxd`, the Max for Live device, from `flowstate.maxpat` (standard library only).

An `.amxd` is a little-endian chunked container: each chunk is a 4-byte ASCII tag, a 4-byte
little-endian length and that many bytes. An unfrozen, unencrypted device saved by Max has three:

    ampf  4 bytes: the device type, `aaaa` audio effect, `mmmm` MIDI effect, `iiii` instrument
    meta  4 bytes: zero in the audio effects Ableton publishes
    ptch  the patcher as UTF-8 JSON text, ending in a NUL byte

That is the layout Ableton's own reader (maxdevtools, `amxd_textconv.py`) walks, and what Max
writes: Ableton's published `CPU Reporter.amxd` starts `ampf 4 aaaa meta 4 0 ptch <n>`. A frozen
device's `ptch` starts `mx@c` instead, and an encrypted one has a `ciph` chunk; this script writes
neither and `read_patcher` refuses both.

    python integrations/max/build_amxd.py            # writes integrations/max/Flowstate.amxd
    python integrations/max/build_amxd.py --check    # exit 1 if the committed .amxd is stale
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "flowstate.maxpat"
DEVICE = HERE / "Flowstate.amxd"

DEVICE_TYPES = {"audio_effect": b"aaaa", "midi_effect": b"mmmm", "instrument": b"iiii"}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data


def build(patcher_text: str, device_type: str = "audio_effect") -> bytes:
    """The `.amxd` bytes for a patcher given as `.maxpat` JSON text (embedded unchanged)."""
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device_type {device_type!r}: expected one of {sorted(DEVICE_TYPES)}")
    json.loads(patcher_text)  # a patcher Max cannot parse must not become a device
    return (
        _chunk(b"ampf", DEVICE_TYPES[device_type])
        + _chunk(b"meta", b"\0\0\0\0")
        + _chunk(b"ptch", patcher_text.encode("utf-8") + b"\0")
    )


def chunks(data: bytes) -> list[tuple[str, bytes]]:
    """The (tag, payload) chunks of an `.amxd`, in order; ValueError if the container is cut short."""
    out: list[tuple[str, bytes]] = []
    offset = 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise ValueError(f"chunk header at byte {offset} is cut short ({len(data) - offset} bytes left)")
        tag = data[offset:offset + 4].decode("ascii")
        (size,) = struct.unpack("<I", data[offset + 4:offset + 8])
        payload = data[offset + 8:offset + 8 + size]
        if len(payload) != size:
            raise ValueError(f"chunk {tag!r} at byte {offset} declares {size} bytes, has {len(payload)}")
        out.append((tag, payload))
        offset += 8 + size
    return out


def read_patcher(data: bytes) -> tuple[str, dict[str, Any]]:
    """(device type, the patcher document) from `.amxd` bytes; ValueError for anything else."""
    found = chunks(data)
    tags = [tag for tag, _ in found]
    if tags[:1] != ["ampf"]:
        raise ValueError(f"not a Max for Live device: first chunk {tags[:1]}, expected ['ampf']")
    if "ciph" in tags:
        raise ValueError("the device is encrypted (ciph chunk)")
    kinds = {code: name for name, code in DEVICE_TYPES.items()}
    device_type = kinds.get(found[0][1])
    if device_type is None:
        raise ValueError(f"device type {found[0][1]!r}: expected one of {sorted(kinds)}")
    patches = [payload for tag, payload in found if tag == "ptch"]
    if len(patches) != 1:
        raise ValueError(f"expected one ptch chunk, found {len(patches)}")
    patch = patches[0]
    if patch.startswith(b"mx@c"):
        raise ValueError("the device is frozen (mx@c): its patcher is not plain JSON")
    return device_type, json.loads(patch.rstrip(b"\0").decode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed device is not a fresh build")
    args = parser.parse_args(argv)
    built = build(SOURCE.read_bytes().decode("utf-8"))
    if args.check:
        if not DEVICE.exists() or DEVICE.read_bytes() != built:
            print(f"{DEVICE.name} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    DEVICE.write_bytes(built)
    print(f"wrote {DEVICE} ({len(built)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
