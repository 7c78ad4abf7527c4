"""Separation models in their real formats for the tests and benchmarks: tiny and passthrough
HTDemucs, Open-Unmix, and the released HTDemucs architecture (random weights) with its timing."""

from __future__ import annotations

import statistics
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from engines.base import synchronize
from engines.openunmix import N_FFT, SAMPLE_RATE, STEMS, STFT_HOP, _build_target


def tiny_htdemucs_repo(folder: Path, name: str = "tiny",
                       sources: tuple[str, ...] = ("drums", "bass", "other", "vocals"), seed: int = 0,
                       *, depth: int = 2) -> Path:
    """Build a small seeded HTDemucs (about 27 k parameters) and save it as a demucs local repo.

    The architecture is the one in DESIGN.md (channels 8, depth 2, one transformer layer, no
    bottom channels, 44.1 kHz, segment 4 s). `depth=3` (about 96 k parameters) runs several times
    faster on long windows: at depth 2 the cross-transformer attends over 128 frequency rows times
    the frames, which grows quadratically with the window (about 0.9 s for a 0.5 s window on 2 cores).
    Returns the folder (see `save_demucs_repo`). torch and demucs are imported here, not at import.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=list(sources), channels=8, depth=depth, t_layers=1, bottom_channels=0,
                     samplerate=44100, segment=4)
    # A signature that is stable for the same name, sources, seed and depth.
    return save_demucs_repo(model, folder, name, key=f"{name}:{','.join(sources)}:{seed}:{depth}")


def tiny_openunmix_dir(folder: Path, variant: str = "umxl", *, hidden_size: int = 8, seed: int = 0) -> Path:
    """A small seeded Open-Unmix saved as `models.openunmix_dir` holds the released ones.

    `<folder>/<variant>/` gets, per target (vocals, drums, bass, other), the state dict of one
    OpenUnmix target model named as the releases name theirs, `<target>-<first 8 hex of the file's
    sha256>.pth`, and the `<target>.json` (`{"args": {...}}`) and `separator.json` that open-unmix's
    training writes. The architecture is the release's (n_fft 4096, stereo, bins up to 16 kHz, three
    BLSTM layers) with a hidden size of 8 (about 60 k parameters a target), so loading it goes
    through the same path as the real weights. Random weights with the batch norms' statistics
    perturbed, so the targets' estimates differ. Returns `folder`.
    """
    import hashlib
    import io
    import json

    import torch

    place = Path(folder) / variant
    place.mkdir(parents=True, exist_ok=True)
    max_bin = 1487  # the releases' bandwidth_to_max_bin(44100, 4096, 16000)
    generator = torch.Generator().manual_seed(seed)
    for stem in STEMS:
        net = _build_target(nb_bins=N_FFT // 2 + 1, nb_channels=2, hidden_size=hidden_size, max_bin=max_bin)
        state = net.state_dict()
        for key, value in state.items():
            if value.is_floating_point():
                state[key] = torch.rand(value.shape, generator=generator) * 0.5 + 0.25 if key.endswith(
                    ("running_var", "scale", "output_mean")) else torch.randn(value.shape, generator=generator) * 0.1
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        (place / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth").write_bytes(data)
        args = {"target": stem, "nfft": N_FFT, "nhop": STFT_HOP, "nb_channels": 2, "hidden_size": hidden_size,
                "bandwidth": 16000, "seed": seed}
        (place / f"{stem}.json").write_text(json.dumps({"args": args, "best_epoch": 0}, indent=2))
    (place / "separator.json").write_text(json.dumps(
        {"targets": list(STEMS), "sample_rate": SAMPLE_RATE, "nfft": N_FFT, "nhop": STFT_HOP, "nb_channels": 2}))
    return Path(folder)


def passthrough_htdemucs_repo(folder: Path, name: str = "passthrough", steps: int = 100, seed: int = 0,
                              *, stem: str | None = None, frames: int = 11264, learning_rate: float = 1e-2,
                              threads: int | None = None) -> Path:
    """A tiny HTDemucs trained for a few seconds (on the CPU) so that its stems add up to its input.

    A random model's output depends more on where its windows fall than on its input, so nothing
    can be timed through it. This one's mix follows the input sample for sample (residual about
    2 % of the input's energy), which lets a test find a known signal at the outputs and measure
    the latency in exact frames.

    With `stem` (e.g. "vocals"), that stem alone carries the input and the others stay silent: a
    "separation" whose vocals are the mix, so speech put in comes out of the vocals stem (about
    50 steps on 5120-frame examples at learning rate 2e-2 keep it intelligible to Whisper).

    `threads` sets torch's threads while training (then restores them): 1 trains in seconds even
    when other processes keep every core busy, where 2 threads waiting on each other measured 20x
    slower on a loaded 2-core machine. None leaves torch's setting alone.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=3, t_layers=1,
                     bottom_channels=0, samplerate=44100, segment=4)
    model.use_train_segment = False
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    index = model.sources.index(stem) if stem is not None else None
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _train(model, optimiser, steps, frames, index)
    finally:
        torch.set_num_threads(previous_threads)
    model.use_train_segment = True  # saved as demucs would save it; loaders set what they need
    key = f"{name}:{seed}:{steps}" + (f":{stem}:{frames}:{learning_rate}" if stem is not None else "")
    return save_demucs_repo(model, folder, name, key=key)


def _train(model: Any, optimiser: Any, steps: int, frames: int, index: int | None) -> None:
    """Fit `model` to pass noise through: into the sum of its stems, or into stem `index` alone."""
    import torch

    for _ in range(steps):
        noise = torch.randn(2, 2, frames) * 0.3
        out = model(noise)
        if index is None:
            loss = ((out.sum(dim=1) - noise) ** 2).mean() / (noise**2).mean()
        else:
            target = torch.zeros_like(out)
            target[:, index] = noise
            loss = ((out - target) ** 2).mean() / (noise**2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


# The architecture of the published `htdemucs` / `htdemucs_ft` checkpoints (about 84 MB in half
# precision): the experiment in demucs's `grids/mmi.py`, 41.98 M parameters. demucs's default
# arguments (`HTDemucs(sources=[...])`) build a lighter 26.9 M model that no user loads; every
# benchmark that times HTDemucs builds this one (DESIGN.md, "HTDemucs facts"). Its training segment
# is 7.8 s (10 s trimmed for repitching and shifts; demucs refuses a longer `--segment` for it):
# `apply_model` pads every chunk of a file to it. The default argument, 10 s, would time file jobs
# on longer chunks than users run; the streaming engine runs any length and does not depend on it.
RELEASED_HTDEMUCS_KWARGS: dict[str, Any] = {
    "sources": ["drums", "bass", "other", "vocals"], "bottom_channels": 512, "dconv_mode": 3,
    "segment": Fraction(39, 5),
}


def released_htdemucs(seed: int = 0) -> Any:
    """The released htdemucs architecture with seeded random weights (eval mode)."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(**RELEASED_HTDEMUCS_KWARGS).eval()


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def default_argument_htdemucs(seed: int = 0) -> Any:
    """HTDemucs with demucs's default arguments (26.9 M parameters), seeded random weights (eval mode).

    Lighter than every released checkpoint: only for a labelled comparison line next to
    `released_htdemucs`, never for a product figure.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(sources=RELEASED_HTDEMUCS_KWARGS["sources"]).eval()


def describe_htdemucs(model: Any) -> str:
    """One line for a bench's output: which architecture `model` is and its parameter count."""
    released = ", ".join(f"{k}={float(v) if isinstance(v, Fraction) else v}"
                         for k, v in RELEASED_HTDEMUCS_KWARGS.items() if k != "sources")
    millions = f"{parameter_count(model) / 1e6:.2f} M parameters"
    init: tuple[Any, dict[str, Any]] = getattr(model, "_init_args_kwargs", ((), {}))
    _, kwargs = init
    if all(kwargs.get(k) == v for k, v in RELEASED_HTDEMUCS_KWARGS.items()):
        return f"released htdemucs architecture (bridge.testing.RELEASED_HTDEMUCS_KWARGS: {released}), {millions}"
    if set(kwargs) == {"sources"}:
        return f"demucs's default-argument HTDemucs (lighter than any released checkpoint), {millions}"
    return f"{type(model).__name__}({', '.join(f'{k}={v}' for k, v in kwargs.items())}), {millions}"


# The window of the CPU default setting until 2026-12-04, 0.5 + 0.25 + 0.25 s as 44 blocks of 1024
# frames at 44.1 kHz (1.0217 s; the default's lookahead is 0.1 s now): its bare forward on the
# released architecture is the speed of the machine
# every latency bench prints, so figures from machines of different speed can be compared (issue
# 12's latency targets are stated for a machine where it takes <= 0.35 s).
REFERENCE_WINDOW_SECONDS = 45056 / 44100


def device_label(device: Any) -> str:
    """What a bench prints for the device it ran on: the GPU's name, Apple silicon's GPU, or the CPU's threads."""
    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    if device.type == "mps":
        return "Apple silicon GPU (mps)"
    return f"cpu, {torch.get_num_threads()} threads"


def bare_forward_ms(*models: Any, window_seconds: float = REFERENCE_WINDOW_SECONDS, count: int = 10,
                    warmup: int = 2, seed: int = 0) -> list[float]:
    """p50, in ms, of a bare `model(window)` forward of a stereo `window_seconds` window, one per model.

    The window is `round(window_seconds * rate / 1024)` blocks of 1024 frames at the model's rate,
    seeded noise, on the device of the model's parameters. Each model runs as the streaming engine
    runs it: `use_train_segment = False` (any window length; restored afterwards), under
    `inference_mode`, with torch's current thread count. The models take turns, one forward each,
    `warmup` untimed rounds then `count` timed ones, so load from elsewhere on a shared machine hits
    them alike: the ratio between two models is the figure to trust there.
    """
    import torch

    if not models or count < 1 or warmup < 0:
        raise ValueError(f"bare_forward_ms: expected at least one model, count >= 1 and warmup >= 0, "
                         f"got {len(models)} model(s), count={count}, warmup={warmup}")
    generator = torch.Generator().manual_seed(seed)
    windows, saved = [], []
    for model in models:
        frames = max(1, round(window_seconds * model.samplerate / 1024)) * 1024
        device = next(model.parameters()).device
        windows.append(torch.randn(1, model.audio_channels, frames, generator=generator).to(device))
        saved.append(model.use_train_segment)
        model.use_train_segment = False
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for round_index in range(warmup + count):
                for index, (model, window) in enumerate(zip(models, windows, strict=True)):
                    started = time.perf_counter()
                    model(window)
                    synchronize(window.device)
                    if round_index >= warmup:
                        times[index].append(1000.0 * (time.perf_counter() - started))
    finally:
        for model, flag in zip(models, saved, strict=True):
            model.use_train_segment = flag
    return [statistics.median(t) for t in times]


def released_htdemucs_repo(folder: Path, name: str = "htdemucs_released", seed: int = 0) -> Path:
    """`released_htdemucs(seed)` saved as a demucs local repo (see `save_demucs_repo`)."""
    return save_demucs_repo(released_htdemucs(seed), folder, name, key=f"{name}:released:{seed}")


def save_demucs_hub_cache(repo: Path, name: str, hub_cache: Path, revision: str = "0" * 40) -> list[Path]:
    """Put the model `name` of a demucs local repo (`save_demucs_repo`) into a hub cache folder
    (`HF_HUB_CACHE`) as demucs 4.1 publishes its pretrained models there: the repository
    `adefossez/<demucs.hf.hf_repo_name(name)>` holding `<name>.yaml` and one `<sig>.safetensors` a
    model, its class and init arguments as JSON in the metadata (what `demucs.hf.load_safetensors_model`
    reads; fractions as demucs encodes them). Returns the files written, the yaml first.
    """
    import json
    from fractions import Fraction

    import torch
    import yaml
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
    from safetensors.torch import save_file

    def encoded(value: Any) -> Any:
        if isinstance(value, Fraction):
            return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
        if isinstance(value, dict):
            return {key: encoded(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [encoded(item) for item in value]
        return value

    folder = Path(hub_cache) / f"models--{DEFAULT_NAMESPACE}--{hf_repo_name(name)}"
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    bag = Path(repo) / f"{name}.yaml"
    written = [snapshot / bag.name]
    written[0].write_text(bag.read_text())
    for sig in yaml.safe_load(bag.read_text())["models"]:
        package = torch.load(Path(repo) / f"{sig}.th", map_location="cpu", weights_only=False)
        klass = package["klass"]
        metadata = {"klass": f"{klass.__module__}.{klass.__name__}", "args": json.dumps(encoded(package["args"])),
                    "kwargs": json.dumps(encoded(package["kwargs"]))}
        written.append(snapshot / f"{sig}.safetensors")
        save_file({key: tensor.contiguous() for key, tensor in package["state"].items()}, str(written[-1]), metadata)
    return written


def save_demucs_repo(model: Any, folder: Path, name: str, key: str | None = None) -> Path:
    """Save a demucs model (built with demucs's `capture_init`) as a one-model local repo.

    The folder gets `<sig>.th` in demucs's package format (class, init arguments, state) and
    `<name>.yaml` naming that signature, so `demucs.pretrained.get_model(name, repo=folder)` loads
    it through demucs's own `LocalRepo`/`BagOnlyRepo`, the same path as real checkpoints. `sig` is
    8 hex characters derived from `key` (default: the name). Returns the folder.
    """
    import hashlib

    import torch

    args, kwargs = model._init_args_kwargs
    sig = hashlib.sha256((key or name).encode()).hexdigest()[:8]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"klass": type(model), "args": args, "kwargs": kwargs, "state": model.state_dict()},
               folder / f"{sig}.th")
    (folder / f"{name}.yaml").write_text(f"models: ['{sig}']\n")
    return folder


