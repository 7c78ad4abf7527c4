"""The value types the config's sections share, each checked when a section is built: bind
addresses, host names, ports, and the separation models a file job or a live stream may name
(`bridge/config_sections.py` declares the sections with them; `bridge/config.py` builds the whole).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from bridge.errors import BadRequest
from engines import openunmix, spleeter
from engines.openunmix import is_openunmix


def check_host(value: str) -> str:
    """Bind addresses: loopback by default; 0.0.0.0 or a LAN address is the user's opt-in."""
    if value == "localhost":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError as err:
        raise ValueError("an IP address such as 127.0.0.1 (loopback) or 0.0.0.0 (all)") from err
    return value


def split_commas(value: Any) -> Any:
    """A list may come as one comma-separated string (how an environment variable carries it)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_HOST_NAME = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?)$")


def _check_host_name(value: str) -> str:
    """A DNS name a server is reached by (lower-cased), `*.` plus a name for its subdomains, or `*`."""
    name = value.strip().lower()
    if len(name) > 253 or not _HOST_NAME.match(name):
        raise ValueError("a host name such as my-app.fly.dev, *.example.net for its subdomains, or * for any")
    return name


HostName = Annotated[str, AfterValidator(_check_host_name)]
Port = Annotated[int, Field(ge=0, le=65535)]
Host = Annotated[str, AfterValidator(check_host)]


def _check_separation_model(name: str) -> str:
    """Any HTDemucs name passes (demucs decides when it loads); a Spleeter or Open-Unmix name must
    be one we run."""
    family = next((m for m in (spleeter, openunmix) if getattr(m, f"is_{m.FAMILY}")(name)), None)
    if family is not None:
        try:
            family.check_name(name)
        except BadRequest as err:
            raise ValueError(err.message) from None
    return name


def _check_stream_model(name: str) -> str:
    """A separation model that also streams: Open-Unmix runs on files only."""
    if is_openunmix(name):
        raise ValueError(f"{name!r} separates files only (separate.model); expected an HTDemucs model "
                         "or spleeter:2stems")
    return _check_separation_model(name)


# An HTDemucs model or bag (htdemucs, htdemucs_ft, htdemucs_6s, a name in models.demucs_repo),
# spleeter:2stems, or (files only) openunmix:umxl / openunmix:umxhq.
SeparationModel = Annotated[str, AfterValidator(_check_separation_model)]
StreamModel = Annotated[str, AfterValidator(_check_stream_model)]

