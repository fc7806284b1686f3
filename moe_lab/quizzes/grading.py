"""Mark a learner's response to one quiz question: pure functions, no widget.

``grade(question, response)`` returns a :class:`Grade`: ``correct`` is True or False for a
choice or numeric question and None for a short answer (it is compared with the model answer
by the learner, not by the machine); ``feedback`` is what the quiz shows next, in the
learner's language.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from moe_lab.quizzes.schema import Question, Text

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
# commas only as thousands separators: 1,024 and 12,345.5, never a decimal comma (7,81)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?([eE][+-]?\d+)?$")

_MARKS = Text(en="Correct.", ko="정답입니다.")
_WRONG = Text(en="Not quite.", ko="아쉽네요, 틀렸습니다.")
_NOT_A_NUMBER = Text(en="Please type a number, with a dot for decimals (for example 1.5, 2e-3 "
                       "or 1,024).",
                    ko="숫자를 입력하세요. 소수점은 점으로 씁니다 (예: 1.5, 2e-3 또는 1,024).")
_NO_CHOICE = Text(en="Pick an option first.", ko="먼저 보기를 고르세요.")
_EMPTY = Text(en="Write an answer first, then reveal the model answer.",
             ko="먼저 답을 쓴 뒤 모범 답안을 확인하세요.")
_MODEL_ANSWER = Text(en="Model answer", ko="모범 답안")


@dataclass(frozen=True)
class Grade:
    correct: bool | None  # None: a short answer, or a response that could not be read
    feedback: Text  # shown under the question
    show_explanation: bool  # wrong answers and short answers show the explanation


def parse_number(response: str) -> float | None:
    """'1,024', ' 2e-3 ', '-0.5' -> a float; anything else (empty, 'nan', '1e400', '1/2', and a decimal
    comma such as '7,81', which would otherwise read as 781) -> None."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    text = response.strip().replace("_", "")
    if "," in text:
        if not _THOUSANDS.match(text):
            return None
        text = text.replace(",", "")
    value = float(text) if _NUMBER.match(text) else None
    return value if value is not None and math.isfinite(value) else None  # '1e400' is no number


def _is_close(given: float, answer: float, tolerance: float) -> bool:
    """Within ``tolerance`` (absolute), and never looser than 1e-6 relative."""
    return math.isclose(given, answer, rel_tol=1e-6, abs_tol=tolerance)


def grade(question: Question, response: str | None) -> Grade:
    """Mark ``response``: an option id (choice), the typed text (numeric, short)."""
    if not isinstance(question, Question):
        raise TypeError(f"question must be a Question (from load_quiz(...).questions), got "
                        f"{type(question).__name__}")
    if response is not None and not isinstance(response, str):
        raise TypeError(f"response must be a str (an option id or the typed text) or None, got "
                        f"{type(response).__name__} {response!r}")
    if question.kind == "choice":
        if response is None:
            return Grade(None, _NO_CHOICE, False)
        if response not in {o.id for o in question.options}:
            raise ValueError(f"response must be one of the option ids "
                             f"{[o.id for o in question.options]}, got {response!r}")
        right = response == question.answer
        return Grade(right, _MARKS if right else _WRONG, not right)
    if question.kind == "numeric":
        given = parse_number(response or "")
        if given is None:
            return Grade(None, _NOT_A_NUMBER, False)
        right = _is_close(given, question.answer, question.tolerance)
        return Grade(right, _MARKS if right else _WRONG, not right)
    if not (response or "").strip():
        return Grade(None, _EMPTY, False)
    return Grade(None, _MODEL_ANSWER, True)
