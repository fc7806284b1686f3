"""The quiz format: one YAML file per lesson (``moe_lab/quizzes/NN.yaml``), loaded and validated.

A quiz file holds ``lesson`` (the notebook's stem, e.g. ``04_load_balancing``), a ``title`` and
``questions``. Every text is a mapping ``{en: ..., ko: ...}``, both non-empty. A question has an
``id`` (unique in its file), a ``kind``, a ``prompt``, an ``answer`` and an ``explanation``:

- ``choice``: ``options`` (each ``{id, en, ko}``) and ``answer`` = the id of the right option;
- ``numeric``: ``answer`` is a number, or ``{compute: NAME, args: {...}}`` where NAME is a
  function of :mod:`moe_lab.quizzes.answers` or a dotted ``moe_lab.`` callable (``field:``
  picks an attribute of its result); optional ``tolerance`` (absolute) and ``unit``;
  ``{answer}`` in its prompt or explanation is replaced by the computed value;
- ``short``: ``answer`` is the model answer text, revealed on request; optional
  ``key_points``, each a text with an optional ``see: NN_slug#Heading`` link.

See ``moe_lab/quizzes/README.md`` for an example. Errors raise :class:`QuizFormatError` naming
the file and the question.
"""

from __future__ import annotations

import importlib
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import yaml

QUIZ_DIR = Path(__file__).resolve().parent
LANGUAGES = ("en", "ko")
_KINDS = ("choice", "numeric", "short")
_QUESTION_KEYS = {"id", "kind", "prompt", "answer", "explanation", "options", "tolerance", "unit",
                  "key_points"}


class QuizFormatError(ValueError):
    """A quiz file breaks the format; the message names the file and the question."""


@dataclass(frozen=True)
class Text:
    """One text in every language of the course."""

    en: str
    ko: str

    def get(self, lang: str) -> str:
        if lang not in LANGUAGES:
            raise ValueError(f"lang must be one of {LANGUAGES}, got {lang!r}")
        return getattr(self, lang)


@dataclass(frozen=True)
class Option:
    id: str
    text: Text


@dataclass(frozen=True)
class KeyPoint:
    """A point a good answer makes; ``see`` is ``NN_slug#Heading``: where the course runs it."""

    text: Text
    see: str | None = None


@dataclass(frozen=True)
class Question:
    id: str
    kind: str  # one of _KINDS
    prompt: Text
    explanation: Text
    answer: str | float | Text  # option id (choice), number (numeric), model answer (short)
    answer_source: str = "literal"  # for numeric: the call that computed it
    options: tuple[Option, ...] = ()
    tolerance: float = 0.0
    unit: Text | None = None
    key_points: tuple[KeyPoint, ...] = ()


@dataclass(frozen=True)
class Quiz:
    lesson: str  # the notebook stem, e.g. "04_load_balancing"
    title: Text
    questions: tuple[Question, ...]
    path: Path | None = field(default=None, compare=False)

    def question(self, question_id: str) -> Question:
        for q in self.questions:
            if q.id == question_id:
                return q
        raise KeyError(f"{self.lesson} has no question {question_id!r}; "
                       f"have {[q.id for q in self.questions]}")


def _text(raw: object, where: str) -> Text:
    if not isinstance(raw, dict):
        raise QuizFormatError(f"{where}: expected a mapping {{en: ..., ko: ...}}, got {raw!r}")
    missing = [lang for lang in LANGUAGES
               if not isinstance(raw.get(lang), str) or not raw.get(lang, "").strip()]
    if missing:
        raise QuizFormatError(f"{where}: missing or empty text in {missing}")
    return Text(en=raw["en"].strip(), ko=raw["ko"].strip())


def _resolve_callable(name: str, where: str):
    if not isinstance(name, str) or not name:
        raise QuizFormatError(f"{where}: compute must be a function name, got {name!r}")
    if "." not in name:
        module_name, attr = "moe_lab.quizzes.answers", name
    elif name.startswith("moe_lab."):
        module_name, attr = name.rsplit(".", 1)
    else:
        raise QuizFormatError(f"{where}: compute must name a moe_lab function, got {name!r}")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise QuizFormatError(f"{where}: no function {name!r} ({error})") from error
    if not callable(function):
        raise QuizFormatError(f"{where}: {name!r} is not callable")
    return function, f"{module_name}.{attr}"


def _as_number(value: object, where: str) -> float:
    if hasattr(value, "item") and callable(value.item):  # a 0-d tensor or numpy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise QuizFormatError(f"{where}: the answer must be a finite number, got {value!r}")
    return float(value)


def _numeric_answer(raw: object, where: str) -> tuple[float, str]:
    """A literal number, or ``{compute, args, field}`` called once: (value, how it was got)."""
    if not isinstance(raw, dict):
        return _as_number(raw, where), "literal"
    unknown = set(raw) - {"compute", "args", "field"}
    if unknown:
        raise QuizFormatError(f"{where}: unknown keys {sorted(unknown)} in the computed answer")
    function, qualname = _resolve_callable(raw.get("compute"), where)
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise QuizFormatError(f"{where}: args must be a mapping, got {args!r}")
    try:
        value = function(**args)
    except Exception as error:  # the message names the question, then the cause
        raise QuizFormatError(f"{where}: {qualname}(**{args}) raised {error!r}") from error
    for attr in (raw.get("field") or "").split(".") if raw.get("field") else ():
        if not hasattr(value, attr):
            raise QuizFormatError(f"{where}: {qualname}(...) returned a {type(value).__name__}, "
                                  f"which has no field {attr!r} (field: {raw['field']!r})")
        value = getattr(value, attr)
    call = ", ".join(f"{k}={v!r}" for k, v in args.items())
    source = f"{qualname}({call})" + (f".{raw['field']}" if raw.get("field") else "")
    return _as_number(value, where), source


def format_answer(value: float) -> str:
    """A numeric answer as quizzes print it: whole numbers with thousands separators, others to
    4 significant digits."""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _question(raw: object, where: str) -> Question:
    if not isinstance(raw, dict):
        raise QuizFormatError(f"{where}: a question must be a mapping, got {raw!r}")
    unknown = set(raw) - _QUESTION_KEYS
    if unknown:
        raise QuizFormatError(f"{where}: unknown keys {sorted(unknown)}")
    qid = raw.get("id")
    if not isinstance(qid, str) or not qid:
        raise QuizFormatError(f"{where}: every question needs a string id")
    where = f"{where} ({qid})"
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise QuizFormatError(f"{where}: kind must be one of {_KINDS}, got {kind!r}")
    for key in ("prompt", "answer", "explanation"):
        if raw.get(key) is None:
            raise QuizFormatError(f"{where}: missing {key}")
    common = dict(id=qid, kind=kind, prompt=_text(raw["prompt"], f"{where} prompt"),
                  explanation=_text(raw["explanation"], f"{where} explanation"))
    if kind != "choice" and "options" in raw:
        raise QuizFormatError(f"{where}: only a choice question has options")
    if kind == "choice":
        options = raw.get("options")
        if not isinstance(options, list) or len(options) < 2:
            raise QuizFormatError(f"{where}: a choice question needs at least two options")
        parsed = []
        for i, option in enumerate(options):
            if not isinstance(option, dict) or not isinstance(option.get("id"), str):
                raise QuizFormatError(f"{where} option {i}: needs an id")
            parsed.append(Option(option["id"], _text({k: option.get(k) for k in LANGUAGES},
                                                     f"{where} option {option['id']}")))
        ids = [o.id for o in parsed]
        if len(set(ids)) != len(ids):
            raise QuizFormatError(f"{where}: option ids repeat: {ids}")
        in_order = [chr(ord("a") + i) for i in range(len(ids))]
        if ids != in_order:  # the static view's "b)" is the second option shown
            raise QuizFormatError(f"{where}: option ids must be {in_order} in the order shown, "
                                  f"got {ids}")
        for option in parsed:
            if any("$" in option.text.get(lang) for lang in LANGUAGES):
                raise QuizFormatError(f"{where} option {option.id}: no maths ($) in an option: "
                                      "a radio button's label shows plain text")
        if raw["answer"] not in ids:
            raise QuizFormatError(f"{where}: answer {raw['answer']!r} is not among the "
                                  f"options {ids}")
        return Question(**common, answer=raw["answer"], options=tuple(parsed))
    if kind == "numeric":
        value, source = _numeric_answer(raw["answer"], where)
        tolerance = _as_number(raw.get("tolerance", 0.0), f"{where} tolerance")
        if tolerance < 0:
            raise QuizFormatError(f"{where}: tolerance must be >= 0, got {tolerance}")
        unit = _text(raw["unit"], f"{where} unit") if raw.get("unit") is not None else None
        # "{answer}" in the prompt or the explanation is the computed value, so no text types it
        shown = format_answer(value)
        for key in ("prompt", "explanation"):
            text = common[key]
            common[key] = Text(en=text.en.replace("{answer}", shown),
                               ko=text.ko.replace("{answer}", shown))
        return Question(**common, answer=value, answer_source=source, tolerance=tolerance,
                        unit=unit)
    key_points = []
    for i, point in enumerate(raw.get("key_points") or ()):
        see = point.get("see") if isinstance(point, dict) else None
        if see is not None and (not isinstance(see, str) or "#" not in see):
            raise QuizFormatError(f"{where} key point {i}: see must be 'NN_slug#Heading'")
        key_points.append(KeyPoint(_text({k: point.get(k) for k in LANGUAGES}
                                         if isinstance(point, dict) else point,
                                         f"{where} key point {i}"), see))
    return Question(**common, answer=_text(raw["answer"], f"{where} answer"),
                    key_points=tuple(key_points))


def parse_quiz(raw: object, where: str = "<quiz>") -> Quiz:
    """Validate the parsed YAML of one quiz file and compute its numeric answers."""
    if not isinstance(raw, dict):
        raise QuizFormatError(f"{where}: a quiz file must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - {"lesson", "title", "questions"}
    if unknown:
        raise QuizFormatError(f"{where}: unknown keys {sorted(unknown)}")
    lesson = raw.get("lesson")
    if not isinstance(lesson, str) or not lesson[:2].isdigit():
        raise QuizFormatError(f"{where}: lesson must be the notebook stem 'NN_slug', got {lesson!r}")
    questions = raw.get("questions")
    if not isinstance(questions, list) or not questions:
        raise QuizFormatError(f"{where}: questions must be a non-empty list")
    parsed = tuple(_question(q, f"{where} question {i}") for i, q in enumerate(questions))
    ids = [q.id for q in parsed]
    if len(set(ids)) != len(ids):
        raise QuizFormatError(f"{where}: question ids repeat: {ids}")
    return Quiz(lesson=lesson, title=_text(raw.get("title"), f"{where} title"), questions=parsed)


def quiz_files() -> list[Path]:
    """Every quiz file the package ships, in lesson order."""
    return sorted(QUIZ_DIR.glob("[0-9][0-9].yaml"))


def load_quiz(lesson: int | str | Path) -> Quiz:
    """Load one quiz: a lesson number (4), its two digits or stem ("04", "04_load_balancing"),
    or a path to a YAML file."""
    if isinstance(lesson, Path):
        path = lesson
    elif isinstance(lesson, int) and not isinstance(lesson, bool):
        path = QUIZ_DIR / f"{lesson:02d}.yaml"
    elif isinstance(lesson, str) and lesson[:2].isdigit():
        path = QUIZ_DIR / f"{lesson[:2]}.yaml"
    else:
        raise TypeError(f"lesson must be a lesson number, 'NN' or 'NN_slug', or a Path; "
                        f"got {lesson!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no quiz file {path}; have {[p.name for p in quiz_files()]}")
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    quiz = parse_quiz(raw, where=path.name)
    if path.stem.isdigit() and quiz.lesson[:2] != path.stem:
        raise QuizFormatError(f"{path.name}: holds lesson {quiz.lesson!r}; the file of lesson "
                              f"NN must be named NN.yaml")
    if isinstance(lesson, str) and "_" in lesson and quiz.lesson != lesson:
        raise QuizFormatError(f"{path.name}: is the quiz of {quiz.lesson!r}, not {lesson!r}")
    return Quiz(quiz.lesson, quiz.title, quiz.questions, path=path)


def load_all() -> list[Quiz]:
    """Every shipped quiz, validated, in lesson order."""
    return [load_quiz(path) for path in quiz_files()]
