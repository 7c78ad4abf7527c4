"""Open-Unmix (`openunmix:umxl`, `openunmix:umxhq`) as a separation model: four stems.

The modules are ours, written against the released architecture (the `openunmix` package, 1.3.0:
`model.OpenUnmix`, `model.Separator`, `utils.load_target_models`); only the weights are
Open-Unmix's. The package cannot be imported here (every module of it imports torchaudio, which
pins its own torch), so it is never imported: its installed `__init__.py` is read as text for the
release URLs, and the weights are fetched the way it fetches them (torch.hub's
`load_state_dict_from_url`, into torch.hub's checkpoint cache).

`load_openunmix` returns one `nn.Module` whose `forward` maps a stereo mix `(batch, 2, samples)` at
44.1 kHz to `(batch, 4 stems, 2, samples)`, with the attributes demucs's models have (`sources`,
`samplerate`, `audio_channels`, `segment`), so `apply_model` runs it like an HTDemucs.

The recipe: a complex STFT (n_fft 4096, hop 1024, Hann, centred, reflect padding), its magnitude
fed to one network per target (fc -> 3-layer BLSTM -> fc, each estimating that target's
magnitude), the estimates turned into ratio masks `v_j / (sum_k v_k + eps)` of the mix's complex
STFT (the package's `Separator(softmask=True, niter=0)`), inverted. The package's default
multichannel Wiener post-filter (`niter=1`, one EM step) is not applied: the stems then add up to
the mix wherever any target hears something, at a small cost in interference.

Weights, per variant and target (vocals, drums, bass, other), tried in this order:
1. `models.openunmix_dir/<variant>/`: `<target>*.pth` (the state dict, as the releases name it,
   e.g. `vocals-bccbd9aa.pth`, or as training writes it, `vocals.pth`), with the optional
   `<target>.json` (`{"args": {"nfft", "nb_channels", "hidden_size", ...}}`) and `separator.json`
   (`{"sample_rate", "nfft", "nhop", "nb_channels"}`) that open-unmix's training writes beside it,
   read the way `utils.load_target_models` / `load_separator` read them.
2. torch.hub's checkpoint cache (`<torch hub dir>/checkpoints/<release file name>`).
3. The download the installed `openunmix` package names (needs internet).

Nothing heavy happens at import: torch is imported when a model is built.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.errors import BadRequest, NotFound, Unavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FAMILY = "openunmix"
STEMS: tuple[str, ...] = ("vocals", "drums", "bass", "other")
# Model name -> (the package's name for it, the released hidden size). Both are 4-target stereo
# models at 44.1 kHz with n_fft 4096 and hop 1024; the fc layers see bins up to 16 kHz.
MODELS: dict[str, tuple[str, int]] = {
    "openunmix:umxl": ("umxl", 1024),
    "openunmix:umxhq": ("umxhq", 512),
}
PACKAGE = "openunmix"
SAMPLE_RATE = 44100
N_FFT = 4096
STFT_HOP = 1024
NB_LAYERS = 3  # utils.load_target_models never passes nb_layers: every release has 3
MASK_EPS = 1e-10
# File jobs: the BLSTM sees a whole segment at once; 30 s segments, overlapped and blended.
SEGMENT_SECONDS = 30.0


def is_openunmix(name: object) -> bool:
    """Whether `name` asks for an Open-Unmix model (`openunmix`, `openunmix:umxl`, `openunmix:…`)."""
    return isinstance(name, str) and (name == FAMILY or name.startswith(FAMILY + ":"))


def check_name(name: str) -> tuple[str, ...]:
    """The stems of Open-Unmix model `name`; `BadRequest` naming the choices for any other variant."""
    if name not in MODELS:
        raise BadRequest(f"model {name!r}: expected one of {', '.join(MODELS)} (Open-Unmix's 4-stem models: "
                         f"{', '.join(STEMS)})")
    return STEMS


def release_urls(variant: str) -> dict[str, str] | None:
    """Target -> weights URL for `variant`, as the installed `openunmix` package names them in its
    `<variant>_spec`; None when the package is not installed or names none. Read as text: importing
    the package would import torchaudio."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        init = Path(str(distribution(PACKAGE).locate_file(f"{PACKAGE}/__init__.py")))
        text = init.read_text(encoding="utf-8")
    except (PackageNotFoundError, OSError):
        return None
    match = re.search(rf"^def {variant}_spec\(.*?(?=^def )", text, re.DOTALL | re.MULTILINE)
    if match is None:
        return None
    urls = dict(re.findall(r'"(\w+)":\s*"(https://[^"]+\.pth)"', match.group(0)))
    return urls if all(stem in urls for stem in STEMS) else None


def _hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _in_folder(place: Path, stem: str) -> Path | None:
    exact = place / f"{stem}.pth"
    if exact.is_file():
        return exact
    return next(iter(sorted(p for p in place.glob(f"{stem}-*.pth") if p.is_file())), None)


def find_weights(name: str, folder: Path | None = None, *, download: bool = True) -> dict[str, Path]:
    """Per stem, the state dict to load: from `folder/<variant>`, else torch.hub's cache, else
    downloaded as the `openunmix` package does (with `download`).

    `NotFound` naming every place tried (and what each lacked) when none has them.
    """
    check_name(name)
    variant, _ = MODELS[name]
    tried: list[str] = []
    if folder is not None:
        place = Path(folder).expanduser() / variant
        if not place.is_dir():
            tried.append(f"models.openunmix_dir {str(folder)!r}: no folder {variant}/")
        else:
            found = {stem: _in_folder(place, stem) for stem in STEMS}
            missing = [f"{stem}.pth (or {stem}-<hash>.pth)" for stem, path in found.items() if path is None]
            if not missing:
                return {stem: path for stem, path in found.items() if path is not None}
            tried.append(f"models.openunmix_dir {str(place)!r}: no {', no '.join(missing)}")
    urls = release_urls(variant)
    if urls is None:
        tried.append(f"the {PACKAGE} package: not installed, so no release to look for in torch.hub's cache "
                     "or to download")
    else:
        cache = _hub_checkpoints()
        cached = {stem: cache / Path(urls[stem]).name for stem in STEMS}
        if all(path.is_file() for path in cached.values()):
            return cached
        tried.append(f"torch.hub's cache {str(cache)!r}: no "
                     f"{', '.join(p.name for p in cached.values() if not p.is_file())}")
        if download:
            try:
                return _download(urls, cache)
            except Exception as err:  # noqa: BLE001 - offline: URLError and friends; a hash mismatch
                tried.append(f"the {PACKAGE} package's download: {type(err).__name__}: {err}")
    raise NotFound(f"model {name!r}: no Open-Unmix weights found; tried {'; '.join(tried)}. Fix: set "
                   f"models.openunmix_dir to a folder holding {variant}/ with "
                   f"{', '.join(f'{s}.pth' for s in STEMS)} (the released state dicts, any <target>-<hash>.pth "
                   f"name), or install the package (pip install --no-deps {PACKAGE}) and run once with internet "
                   "access so its weights land in torch.hub's cache")


def _download(urls: dict[str, str], cache: Path) -> dict[str, Path]:
    import torch

    paths = {}
    for stem in STEMS:
        log.info("Open-Unmix: downloading %s weights from %s", stem, urls[stem])
        torch.hub.load_state_dict_from_url(urls[stem], map_location="cpu", progress=False, check_hash=True)
        paths[stem] = cache / Path(urls[stem]).name
    return paths


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Unavailable(f"Open-Unmix config {str(path)!r} cannot be read as JSON: {err}") from err
    if not isinstance(data, dict):
        raise Unavailable(f"Open-Unmix config {str(path)!r}: expected an object, got {type(data).__name__}")
    return data


def _config_int(config: dict[str, Any], key: str, default: int, path: Path) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Unavailable(f"Open-Unmix config {str(path)!r}: {key} is {value!r}, expected a positive integer")
    return value


def load_openunmix(name: str, folder: Path | None = None, *, download: bool = True) -> torch.nn.Module:
    """Open-Unmix model `name` with its pretrained weights, in eval mode, without gradients."""
    import torch

    check_name(name)
    _variant, hidden_size = MODELS[name]
    paths = find_weights(name, folder, download=download)
    place = next(iter(paths.values())).parent
    separator_conf = _read_json(place / "separator.json") or {}
    sample_rate = separator_conf.get("sample_rate", SAMPLE_RATE)
    n_fft = _config_int(separator_conf, "nfft", N_FFT, place / "separator.json")
    hop = _config_int(separator_conf, "nhop", STFT_HOP, place / "separator.json")
    channels = _config_int(separator_conf, "nb_channels", 2, place / "separator.json")
    if sample_rate != SAMPLE_RATE or channels != 2:
        raise Unavailable(f"model {name!r}: {str(place / 'separator.json')!r} describes a {channels}-channel "
                          f"model at {sample_rate} Hz; expected a stereo model at {SAMPLE_RATE} Hz")
    nets = {}
    for stem, path in paths.items():
        args = (_read_json(place / f"{stem}.json") or {}).get("args") or {}
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated file, another format
            raise Unavailable(f"Open-Unmix weights {str(path)!r} cannot be read as a state dict: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        if not isinstance(state, dict) or not isinstance(state.get("input_mean"), torch.Tensor):
            raise Unavailable(f"Open-Unmix weights {str(path)!r}: expected a state dict with input_mean "
                              "(an OpenUnmix target model)")
        net = _build_target(
            nb_bins=_config_int(args, "nfft", n_fft, place / f"{stem}.json") // 2 + 1,
            nb_channels=_config_int(args, "nb_channels", channels, place / f"{stem}.json"),
            hidden_size=_config_int(args, "hidden_size", hidden_size, place / f"{stem}.json"),
            max_bin=int(state["input_mean"].shape[0]),
        )
        try:
            # Not strict, like the package's loader, but only batch-norm step counters (absent
            # from state dicts saved by old torch releases) may be missing.
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise Unavailable(f"Open-Unmix weights {str(path)!r} do not fit an OpenUnmix target model: "
                              f"{str(err).splitlines()[0]}") from err
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]
        if missing:
            raise Unavailable(f"Open-Unmix weights {str(path)!r}: no {', '.join(missing)}; expected the state "
                              "dict of an OpenUnmix target model")
        if unexpected:
            log.warning("Open-Unmix weights %s: ignoring %s", path, ", ".join(unexpected))
        nets[stem] = net
    model = _build_separator(nets, n_fft, hop)
    model.eval()
    model.requires_grad_(False)
    log.info("model %s: %s", name, ", ".join(f"{stem} from {path}" for stem, path in paths.items()))
    return model


def _build_target(*, nb_bins: int, nb_channels: int, hidden_size: int, max_bin: int) -> torch.nn.Module:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class TargetNet(nn.Module):
        """One target's network, parameter for parameter the release's `OpenUnmix`: magnitude
        `(batch, channels, bins, frames)` -> that target's estimated magnitude, same shape."""

        def __init__(self) -> None:
            super().__init__()
            self.nb_output_bins = nb_bins
            self.nb_bins = max_bin
            self.hidden_size = hidden_size
            self.fc1 = nn.Linear(max_bin * nb_channels, hidden_size, bias=False)
            self.bn1 = nn.BatchNorm1d(hidden_size)
            self.lstm = nn.LSTM(input_size=hidden_size, hidden_size=hidden_size // 2, num_layers=NB_LAYERS,
                                bidirectional=True, batch_first=False, dropout=0.4)
            self.fc2 = nn.Linear(hidden_size * 2, hidden_size, bias=False)
            self.bn2 = nn.BatchNorm1d(hidden_size)
            self.fc3 = nn.Linear(hidden_size, nb_bins * nb_channels, bias=False)
            self.bn3 = nn.BatchNorm1d(nb_bins * nb_channels)
            self.input_mean = nn.Parameter(torch.zeros(max_bin))
            self.input_scale = nn.Parameter(torch.ones(max_bin))
            self.output_scale = nn.Parameter(torch.ones(nb_bins))
            self.output_mean = nn.Parameter(torch.ones(nb_bins))

        def forward(self, spec: torch.Tensor) -> torch.Tensor:
            x = spec.permute(3, 0, 1, 2)  # (frames, batch, channels, bins)
            frames, batch, channels, _ = x.shape
            mix = x
            x = (x[..., : self.nb_bins] + self.input_mean) * self.input_scale
            x = self.bn1(self.fc1(x.reshape(-1, channels * self.nb_bins)))
            x = torch.tanh(x.reshape(frames, batch, self.hidden_size))
            x = torch.cat([x, self.lstm(x)[0]], -1)
            x = F.relu(self.bn2(self.fc2(x.reshape(-1, x.shape[-1]))))
            x = self.bn3(self.fc3(x)).reshape(frames, batch, channels, self.nb_output_bins)
            x = x * self.output_scale + self.output_mean
            return (F.relu(x) * mix).permute(1, 2, 3, 0)

    return TargetNet()


def _build_separator(nets: dict[str, torch.nn.Module], n_fft: int, hop: int) -> torch.nn.Module:
    import torch
    from torch import nn

    class OpenUnmixSeparator(nn.Module):
        """Mix `(batch, 2, samples)` at 44.1 kHz -> stems `(batch, len(sources), 2, samples)`."""

        samplerate = SAMPLE_RATE
        audio_channels = 2
        segment = SEGMENT_SECONDS
        window: torch.Tensor  # the Hann window, a buffer registered in __init__

        def __init__(self, nets: dict[str, nn.Module]) -> None:
            super().__init__()
            self.sources = list(nets)
            self.target_models = nn.ModuleDict(nets)
            self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

        def valid_length(self, length: int) -> int:
            """What `apply_model` pads a piece to (and trims back): at least one FFT, since the STFT's
            reflect padding needs more than n_fft / 2 samples. The last piece of a split file can be
            a few samples long (1.5 s in 0.5 s segments leaves 2)."""
            return max(length, n_fft)

        def forward(self, mix: torch.Tensor) -> torch.Tensor:
            batch, channels, length = mix.shape
            spec = torch.stft(mix.reshape(batch * channels, length).float(), n_fft, hop, window=self.window,
                              center=True, pad_mode="reflect", return_complex=True)
            bins, frames = spec.shape[-2:]
            spec = spec.view(batch, channels, bins, frames)
            magnitude = spec.abs()
            estimates = torch.stack([net(magnitude) for net in self.target_models.values()], dim=1)
            mask = estimates / (estimates.sum(dim=1, keepdim=True) + MASK_EPS)
            masked = (spec[:, None] * mask).reshape(-1, bins, frames)
            out = torch.istft(masked, n_fft, hop, window=self.window, center=True, length=length)
            return out.view(batch, len(self.target_models), channels, length)

    return OpenUnmixSeparator(nets)
