"""Models named by their hub name: what is on this machine first.

`transformers` and `diffusers` ask the hub whether a cached model is still current before they read
it, and offline their HTTP client retries each file it asks about (1, 2, 4, 8 and 8 s) before it
falls back to the cache: a cached AST took 23.2 s to load on a machine without a network, 3.1 s
(transformers' import included) from the cache alone. So a hub name is loaded from the cache alone
first, and only what the cache lacks goes to the network (a download when online). A cached model
is used as it is; a newer revision on the hub is not looked for (delete the cache's copy while
online to update).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def cached_first(load: Callable[[bool], T], name: str) -> T:
    """`load(local_files_only)`: first with True (the hub's cache, or a folder, alone: no network);
    when a file is not there (OSError: transformers' and diffusers' word for it, huggingface_hub's
    LocalEntryNotFoundError among them), with False, which downloads what is missing when online and
    raises what the network says when not. Anything else (a corrupt file, a config this library
    cannot build) is the model's own error, raised as it is."""
    try:
        return load(True)
    except OSError as err:
        log.info("%s: not all on this machine (%s); asking the hub", name, str(err).strip().splitlines()[0][:200]
                 if str(err).strip() else type(err).__name__)
    return load(False)
