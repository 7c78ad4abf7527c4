"""Zero-shot classification with an NLI model (transformers' zero-shot pipeline): `classify method=nli`.

Each label becomes a hypothesis ("This example is {label}.") that the model reads against the text;
the label's score is the model's entailment logit, softmaxed across the labels, so the scores sum to 1
(the pipeline's single-label mode; with one label, the pipeline scores entailment against contradiction).
It reads arbitrary labels better than cosine similarity of
sentence embeddings, at the cost of one model pass per label (MNLI-sized models: slower).

`model` is a hub name (read from the local hub cache, or downloaded when online) or a folder holding
a sequence-classification model with its tokenizer (`save_pretrained`). The model must name an
entailment label in `config.label2id` (MNLI models do: contradiction, neutral, entailment).

Nothing heavy happens at import: transformers is imported when the model loads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.base import Engine
from engines.embeddings import check_classify, looks_like_path
from engines.hub import cached_first

log = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/bart-large-mnli"
DEFAULT_HYPOTHESIS = "This example is {}."
MAX_HYPOTHESIS_CHARS = 200


def check_hypothesis(template: Any) -> str:
    """A hypothesis template with exactly one `{}` where the label goes, or BadRequest naming it."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise BadRequest(f"classify: argument 'hypothesis' expected a sentence with one {{}} where the label goes, "
                         f"e.g. {DEFAULT_HYPOTHESIS!r}, got {template!r}")
    if len(template) > MAX_HYPOTHESIS_CHARS:
        raise BadRequest(f"classify: argument 'hypothesis' is {len(template)} characters; "
                         f"expected at most {MAX_HYPOTHESIS_CHARS}")
    stripped = template.replace("{}", "")
    if "{" in stripped or "}" in stripped:
        raise BadRequest(f"classify: argument 'hypothesis' holds a brace besides the one {{}}: {template!r}")
    return template


class ZeroShotClassifier(Engine):
    """An NLI model in transformers' zero-shot pipeline, loaded once; one request at a time."""

    name = "zeroshot"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", threads: int | None = None,
                 batch_size: int = 8) -> None:
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"nli_model: expected a hub name such as {DEFAULT_MODEL!r} or a folder, got {model!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= 256):
            raise BadRequest(f"threads: expected an integer in [1, 256] or null, got {threads!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 256:
            raise BadRequest(f"batch_size: expected an integer in [1, 256], got {batch_size!r}")
        super().__init__(device)
        self.model_name = model.strip()
        self.threads = threads
        self.batch_size = batch_size
        self._pipeline: Any = None

    def _load(self) -> None:
        if self.threads is not None and self.device.type == "cpu":
            import torch

            torch.set_num_threads(self.threads)  # process-wide: torch has one intra-op pool
        from transformers import pipeline

        where = self.model_name
        local = looks_like_path(where)
        if local:
            folder = Path(where).expanduser()
            if not (folder / "config.json").is_file():
                raise NotFound(f"NLI model {self.model_name!r} could not be loaded: no config.json in {folder} "
                               f"(expected a folder written by save_pretrained, with its tokenizer)")
            where = str(folder)
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            model, tokenizer = cached_first(lambda local: (
                AutoModelForSequenceClassification.from_pretrained(where, local_files_only=local),
                AutoTokenizer.from_pretrained(where, local_files_only=local)), where)
            classifier = pipeline("zero-shot-classification", model=model, tokenizer=tokenizer, device=self.device)
        except OSError as err:  # the hub cannot find or reach it, or a file is missing
            fix = (f"run once with internet access so {self.model_name!r} is cached, or set classify.nli_model "
                   "to a local folder" if not local else "check that it holds the model and its tokenizer")
            raise NotFound(f"NLI model {self.model_name!r} could not be loaded: {_short(err)}. Fix: {fix}") from err
        except (ValueError, RuntimeError, KeyError) as err:
            raise Unavailable(f"NLI model {self.model_name!r} could not be loaded: {_short(err)}") from err
        label2id = getattr(classifier.model.config, "label2id", None) or {}
        if not any(str(label).lower().startswith("entail") for label in label2id):
            raise Unavailable(f"NLI model {self.model_name!r} names no entailment label (its labels: "
                              f"{sorted(label2id)}); expected an NLI model such as {DEFAULT_MODEL!r}")
        classifier.model.eval()
        self._pipeline = classifier
        log.info("zeroshot: %s loaded (%s)", self.model_name, self.device)

    def classify(self, text: str, labels: Sequence[str],
                 hypothesis: str = DEFAULT_HYPOTHESIS) -> list[tuple[str, float]]:
        """Labels ranked by entailment probability, best first: [(label, score), ...]; the scores sum to 1."""
        text, cleaned = check_classify(text, labels)
        template = check_hypothesis(hypothesis)
        ranked: list[tuple[str, float]] = self.process(text, cleaned, template)
        return ranked

    def _process(self, text: str, labels: list[str], template: str) -> list[tuple[str, float]]:
        if self._pipeline is None:
            raise Unavailable("zeroshot: the model was closed (the daemon is shutting down)")
        out = self._pipeline(text, candidate_labels=labels, hypothesis_template=template, multi_label=False,
                             batch_size=self.batch_size)
        ranked = sorted(zip(out["labels"], out["scores"], strict=True), key=lambda pair: -float(pair[1]))
        return [(str(label), round(float(score), 4)) for label, score in ranked]

    def _close(self) -> None:
        self._pipeline = None


def _short(err: BaseException) -> str:
    """The first line of an error, prefixed with its type."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:300]
