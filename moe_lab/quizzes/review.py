"""A mixed review drawn from every lesson's quiz (lesson 12): one question per lesson, chosen
by a seeded generator so the review is the same on every run."""

from __future__ import annotations

import random
from dataclasses import replace

from moe_lab.quizzes.schema import Question, Text, load_all

_REVIEW_KINDS = ("choice", "numeric")  # marked at once; short answers stay in their lessons


def review_questions(*, per_lesson: int = 1, seed: int = 0,
                     exclude: tuple[str, ...] = ("12",)) -> list[Question]:
    """``per_lesson`` choice or numeric questions from each quiz (lessons in ``exclude`` left
    out), in lesson order. Each prompt is prefixed with its lesson, e.g. "[04] ", and each id
    becomes "04:uniform-loss"."""
    if isinstance(per_lesson, bool) or not isinstance(per_lesson, int) or per_lesson < 1:
        raise ValueError(f"per_lesson must be an int >= 1, got {per_lesson!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    rng = random.Random(seed)
    picked = []
    for quiz in load_all():
        number = quiz.lesson[:2]
        if number in exclude:
            continue
        pool = [q for q in quiz.questions if q.kind in _REVIEW_KINDS]
        for question in rng.sample(pool, min(per_lesson, len(pool))):
            tag = f"[{number}] "
            picked.append(replace(question, id=f"{number}:{question.id}",
                                  prompt=Text(en=tag + question.prompt.en,
                                              ko=tag + question.prompt.ko)))
    return picked
