"""`ask`: a sentence in words -> one of the registry's commands with its arguments.

Two steps, both derived from the registry rather than from a table of their own:

1. **Which command.** The sentence is embedded with the daemon's sentence-embeddings model (the one
   `classify` and sample search use) and compared with each reachable command's documents: its name
   and help (`stream set: Set a stem's gain and/or mute ...`) and the example phrasings declared
   next to it (`@command(..., examples=(...))`), paths and quoted text read as neutral words. A command
   scores the best cosine of its documents; between commands that do different things and embed alike
   (stream.start and stream.stop, generate and samples.search, stems.separate and transcribe) the
   sentence's verb decides (OPPOSITES).
2. **Which arguments.** Each of the chosen command's `Arg` declarations is filled from the sentence by
   a small extractor for its kind of value: quoted text and file paths, numbers with their units
   (bars, seconds, bpm, dB, semitones, `<n> <argument name>`), time signatures, stem names, on/off
   words, declared choices, catalogue model names, job ids and states, languages, presets; what is
   left of the sentence (minus filler words) becomes the prompt, query or text.

The outcome is sure only when the best score reaches MIN_SCORE, beats the runner-up by MIN_MARGIN,
every required argument was found and the arguments pass the command's own validation; otherwise
the reply says what is missing and nothing runs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.errors import BadRequest
from bridge.job_store import JOB_STATES
from bridge.protocol import Arg, CommandSpec
from engines.catalogue import entry_for
from engines.embeddings import TextEmbedder

MAX_TEXT_CHARS = 500  # one sentence; a paragraph is not a command
# Measured on tests/bridge/ask_sentences.yaml with all-MiniLM-L6-v2 (see the README): below these the
# reply asks instead of guessing.
MIN_SCORE = 0.40
MIN_MARGIN = 0.02
CANDIDATES = 5  # how many of the best-ranked commands read their arguments from the sentence
MISSING_PENALTY = 0.1  # per required argument the sentence does not give
GIVEN_BONUS = 0.03  # per argument it gives, free text aside
# Commands that do different things and embed alike: MiniLM puts "begin the live stream" and "launch live
# stems" nearer stream.stop's phrasings than stream.start's. The sentence's verb decides: saying one
# command's verb and not the other's earns that one VERB_WEIGHT and puts the other out of the running
# (OUTVOTED: "turn on real-time separation" embeds 0.49 nearer stream.stop's "end real-time
# separation" than any stream.start phrasing, more than any weight that keeps the rest would undo).
# "the start" and "the end" are no verbs.
OPPOSITES: dict[str, tuple[str, str]] = {
    # "the start", "the live stems start", "the stream start" name a start, and order none.
    "stream.start": (r"(?<!the\s)(?<!stems\s)(?<!stream\s)\b(?:start|begin|launch|turn\s+on|switch\s+on|enable)\b",
                     "stream.stop"),
    # Cancelling a start still loading is a stop too ("abort the live stems start"), but cancelling a job
    # is not ("cancel the separation job").
    "stream.stop": ((r"(?<!the\s)\b(?:stop|end|halt|shut\s+down|turn\s+off|switch\s+off|disable"
                    r"|(?:cancel|abort)(?!.*\b(?:jobs?|[0-9a-f]{12})\b))\b"), "stream.start"),
    # Making a sound and finding one: "generate a dark ambient pad" embeds nearer "search for dark
    # evolving pads" than any generate phrasing. ("make" is not here: "make the drums quieter".)
    "generate": (r"\b(?:generate|compose|create|synthesi[sz]e)\b", "samples.search"),
    "samples.search": (r"\b(?:find|search|look\s+for|browse)\b", "generate"),
    # Splitting a song and writing down its words: "make an acapella of song.wav" embeds nearer
    # transcribe's phrasings, "transcribe the vocals of song.mp3" nearer stems.separate's.
    "stems.separate": (
        r"\b(?:separate|split|isolate|extract|unmix|demix|stems?|acapp?ella|a\s+cappella|karaoke|instrumental)\b",
        "transcribe"),
    "transcribe": (r"\b(?:transcribe|transcript(?:ion)?|lyrics|words|subtitles?|captions?)\b", "stems.separate"),
    # Saying words and checking the daemon answers: "say hello world" embeds nearer ping's "hello, anyone
    # home?" than any tts phrasing.
    "tts": ((r"\b(?:say|speak|pronounce|narrate|text[\s-]to[\s-]speech|read(?:\s+\w+){0,3}\s+(?:aloud|out\s+loud)"
            r"|read\s+out)\b"), "ping"),
    "ping": (r"\b(?:ping|alive|listening|anyone\s+home|connection|connected|reachable|responding)\b", "tts"),
}
VERB_WEIGHT = 0.2
OUTVOTED = 1.0
# A question ("is job 0123456789ab cancelled", "did the stream stop", "is the song in 4/4") asks how things
# are: a command that changes things costs QUESTION_PENALTY, and one that still comes first does not run.
# "can you …", "could you …" are requests.
QUESTION = (r"^\s*(?:is|are|was|were|did|does|do|has|have|had|what|what's|whats|which|who|whose|how|where|when"
            r"|why)\b")
REQUEST = r"^\s*(?:can|could|would|will|please)\b"
# A sentence that says something failed asks what happened, as a question does: "the stream start
# failed" was a sure stream.start.
FAILED = (r"\b(?:failed|fails|broke|broken|crashed|hangs|hung|stuck|(?:is|isn't|is\s+not|doesn't|does\s+not|won't"
          r"|will\s+not|stopped|not)\s+work(?:s|ing|ed)?)\W*$")
QUESTION_PENALTY = 0.2
# And the other way: an order to change something ("cancel the separation job", "stop the transport") asks
# for no query; each query costs it QUESTION_PENALTY ("cancel the separation job" was a sure
# stream.status, "stop the transport" a sure daw.status), and a query that still comes first does not
# run. "show", "list", "check", "detect" order a query, so they are not here.
ORDER = (r"^\s*(?:please\s+)?(?:cancel|abort|kill|delete|remove|stop|start|begin|launch|pause|resume|play|record"
         r"|mute|unmute|set|change|boost|raise|lower|cut|enable|disable|turn|switch|add|make)\b")
# Commands that run only for a sentence that says what they act on, or what they do, and why not:
# starting and stopping live stems embed near any start or stop ("stop playback" and "pause the song"
# were a sure stream.stop), but Flowstate does not run the DAW's transport; a job's cancel embeds near
# anything done to a job ("retry job …" was a sure job.cancel, and there is no retry).
LIVE_STEMS = (r"\b(?:stream\w*|stems?|live|separat\w*|split\w*|real[\s-]?time|demucs|htdemucs\w*|spleeter\S*"
              r"|model)\b")
LIVE_STEMS_UNNAMED = ("{command} {does} the live stems, and that does not name them (Flowstate does not play or stop "
                      "your DAW): say 'the live stems' to run {command}")
MUST_SAY: dict[str, tuple[str, str]] = {
    "stream.start": (LIVE_STEMS, LIVE_STEMS_UNNAMED.format(command="stream.start", does="starts")),
    "stream.stop": (LIVE_STEMS, LIVE_STEMS_UNNAMED.format(command="stream.stop", does="stops")),
    "job.cancel": (r"\b(?:cancel\w*|abort\w*|stop|kill|delete|remove|drop|halt|terminate|scrap|get\s+rid)\b",
                   "job.cancel cancels the job, and that does not say to cancel it: say 'cancel job …' to run it"),
}
# No one command restarts live stems ("restart live stems" was a sure stream.stop).
RESTART = r"\b(?:re-?start|reload|reboot)"
# Commands whose every change is optional: one that reads none of them from the sentence would change
# nothing ("add reverb to the vocals" was a sure `stream.set vocals`), so it does not run.
CHANGES = {"stream.set": ("gain_db", "mute"), "daw.set": ("tempo", "numerator", "denominator", "playing")}

# Never reached from words: `ask` itself (a sentence about asking would recurse) and register /
# unregister (they add the sender's own UDP port as an OSC listener: wire plumbing for scripts).
EXCLUDED = frozenset({"ask", "register", "unregister"})

# Stem names as the separation models spell them, and the words producers use for them.
STEM_WORDS: dict[str, str] = {
    "vocals": "vocals", "vocal": "vocals", "vox": "vocals", "voice": "vocals", "singer": "vocals",
    "singing": "vocals", "lyrics": "vocals", "drums": "drums", "drum": "drums", "percussion": "drums",
    "bass": "bass", "bassline": "bass", "other": "other", "guitar": "guitar", "guitars": "guitar",
    "piano": "piano", "accompaniment": "accompaniment", "instrumental": "accompaniment",
    "acapella": "vocals", "acappella": "vocals", "a cappella": "vocals",
}
# Chains fx.set and fx.list know besides the stems.
CHAIN_WORDS = {"master": "master", "mix": "master"}
# On/off words per boolean argument name; the first list means true.
BOOL_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mute": (("mute", "silence", "kill", "cut out"), ("unmute", "bring back", "un-mute", "back in")),
    "playing": (("play", "start the transport", "roll"), ("stop the transport", "pause")),
    "watch": (("watch", "keep watching", "keep it fresh", "keep an eye"),
              ("stop watching", "don't watch", "do not watch")),
}
# Units of numeric arguments, by argument name: the words after (or before) the number.
UNIT_WORDS: dict[str, tuple[str, ...]] = {
    "bars": ("bars", "bar", "measures", "measure"),
    "seconds": ("seconds", "second", "secs", "sec", "s"),
    "tempo": ("bpm", "beats per minute"),
    "gain_db": ("db", "decibels", "decibel"),
    "pitch": ("semitones", "semitone", "half steps", "half step"),
    "sample_rate": ("hz",),
}
# Other names of numeric arguments, said before the number as the name is ("the bpm to 95").
NAME_WORDS: dict[str, tuple[str, ...]] = {"tempo": ("bpm",)}
DOWN_WORDS = ("down", "lower", "quieter", "cut", "reduce", "minus", "drop")
NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "sixteen": 16, "twenty": 20, "thirty": 30, "half a": 0.5,
}
LANGUAGES = {
    "english": "en", "german": "de", "french": "fr", "spanish": "es", "italian": "it", "portuguese": "pt",
    "dutch": "nl", "swedish": "sv", "polish": "pl", "russian": "ru", "japanese": "ja", "chinese": "zh",
    "korean": "ko", "turkish": "tr", "arabic": "ar", "hindi": "hi",
}
STATE_WORDS: dict[str, str] = {**{state: state for state in JOB_STATES}, "cancelled": "canceled", "finished": "done",
               "waiting": "queued", "pending": "queued"}
# Which catalogue task a command's `model` argument names (engines/catalogue.py TASKS).
MODEL_TASKS = {"generate": "generate", "stems.separate": "stems", "stream.start": "stems", "transcribe": "transcribe"}
# Arguments filled with what is left of the sentence, in this order of preference.
FREE_TEXT = ("prompt", "query", "text")
# Words that say which command, not what to make or find: dropped from a prompt, query or text.
FILLER = frozenset((
    "a", "an", "the", "of", "some", "with", "at", "for", "in", "on", "to", "into", "from", "by", "and", "or", "me",
    "my", "i", "we", "us", "you", "your", "please", "can", "could", "would", "will", "want", "need", "give", "make",
    "made", "create", "compose", "produce", "generate", "render", "write", "find", "search", "look", "looking",
    "show", "list", "get", "fetch", "browse", "samples", "sample", "library", "sounds", "sound", "that", "this",
    "it", "is", "are", "be", "as", "like", "which", "what", "classify", "categorize", "category", "sort", "label",
    "tag", "describe", "kind", "type", "new", "up", "out", "preset", "using", "use",
))
AUDIO_SUFFIXES = ("wav", "flac", "aif", "aiff", "ogg", "opus", "mp3", "m4a")
# At most nine digits (and six decimals): a longer run of digits is no bar count or tempo, and never
# becomes an infinite float.
NUMBER = r"(?<![\d.])[-+]?\d{1,9}(?:\.\d{1,6})?(?!\.?\d)"
QUOTED = r"\"([^\"]+)\"|“([^”]+)”|(?<!\w)'([^']+)'(?!\w)"
# Unquoted paths, one word each (a path with spaces is quoted): a file by its audio suffix (`take.wav`,
# `~/Music/take.aiff`, `C:\Users\me\take.wav`); a folder by where it starts: /, ~/, ./, ../, a drive
# (`C:\Samples`, `D:/Samples`) or a Windows share (`\\studio\samples`). "7/8" and "drums/bass" are neither.
FILE_WORD = rf"(?<![\w/~.:\\])(?:[A-Za-z]:)?[\w~./\\-]+\.(?:{'|'.join(AUDIO_SUFFIXES)})\b"
FOLDER_WORD = r"(?<![\w:\\])(?:[A-Za-z]:|~|\.{1,2})?[/\\][\w~./\\-]+"
# What a path is read as when the command is chosen (for_ranking).
RANKED_FILE, RANKED_FOLDER = "this file", "this folder"


# -- the sentence and what has been taken from it ---------------------------------------------------


@dataclass
class Sentence:
    """A sentence with number words turned into digits; extractors take spans so that nothing is read twice."""

    original: str
    text: str = ""
    taken: list[tuple[int, int]] = field(default_factory=list)
    signature: tuple[int, int] | None = None  # a time signature, once read (numerator, denominator)
    quotes: list[str] = field(default_factory=list)  # quoted text, read first: "808" in quotes is no number

    def __post_init__(self) -> None:
        text = self.original.strip()
        for match in re.finditer(QUOTED, text):
            self.quotes.append(next(g for g in match.groups() if g is not None))
            text = text[:match.start()] + " " * (match.end() - match.start()) + text[match.end():]
        for word, value in sorted(NUMBER_WORDS.items(), key=lambda item: -len(item[0])):
            # "a"/"an" count only before a unit: "a 10 second pad" keeps its "a".
            unit = r"(?=\s+(?:bar|measure|second|octave|semitone))" if word in ("a", "an") else ""
            text = re.sub(rf"\b{word}\b{unit}", f"{value:g}", text, flags=re.IGNORECASE)
        self.text = text

    def free(self, start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in self.taken)

    def take(self, pattern: str, flags: int = re.IGNORECASE) -> re.Match[str] | None:
        """The first match of `pattern` in text nobody has taken yet; its span is then taken."""
        for match in re.finditer(pattern, self.text, flags):
            if match.end() > match.start() and self.free(*match.span()):
                self.taken.append(match.span())
                return match
        return None

    def take_all(self, pattern: str) -> list[re.Match[str]]:
        found = []
        while (match := self.take(pattern)) is not None:
            found.append(match)
        return found

    def rest(self) -> str:
        """The text nobody took."""
        chars = list(self.text)
        for start, end in self.taken:
            chars[start:end] = [" "] * (end - start)
        return "".join(chars)


def _words(phrases: Iterable[str]) -> str:
    """A regex alternative of phrases, longest first, as whole words."""
    ordered = sorted(phrases, key=len, reverse=True)
    return r"\b(?:" + "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in ordered) + r")\b"


# -- extractors: one per kind of value ----------------------------------------------------------------

Extractor = Callable[[Sentence, Arg, CommandSpec, "Vocabulary"], Any]


@dataclass(frozen=True)
class Vocabulary:
    """What the running daemon knows that the registry does not: the names in generate.presets."""

    presets: tuple[str, ...] = ()


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", "~", "./", "../")) or "/" in text or "\\" in text or bool(
        re.search(rf"\.(?:{'|'.join(AUDIO_SUFFIXES)})$", text, re.IGNORECASE))


def path_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """A file or folder: a quoted path, a word ending in an audio suffix, or a word starting with /, ~, a drive
    (C:\\ or C:/) or \\\\server."""
    for value in sentence.quotes:
        if looks_like_path(value):
            sentence.quotes.remove(value)
            return value
    wants_file = arg.name in ("path", "melody_path", "voice_prompt")
    match = sentence.take(FILE_WORD if wants_file else FOLDER_WORD)
    return match.group(0) if match else None


def number_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> float | None:
    """`<n> <unit>` (4 bars, 90 bpm, -6 dB, 10 s, 2 semitones, an octave), `<name> <n>` (seed 42), `at <n>`."""
    name_words = "(?:" + "|".join([arg.name.replace("_", r"[\s_]+"), *NAME_WORDS.get(arg.name, ())]) + ")"
    units = UNIT_WORDS.get(arg.name, ())
    patterns = []
    if units:
        patterns.append(rf"(?:\bat\s+)?({NUMBER})\s*-?\s*{_words(units)}")
    if arg.name == "pitch":
        patterns.append(rf"({NUMBER})\s+octaves?\b")
    patterns += [rf"\b{name_words}\s*(?:of|to|at|=|is|:)?\s*({NUMBER})\b", rf"({NUMBER})\s+{name_words}\b"]
    if arg.name == "tempo":
        patterns.append(rf"\bat\s+({NUMBER})\b(?!\s*(?:%|percent))")
    for pattern in patterns:
        match = sentence.take(pattern)
        if match is None:
            continue
        value = float(match.group(1))
        if arg.name == "pitch" and "octave" in match.group(0).lower():
            value *= 12
        if arg.name in ("gain_db", "pitch") and not match.group(1).startswith(("-", "+")) and _said_down(sentence):
            value = -value
        return value
    return None


def _said_down(sentence: Sentence) -> bool:
    return sentence.take(_words(DOWN_WORDS)) is not None


def count_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> int | None:
    """How many (k, top, limit): `top 5`, `5 <things>`, or its name and a number."""
    value = number_value(sentence, arg, spec, vocabulary)
    if value is None:
        match = sentence.take(r"\b(?:top|first|best)\s+(\d{1,9})\b") or sentence.take(r"\b(\d{1,9})\b(?!\s*[/.:])")
        value = float(match.group(1)) if match else None
    return None if value is None else int(value)


def signature_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> int | None:
    """`7/8` fills numerator and denominator: the first of the two reads it, the second reuses it."""
    if sentence.signature is None:
        match = sentence.take(r"\b(\d{1,2})\s*/\s*(\d{1,2})\b")
        if match is None:
            return None
        sentence.signature = (int(match.group(1)), int(match.group(2)))
    return sentence.signature[0 if arg.name == "numerator" else 1]


def _take_excepted(sentence: Sentence, words: Mapping[str, str]) -> None:
    """Take the stems a sentence leaves out ("everything but the vocals", "except drums"): they are not
    the stems it names. (A command takes one stem or a list, never all but one.)"""
    sentence.take_all(rf"\b(?:but|except(?:\s+for)?|other\s+than|apart\s+from|besides)\s+(?:the\s+)?{_words(words)}")


# A song without its vocals: stems.separate's two_stems=vocals (the vocals and no_vocals, the rest summed),
# which every separation model has; "accompaniment" is only Spleeter's stem.
WITHOUT_VOCALS = (r"\b(?:karaoke|instrumental|backing\s+track)\b"
                  r"|\b(?:without|minus|no|remove|strip|take\s+out)\s+(?:the\s+)?(?:vocals?|vox|singing|singer)\b")


def two_stems_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """`vocals` for a karaoke version, an instrumental, a song without (minus, less) its vocals."""
    return "vocals" if sentence.take(WITHOUT_VOCALS) else None


def stem_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """One stem (or, for an effects chain, master) named in words: the vox -> vocals."""
    words = {**STEM_WORDS, **CHAIN_WORDS} if arg.name == "chain" else STEM_WORDS
    _take_excepted(sentence, words)
    match = sentence.take(_words(words))
    return words[match.group(0).lower()] if match else None


def stems_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> list[str] | None:
    """Every stem named, in order, once each."""
    _take_excepted(sentence, STEM_WORDS)
    found = [STEM_WORDS[m.group(0).lower()] for m in sentence.take_all(_words(STEM_WORDS))]
    return list(dict.fromkeys(found)) or None


def bool_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> bool | None:
    """On/off words for this argument (BOOL_WORDS), the off words checked first: unmute is not mute."""
    on, off = BOOL_WORDS.get(arg.name, ((arg.name,), ()))
    if off and sentence.take(_words(off)):
        return False
    return True if sentence.take(_words(on)) else None


def choice_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """One of the argument's declared choices, said as a word."""
    match = sentence.take(_words(c for c in arg.choices or () if c))
    return match.group(0).lower() if match else None


def model_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """A model the catalogue knows for this command's task: htdemucs_6s, stable-audio-open, whisper small."""
    task = MODEL_TASKS.get(spec.name)
    if task is None:
        return None
    for match in re.finditer(r"[\w:./@-]+", sentence.text):
        word = match.group(0).strip(".").lower()
        # A plain word (small, base) names a model only when followed by "model": "a small room" does not.
        plain = word.isalpha() and not re.match(r"\s+model\b", sentence.text[match.end():], re.IGNORECASE)
        if sentence.free(*match.span()) and not plain and entry_for(word, task) is not None:
            sentence.taken.append(match.span())
            return word
    return None


JOB_ID = r"\b[0-9a-f]{12}\b"  # a job id as the queue writes them: twelve hex digits


def job_id_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """A job id as the queue writes them: twelve hex digits."""
    match = sentence.take(JOB_ID)
    return match.group(0) if match else None


def state_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    match = sentence.take(_words(STATE_WORDS))
    return STATE_WORDS[match.group(0).lower()] if match else None


def language_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    match = sentence.take(rf"(?:\bin\s+)?{_words(LANGUAGES)}")
    return LANGUAGES[match.group(0).split()[-1].lower()] if match else None


def preset_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """A name from generate.presets, said with the word preset (`the keys preset`): keys alone is a prompt."""
    if not vocabulary.presets:
        return None
    match = sentence.take(rf"{_words(vocabulary.presets)}\s+preset\b|\bpreset\s+{_words(vocabulary.presets)}")
    return next(w for w in match.group(0).lower().split() if w != "preset") if match else None


def voice_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """voice.convert's target: a URL, or the name after `like`/`to`/`into` (`sound like Obama`, `drake's voice`)."""
    if spec.name != "voice.convert":
        match = sentence.take(r"\b[a-z]{2}_[A-Z]{2}-[\w-]+\b|\bchatterbox\b")
        return match.group(0) if match else None
    match = sentence.take(r"https?://\S+")
    if match:
        return match.group(0)
    # `like` first: "to sound like Freddie" names Freddie, not "sound".
    for words in ("like", "to|into|as"):
        match = sentence.take(rf"\b(?:{words})\s+(?:the\s+|a\s+)?([A-Za-z][\w-]*?)(?:'s)?(?:\s+voice)?\b")
        if match:
            return match.group(1)
    return None


# What a tts sentence says before the words themselves: "this out loud:", "the following:", "the words", "the line".
TTS_INTRO = (r"^(?:(?:this|that|it|the\s+following(?:\s+(?:words?|lines?|text|phrase|sentence))?"
             r"|(?:the\s+|these\s+)?(?:words?|lines?|text|phrase|sentence))"
             r"(?:\s+(?:out\s+loud|aloud))?\s*:\s*|(?:the\s+|these\s+)?(?:words?|lines?|phrase|sentence)\s+)")


def free_text(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> str | None:
    """What the sentence describes: quoted text, else (tts: what follows say/speak) the words nobody took,
    less filler words."""
    if sentence.quotes:
        return sentence.quotes.pop(0)
    if spec.name == "tts":
        match = sentence.take(rf"\b(?:{SPEECH}|read)\b\s*:?\s+(.+)$")
        if match is None:
            return None
        # What introduces the words is not among them: "read this out loud: hello there", "speak the words
        # good morning", "say hello world out loud".
        text = re.sub(TTS_INTRO, "", match.group(1).strip(" .!?"), flags=re.IGNORECASE)
        return re.sub(r"\s+(?:out\s+loud|aloud)$", "", text, flags=re.IGNORECASE) or None
    words = [w for w in re.findall(r"[\w'#-]+", sentence.rest()) if w.lower() not in FILLER]
    drop = set(spec.name.lower().split("."))
    kept = [w for w in words if w.lower() not in drop]
    return " ".join(kept) or None


def labels_value(sentence: Sentence, arg: Arg, spec: CommandSpec, vocabulary: Vocabulary) -> list[str] | None:
    """`drums, bass or vocals` (after `as`, `into`, `between` or on its own): the labels to rank."""
    match = sentence.take(r"(?:\b(?:as|into|between)\s+)?\b(\w+(?:\s*,\s*\w+)*\s*,?\s*\b(?:or|and)\s+\w+)")
    if match is None:
        return None
    return [w for w in re.split(r"\s*,\s*|\s+(?:or|and)\s+", match.group(1)) if w]


# An argument's extractor by its name; else by its declaration (choices, type). None: left to its default.
BY_NAME: dict[str, Extractor] = {
    "path": path_value, "melody_path": path_value, "folder": path_value, "out_dir": path_value,
    "voice_prompt": path_value, "stem": stem_value, "chain": stem_value, "stems": stems_value,
    "model": model_value, "id": job_id_value, "state": state_value, "language": language_value,
    "preset": preset_value, "voice": voice_value, "labels": labels_value, "numerator": signature_value,
    "denominator": signature_value, "two_stems": two_stems_value, "k": count_value, "top": count_value,
    "limit": count_value,
    **dict.fromkeys(FREE_TEXT, free_text),
}
# Never read from a sentence: the wire's own plumbing and settings one does not say aloud.
NOT_FROM_WORDS = frozenset({"request_id", "overrides", "device", "hypothesis", "name", "effect",
                            "parameter", "negative_prompt", "formats"})
# Read after every other argument: a free text is what the others left.
LAST = frozenset({*FREE_TEXT, "k", "top", "limit"})
# Read before every other argument: "the instrumental" is two_stems, not the stem "instrumental".
FIRST = frozenset({"two_stems"})


def extractor_for(arg: Arg) -> Extractor | None:
    if arg.name in NOT_FROM_WORDS:
        return None
    if arg.name in BY_NAME:
        return BY_NAME[arg.name]
    if arg.choices:
        return choice_value
    if arg.type is bool:
        return bool_value
    if arg.type in (int, float):
        return number_value
    return None


def extract_args(spec: CommandSpec, text: str, vocabulary: Vocabulary) -> dict[str, Any]:
    """The arguments a sentence gives for `spec`, typed as declared; only those it states."""
    sentence = Sentence(text)
    ordered = sorted(spec.args, key=lambda a: (a.name not in FIRST, a.name in LAST, a.name in FREE_TEXT))
    found: dict[str, Any] = {}
    for arg in ordered:
        extractor = extractor_for(arg)
        value = extractor(sentence, arg, spec, vocabulary) if extractor else None
        if value is None:
            continue
        if arg.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        found[arg.name] = value
        if arg.name in FREE_TEXT:
            break  # one free text per sentence
    return {arg.name: found[arg.name] for arg in spec.args if arg.name in found}


# -- the command line a reply shows ---------------------------------------------------------------


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def command_line(spec: CommandSpec, args: Mapping[str, Any]) -> str:
    """`stream.set vocals mute=1`: leading required arguments by position, the rest as name=value, quoted for a shell
    (what follows `flowstate send`)."""
    parts = [spec.name]
    positional = True
    for arg in spec.args:
        if arg.name not in args:
            positional = positional and not arg.required
            continue
        positional = positional and arg.required
        text = _word(args[arg.name])
        parts.append(shell_word(text if positional else f"{arg.name}={text}"))
    return " ".join(parts)


# Read alike by a POSIX shell, PowerShell and Windows' cmd inside double quotes: no quote, no $ or backtick
# (POSIX, PowerShell), no % (cmd expands %VAR% in quotes), no ! (bash's history, cmd's delayed expansion),
# and no backslash before another or at the end (the C runtime's argument parser reads \" as a quote; a
# POSIX shell reads \\ as one backslash). A Windows path such as C:\Users\me\take.wav stays as it is.
PORTABLE_QUOTED = r'[^"$`%!\\]*(?:\\(?![\\"$`])[^"$`%!\\]*)*(?<!\\)'


def shell_word(text: str) -> str:
    """`text` as one word on a command line: bare when it has nothing any of them reads, in double quotes
    when those mean the same in a POSIX shell, PowerShell and cmd (`"prompt=dusty lofi drums"`), else
    in a POSIX shell's single quotes (which PowerShell reads alike; cmd has none)."""
    if text and re.fullmatch(r"[\w+=:./-]+", text, re.ASCII):  # no `,` or `@`: PowerShell's array operators
        return text
    if re.fullmatch(PORTABLE_QUOTED, text):
        return f'"{text}"'
    return shlex.quote(text)


# -- the intent ------------------------------------------------------------------------------------


def documents(spec: CommandSpec) -> list[str]:
    """What a sentence is compared with for one command: its name and help, then its example phrasings."""
    return [f"{spec.name.replace('.', ' ')}: {spec.help}", *(for_ranking(e) for e in spec.examples)]


# The words a tts sentence gives are what to say, as quoted ones are, not which command: after a verb
# of speech that starts the sentence, or after a colon that follows one ("say the following: drop in
# three", "say one two three four" and "speak the words take five" went to samples.search).
SPEECH = r"say|saying|speak|pronounce|narrate|announce|read\s+out|read\s+aloud"
SPOKEN = (rf"^(\s*(?:please\s+)?(?:{SPEECH}))\b[\s:]+\S.*$",
          rf"(\b(?:{SPEECH}|read)\b[^:\n]{{0,40}}):\s*\S.*$")


def for_ranking(text: str) -> str:
    """A sentence as the embedder reads it to choose the command: quoted text, the words a tts sentence
    gives to say (SPOKEN), and paths are what to work on, not which command, so each is read as one
    neutral word. The words of a folder's name (a random temporary
    folder's, or `drums` in a sample folder's) once swayed `index my samples in <folder>` to samples.status."""
    text = re.sub(QUOTED, "this", text)
    for spoken in SPOKEN:
        text = re.sub(spoken, r"\1 this", text, flags=re.IGNORECASE)
    text = re.sub(FILE_WORD, RANKED_FILE, text)
    return re.sub(FOLDER_WORD, RANKED_FOLDER, text)


@dataclass(frozen=True)
class Understanding:
    """What `ask` made of a sentence."""

    text: str
    command: str
    args: dict[str, Any]
    line: str
    score: float
    runner_up: str | None
    runner_up_score: float
    sure: bool
    needs: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text, "line": self.line, "command": self.command, "args": self.args,
            "score": self.score, "runner_up": self.runner_up, "runner_up_score": self.runner_up_score,
            "sure": self.sure, "needs": self.needs,
        }


class Interpreter:
    """Maps sentences to commands of a registry, with the daemon's sentence-embeddings engine."""

    def __init__(self, specs: Iterable[CommandSpec], embedder: TextEmbedder, vocabulary: Vocabulary) -> None:
        self.specs = [spec for spec in specs if spec.name not in EXCLUDED]
        self.embedder = embedder
        self.vocabulary = vocabulary
        self._owners: list[int] = []
        self.documents: list[str] = []
        for index, spec in enumerate(self.specs):
            for document in documents(spec):
                self._owners.append(index)
                self.documents.append(document)

    def rank(self, neutral: str) -> list[tuple[CommandSpec, float]]:
        """Every reachable command with its score (the best cosine of its documents), best first, for a
        sentence as `for_ranking` reads it: quoted text is what to say, find or make, and a path what to
        work on, not which command."""
        similarities = self.embedder.similarities(neutral, self.documents)
        best = np.full(len(self.specs), -1.0, np.float32)
        np.maximum.at(best, np.asarray(self._owners), similarities)
        order = np.argsort(-best, kind="stable")
        return [(self.specs[i], round(float(best[i]), 4)) for i in order]

    def understand(self, text: str) -> Understanding:
        """The command and arguments a sentence asks for, and whether that is sure enough to run.

        The CANDIDATES best-scoring commands read their arguments from the sentence; each required one
        it does not give costs MISSING_PENALTY ("mute the vocals" names no file, so it is not stems.separate),
        each one it gives (other than free text, which any sentence has) earns GIVEN_BONUS ("at 140 bpm").
        When both commands of an OPPOSITES pair are candidates, the one whose verb the sentence says earns
        VERB_WEIGHT, and the other is OUTVOTED.
        A question costs each command that changes things QUESTION_PENALTY, and never runs one.
        """
        text = check_text(text)
        neutral = for_ranking(text)  # a verb inside a path or a quote is not the sentence's
        question = is_question(text)
        order = not question and re.match(ORDER, text, re.IGNORECASE) is not None
        weighed = []
        candidates = self.rank(neutral)[:CANDIDATES]
        names = {spec.name for spec, _ in candidates}
        jobs = re.findall(JOB_ID, neutral)  # the job ids the sentence names (not inside a quote or a path)
        for spec, score in candidates:
            args = extract_args(spec, text, self.vocabulary)
            missing = sum(1 for arg in spec.args if arg.required and arg.name not in args)
            given = sum(1 for name in args if name not in FREE_TEXT)
            # Only between the two of a pair: "generate speech saying …" is tts, samples.search not near.
            contested = spec.name in OPPOSITES and OPPOSITES[spec.name][1] in names
            said = says_the_verb(spec.name, neutral) if contested else 0
            verb = VERB_WEIGHT if said > 0 else -OUTVOTED if said < 0 else 0.0
            asked = QUESTION_PENALTY if (question and not spec.read_only) or (order and spec.read_only) else 0.0
            # A job the sentence names is what it is about: a command that would not act on it is as far
            # off as one missing an argument ("cancel the stem separation job <id>" asked whether it
            # meant stream.start).
            missing += sum(1 for job in jobs if job not in args.values())
            weighed.append((round(score - MISSING_PENALTY * missing + GIVEN_BONUS * given + verb - asked, 4),
                            spec, args))
        weighed.sort(key=lambda item: -item[0])
        (score, spec, args), (second_score, second, _) = weighed[:2]
        line = command_line(spec, args)
        needs = self._doubt(spec, score, second, second_score, args, line if question else "", order, text, neutral)
        return Understanding(text, spec.name, args, line, score, second.name, second_score, not needs, needs)

    def _doubt(self, spec: CommandSpec, score: float, second: CommandSpec, second_score: float,
               args: dict[str, Any], asked: str, order: bool, text: str, neutral: str) -> str:
        """Why this is not sure enough to run, or empty. `asked`: the command line a question came to;
        `order`: the sentence orders a change (ORDER); `neutral`: `text` as `for_ranking` reads it."""
        if score < MIN_SCORE:
            return (f"not sure what you mean: the closest commands are {spec.name} ({score:.2f}) and "
                    f"{second.name} ({second_score:.2f}), below {MIN_SCORE}; say it another way or name the command")
        if score - second_score < MIN_MARGIN:
            return (f"did you mean {spec.name} ({score:.2f}) or {second.name} ({second_score:.2f})? "
                    "Say it another way or name the command")
        missing = [arg for arg in spec.args if arg.required and arg.name not in args]
        if missing:
            named = "; ".join(f"argument '{a.name}' ({a.help.rstrip('.')})" for a in missing)
            return f"{spec.name} needs {named}"
        try:
            spec.bind(args)
        except BadRequest as err:
            return err.message
        if unused := unused_value(spec, text, neutral, args):
            return unused
        if spec.name in CHANGES and not set(CHANGES[spec.name]) & set(args):
            *others, last = CHANGES[spec.name]
            return (f"{spec.name} sets {', '.join(others)} or {last}, and that gives none of them: say what to set, "
                    f"as in '{spec.examples[0]}'")
        if spec.name in ("stream.start", "stream.stop") and re.search(RESTART, neutral, re.IGNORECASE):
            return "there is no restart: stop the live stems, then start them (stream.stop, then stream.start)"
        if spec.name in MUST_SAY and not re.search(MUST_SAY[spec.name][0], neutral, re.IGNORECASE):
            return MUST_SAY[spec.name][1]
        if asked and not spec.read_only:
            return (f"that reads as a question, and {spec.name} changes things: say it as a request to run "
                    f"`{asked}`, or ask how things are")
        if order and spec.read_only:
            return (f"that reads as an order to change something, and {spec.name} only shows how things are: say "
                    "what to change another way or name the command (Flowstate does not play or stop your DAW), or "
                    "ask how things are")
        return ""


def named_paths(text: str) -> list[str]:
    """The files and folders a sentence names: quoted paths, then unquoted files and folders."""
    quoted = [next(g for g in m.groups() if g is not None) for m in re.finditer(QUOTED, text)]
    rest = re.sub(QUOTED, " ", text)
    files = re.findall(FILE_WORD, rest)
    rest = re.sub(FILE_WORD, " ", rest)
    return [q for q in quoted if looks_like_path(q)] + files + re.findall(FOLDER_WORD, rest)


def unused_value(spec: CommandSpec, text: str, neutral: str, args: Mapping[str, Any]) -> str:
    """Why not to run: the sentence names a file or folder that none of the arguments took (a command
    with no file to work on, or a second file for a command that takes one) and that would be passed
    over ("detect the bpm of loop.wav" was a sure daw.status, which showed the DAW's tempo), or a job
    that it does not act on (a job id in `neutral`, the sentence as `for_ranking` reads it); or empty."""
    taken = [value for value in args.values() if isinstance(value, str)]
    if jobs := [job for job in re.findall(JOB_ID, neutral) if job not in taken]:
        return (f"{spec.name} would not use job {' or '.join(jobs)}: it takes no job id; say it another way or name "
                "the command")
    left = [path for path in named_paths(text) if not any(path in value for value in taken)]
    if not left:
        return ""
    takes = [arg.name for arg in spec.args if BY_NAME.get(arg.name) is path_value]
    if not takes:
        return (f"{spec.name} would not use {' or '.join(left)}: it takes no file or folder; say it another way or "
                "name the command")
    return (f"{spec.name} would not use {' or '.join(left)}: it takes one path for {' and one for '.join(takes)}; "
            "ask once for each file")


def is_question(text: str) -> bool:
    """A sentence that asks how things are: it starts with a question word, ends with "?" and is no
    "can you …" request, or says that something failed ("the stream start failed")."""
    if re.match(QUESTION, text, re.IGNORECASE):
        return True
    if re.search(FAILED, text, re.IGNORECASE) and not re.match(ORDER, text, re.IGNORECASE):
        return True  # "stop the live stems, they're stuck" orders all the same
    return text.rstrip().endswith("?") and not re.match(REQUEST, text, re.IGNORECASE)


def says_the_verb(command: str, text: str) -> int:
    """1: the sentence says `command`'s verb and not its opposite's (OPPOSITES); -1: the opposite's and
    not its own; 0: neither, both, or a command without an opposite."""
    if command not in OPPOSITES:
        return 0
    own = re.search(OPPOSITES[command][0], text, re.IGNORECASE) is not None
    other = re.search(OPPOSITES[OPPOSITES[command][1]][0], text, re.IGNORECASE) is not None
    return int(own) - int(other)


def check_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"ask: argument 'text' expected a sentence such as 'mute the vocals', got {text!r}")
    if len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f"ask: argument 'text' is {len(text)} characters; expected one sentence of at most "
                         f"{MAX_TEXT_CHARS}")
    return text.strip()


# -- accuracy on a labelled set (tests/bridge/data/ask_sentences.yaml, bench/ask_accuracy.py) --------


@dataclass(frozen=True)
class Verdict:
    """One labelled sentence against what `ask` understood."""

    case: Mapping[str, Any]
    understood: Understanding

    @property
    def intent_ok(self) -> bool:
        """The right command; for a sentence that fits no command, a refusal."""
        if self.case["command"] is None:
            return not self.understood.sure
        return self.understood.command == self.case["command"]

    @property
    def args_ok(self) -> bool:
        """The right command, exactly the expected arguments, and run or refused as expected."""
        expected_args = dict(self.case.get("args") or {})
        sure = bool(self.case.get("sure", True))
        return self.intent_ok and self.understood.sure == sure and (
            self.case["command"] is None or self.understood.args == expected_args)


def evaluate(interpreter: Interpreter, cases: Iterable[Mapping[str, Any]]) -> list[Verdict]:
    return [Verdict(case, interpreter.understand(case["text"])) for case in cases]
