"""Typed configuration, built once: defaults < config.yaml (or --config PATH) < FLOWSTATE_* env.

This is the only module that reads the environment, and the facade of the config's types (the
sections are declared in `bridge/config_sections.py`). Everything else receives a `Config` (or a
section of it) in its constructor. An unknown key or a bad value raises `ConfigError` with the key
path, the value and what was expected; the CLI turns that into exit code 2.

Environment overrides name the key path with underscores, upper-cased:
`FLOWSTATE_OSC_UDP_PORT=9020` sets `osc.udp_port`. The cloud providers' usual variables
(`REPLICATE_API_TOKEN`, `HF_TOKEN`, `CLOUDFLARE_API_TOKEN`, `CLOUDFLARE_ACCOUNT_ID`) and
`FLOWSTATE_SERVER_TOKEN` are read too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from bridge.config_fields import Host, HostName, Port, SeparationModel, StreamModel
from bridge.config_sections import (
    DEFAULT_ROOTS,
    SECRET_KEYS,
    ClassifyConfig,
    CloudConfig,
    Config,
    DaemonConfig,
    DawConfig,
    EffectsConfig,
    EffectSpec,
    GenerateConfig,
    GeneratePreset,
    JobsConfig,
    McpConfig,
    MidiConfig,
    MidiMapping,
    ModelsConfig,
    OscConfig,
    PathsConfig,
    ProjectConfig,
    RayDeploymentConfig,
    RayServerConfig,
    RouterConfig,
    SamplesConfig,
    Section,
    SeparateConfig,
    ServerConfig,
    StreamConfig,
    TranscribeConfig,
    TtsConfig,
    ZmqConfig,
)
from bridge.errors import ConfigError

# The facade: every module takes its config types from here (the sections are declared in
# bridge/config_sections.py, the value types they share in bridge/config_fields.py).
__all__ = [
    "CONFIG_ENV", "DEFAULT_ROOTS", "ENV_ALIASES", "ENV_PREFIX", "SECRET_KEYS",
    "ClassifyConfig", "CloudConfig", "Config", "ConfigError", "DaemonConfig", "DawConfig", "EffectSpec",
    "EffectsConfig", "GenerateConfig", "GeneratePreset", "Host", "HostName", "JobsConfig", "McpConfig",
    "MidiConfig", "MidiMapping", "ModelsConfig", "OscConfig", "PathsConfig", "PlatformFolders", "Port",
    "ProjectConfig", "RayDeploymentConfig", "RayServerConfig", "RouterConfig", "SamplesConfig", "Section",
    "SeparateConfig", "SeparationModel", "ServerConfig", "StreamConfig", "StreamModel", "TranscribeConfig",
    "TtsConfig", "ZmqConfig", "default_config_path", "default_roots", "load_config", "platform_folders",
    "user_data_dir",
]

ENV_PREFIX = "FLOWSTATE_"
CONFIG_ENV = "FLOWSTATE_CONFIG"

# Provider variables people already have set, mapped onto config keys.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "REPLICATE_API_TOKEN": ("cloud", "replicate_token"),
    "HF_TOKEN": ("cloud", "huggingface_token"),
    "CLOUDFLARE_API_TOKEN": ("cloud", "workers_ai_token"),
    "CLOUDFLARE_ACCOUNT_ID": ("cloud", "workers_ai_account_id"),
    "FLOWSTATE_SERVER_TOKEN": ("cloud", "server_token"),
    "FLY_MACHINE_ID": ("server", "instance_id"),
}


@dataclass(frozen=True)
class PlatformFolders:
    """The per-user folders of one OS, as the daemon and `flowstate install-service` use them."""

    platform: str  # sys.platform's spelling: linux, darwin, win32
    home: Path
    config_dir: Path  # config.yaml is looked for here
    data_dir: Path  # the job database, the server's files, downloaded voices
    log_dir: Path  # the log of a daemon started at login (Linux: the journal instead)
    autostart_dir: Path  # launchd agents, systemd user units, or the Startup folder


def platform_folders(env: Mapping[str, str] | None = None, platform: str | None = None) -> PlatformFolders:
    """The folders of `platform` (default: this one) for the user `env` describes (HOME, APPDATA ...).

    macOS: ~/Library/Application Support/Flowstate, logs in ~/Library/Logs/Flowstate, agents in
    ~/Library/LaunchAgents. Windows: settings in %APPDATA%\\Flowstate (they roam with the profile),
    data and logs in %LOCALAPPDATA%\\Flowstate (they do not), the Startup folder under %APPDATA%.
    Linux and the rest: the XDG base directories.
    """
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform == "win32":
        home = Path(env.get("USERPROFILE") or Path.home())
        roaming = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        startup = roaming / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"
        return PlatformFolders(platform, home, roaming / "Flowstate", local / "Flowstate", local / "Flowstate" / "logs",
                               startup)
    home = Path(env.get("HOME") or Path.home())
    if platform == "darwin":
        support = home / "Library" / "Application Support" / "Flowstate"
        return PlatformFolders(platform, home, support, support, home / "Library" / "Logs" / "Flowstate",
                               home / "Library" / "LaunchAgents")
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    data_home = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    state_home = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state")
    return PlatformFolders(platform, home, config_home / "flowstate", data_home / "flowstate", state_home / "flowstate",
                           config_home / "systemd" / "user")


def user_data_dir(env: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """Where the job database lives: the platform's per-user data folder."""
    return platform_folders(env, platform).data_dir


# XDG user-dirs keys of the folders file jobs may use by default, and their usual names.
_USER_DIRS = (("XDG_MUSIC_DIR", "Music"), ("XDG_DOCUMENTS_DIR", "Documents"), ("XDG_DESKTOP_DIR", "Desktop"),
              ("XDG_DOWNLOAD_DIR", "Downloads"))


def default_roots(env: Mapping[str, str] | None = None, platform: str | None = None) -> list[Path]:
    """The user's Music, Documents, Desktop and Downloads folders: `paths.roots` when unset.

    macOS and Windows keep them in the home folder (~/Music is where Live's User Library lives on
    a Mac, ~/Documents/Ableton on Windows). On Linux they are what `xdg-user-dirs` recorded in
    ~/.config/user-dirs.dirs (localised names such as ~/Musik), else the English names; a folder
    set to the home folder itself (xdg's way of turning one off) is left out.
    """
    folders = platform_folders(env, platform)
    named = {key: folders.home / name for key, name in _USER_DIRS}
    if folders.platform not in ("darwin", "win32"):
        user_dirs = folders.config_dir.parent / "user-dirs.dirs"
        try:
            lines = user_dirs.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []  # no xdg-user-dirs here: the English names
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if sep and key in named and len(value) >= 2 and value[0] == value[-1] == '"':
                text = value[1:-1]
                path = folders.home / text[len("$HOME/"):] if text.startswith("$HOME/") else Path(text)
                named[key] = path if path.is_absolute() else folders.home / path
        named = {key: path for key, path in named.items() if path != folders.home}
    return list(dict.fromkeys(named.values()))


def default_config_path(env: Mapping[str, str] | None = None, platform: str | None = None) -> Path | None:
    """`./config.yaml` when present, else `config.yaml` in the user's config folder when present.

    The config folder is the platform's (platform_folders); ~/.config/flowstate is also looked in
    on macOS and Windows, where earlier versions looked.
    """
    folders = platform_folders(env, platform)
    candidates = [Path("config.yaml"), folders.config_dir / "config.yaml",
                  folders.home / ".config" / "flowstate" / "config.yaml"]
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the config: defaults, then the YAML file, then environment overrides."""
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    if path is None:
        path = default_config_path(env)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = _read_yaml(path)
    from_env = _apply_env(data, env)
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, source, from_env)) from None
    return _resolve_paths(config, env)


def _resolve_paths(config: Config, env: Mapping[str, str]) -> Config:
    """Expand `~` and fill the data-folder default, so every module gets absolute paths."""
    database = config.jobs.database or user_data_dir(env) / "jobs.sqlite3"
    given = config.paths.roots if "roots" in config.paths.model_fields_set else None
    roots = [root.expanduser().absolute() for root in (default_roots(env) if given is None else given)]
    repo = config.models.demucs_repo.expanduser().absolute() if config.models.demucs_repo else None
    spleeter_dir = config.models.spleeter_dir.expanduser().absolute() if config.models.spleeter_dir else None
    openunmix_dir = config.models.openunmix_dir.expanduser().absolute() if config.models.openunmix_dir else None
    return config.model_copy(
        update={
            "jobs": config.jobs.model_copy(update={"database": database.expanduser().absolute()}),
            "paths": config.paths.model_copy(update={"roots": roots}),
            "models": config.models.model_copy(
                update={"demucs_repo": repo, "spleeter_dir": spleeter_dir, "openunmix_dir": openunmix_dir,
                        "dirs": [d.expanduser().absolute() for d in config.models.dirs]}
            ),
            "server": config.server.model_copy(
                update={"data_dir": (config.server.data_dir or user_data_dir(env) / "server").expanduser().absolute()}
            ),
            "stream": config.stream.model_copy(
                update={"openvino_cache_dir": (config.stream.openvino_cache_dir or database.parent / "openvino")
                        .expanduser().absolute()}
            ),
            "tts": config.tts.model_copy(
                update={"voices_dir": (config.tts.voices_dir or user_data_dir(env) / "voices").expanduser().absolute()}
            ),
        }
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of sections at the top level, "
            f"got {type(loaded).__name__}"
        )
    return loaded


def _env_key_path(variable: str) -> tuple[str, ...]:
    """Map FLOWSTATE_OSC_UDP_PORT onto ('osc', 'udp_port') by walking the model's field names."""
    rest = variable[len(ENV_PREFIX) :].lower()
    model: type[BaseModel] | None = Config
    path: list[str] = []
    while model is not None and rest:
        # Longest field name first, so `udp_port` wins over a hypothetical `udp`.
        for name in sorted(model.model_fields, key=len, reverse=True):
            if rest == name or rest.startswith(name + "_"):
                path.append(name)
                rest = rest[len(name) + 1 :]
                annotation = model.model_fields[name].annotation
                model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
                break
        else:
            break
    if rest or model is not None:
        sections = ", ".join(f"{ENV_PREFIX}{s.upper()}_…" for s in Config.model_fields)
        raise ConfigError(
            f"environment variable {variable} does not name a config key (expected {sections}, "
            f"e.g. {ENV_PREFIX}OSC_UDP_PORT for osc.udp_port)"
        )
    return tuple(path)


def _parse_env_value(text: str) -> Any:
    stripped = text.strip()
    if stripped.lower() in ("null", "none", "~"):
        return None
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    return text  # pydantic's lax mode turns "9020" into 9020 and "true" into True


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Write environment overrides into `data`; return {key path: variable} for error messages."""
    applied: dict[tuple[str, ...], str] = {}
    items: list[tuple[str, tuple[str, ...]]] = []
    for variable in sorted(env):
        if variable in ENV_ALIASES:
            items.append((variable, ENV_ALIASES[variable]))
        elif variable.startswith(ENV_PREFIX) and variable != CONFIG_ENV:
            items.append((variable, _env_key_path(variable)))
    for variable, key_path in items:
        node = data
        for part in key_path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[key_path[-1]] = _parse_env_value(env[variable])
        applied[key_path] = variable
    return applied


def _explain(err: ValidationError, source: str, from_env: dict[tuple[str, ...], str]) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        key = ".".join(loc)
        origin = f" (from {from_env[loc]})" if loc in from_env else ""
        secret = (loc[:1] == ("cloud",) and loc[-1] != "workers_ai_account_id") or loc in (
            ("server", "store"), ("server", "store_password"))  # a DSN may hold a password
        value = "<hidden>" if secret else repr(item.get("input"))
        if item["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            known = ", ".join(model.model_fields) if model is not None else "?"
            lines.append(f"  {key}: unknown key{origin}; expected one of: {known}")
        else:
            lines.append(f"  {key} = {value}{origin}: expected {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        if part.isdigit():
            continue  # an item of a list of sections (midi.mappings.0): unwrapped below
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
