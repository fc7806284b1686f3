"""Quiz data -> HTML strings: pure functions the widget only draws (and tests read).

Two views of one quiz: the live pieces (a question's prompt, the options, the feedback after
an answer) in one language, and the static view a notebook viewer shows when no kernel runs:
every question in English and Korean, with its answer and explanation hidden in a collapsed
``<details>`` block.
"""

from __future__ import annotations

import html
import re

from moe_lab.quizzes.grading import Grade
from moe_lab.quizzes.schema import LANGUAGES, KeyPoint, Question, Quiz, Text, format_answer

LABELS = {
    "check": Text(en="Check", ko="확인"),
    "reveal": Text(en="Show the model answer", ko="모범 답안 보기"),
    "answer": Text(en="Answer", ko="정답"),
    "explanation": Text(en="Why", ko="해설"),
    "key_points": Text(en="Key points, and where the course runs them",
                       ko="핵심 포인트와 강의에서 실행해 보는 곳"),
    "your_answer": Text(en="Your answer", ko="내 답"),
    "show_answer": Text(en="Answer and explanation", ko="정답과 해설"),
    "computed": Text(en="computed by", ko="계산:"),
    "language": Text(en="Language", ko="언어"),
    "review_title": Text(en="Mixed review: one question from every lesson",
                         ko="종합 복습: 강의마다 한 문제"),
}
LANGUAGE_NAMES = {"en": "English", "ko": "한국어"}


def label(name: str, lang: str) -> str:
    return LABELS[name].get(lang)


def _md_inline(text: str) -> str:
    """Escape, then the two inline marks the quiz files use: `code` and **bold**."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


def prompt_html(question: Question, number: int, lang: str) -> str:
    """'<b>3.</b> the prompt' (and the unit of a numeric answer)."""
    unit = (f" <i>({_md_inline(question.unit.get(lang))})</i>" if question.unit is not None
            else "")
    return f"<b>{number}.</b> {_md_inline(question.prompt.get(lang))}{unit}"


def _plain_inline(text: str) -> str:
    """The text of a radio button's label, which shows plain text only: the marks of `code` and
    **bold** dropped (option texts hold no maths: the loader refuses '$' there)."""
    return re.sub(r"\*\*([^*]+)\*\*", r"\1", re.sub(r"`([^`]+)`", r"\1", text))


def option_labels(question: Question, lang: str) -> list[tuple[str, str]]:
    """(label, option id) pairs for a choice question's radio buttons, in the stored order:
    the order in the file is the order shown."""
    return [(_plain_inline(option.text.get(lang)), option.id) for option in question.options]


def answer_text(question: Question, lang: str) -> str:
    """The right answer as plain text: the option's text, the number, or the model answer."""
    if question.kind == "choice":
        option = next(o for o in question.options if o.id == question.answer)
        return f"{option.id}) {option.text.get(lang)}"
    if question.kind == "numeric":
        return format_answer(question.answer)
    return question.answer.get(lang)


def see_link(see: str, *, live: bool = False) -> tuple[str, str]:
    """'04_load_balancing#2. Routing collapse' -> (href, link text). The href is the notebook
    next to this one with the heading's anchor (its text, spaces as '-', code marks dropped, as
    JupyterLab names it). ``live`` (the widget, in JupyterLab): the fragment reads
    ``#heading=...``, which JupyterLab finds from the notebook's source, so it scrolls there
    even when the heading's cell is not drawn yet (a long notebook draws cells as they come
    into view); a static viewer gets the plain anchor."""
    lesson, heading = see.split("#", 1)
    anchor = _plain_inline(heading.strip()).replace(" ", "-")
    return (f"{lesson}.ipynb#{'heading=' if live else ''}{anchor}",
            f"{lesson} · {heading.strip()}")


def key_points_html(points: tuple[KeyPoint, ...], lang: str, *, live: bool = False) -> str:
    if not points:
        return ""
    items = []
    for point in points:
        link = ""
        if point.see:
            href, text = see_link(point.see, live=live)
            link = f' — <a href="{html.escape(href, quote=True)}">{_md_inline(text)}</a>'
        items.append(f"<li>☐ {_md_inline(point.text.get(lang))}{link}</li>")
    return (f"<div class='moe-quiz-keypoints'><b>{label('key_points', lang)}</b>"
            f"<ul style='list-style:none;padding-left:0.5em'>{''.join(items)}</ul></div>")


def feedback_html(question: Question, result: Grade, lang: str) -> str:
    """What shows under a question once it is answered: the mark, and for a wrong answer (or a
    revealed short answer) the explanation; a right answer is marked, nothing given away. The
    marks are ✓ ✗ ✎ (in every common font), not emoji, which some systems draw as boxes."""
    if result.correct is True:
        return f"<div class='moe-quiz-right' style='color:#1a7f37'>✓ {result.feedback.get(lang)}</div>"
    if not result.show_explanation:  # unreadable input, or nothing written yet
        return f"<div class='moe-quiz-hint' style='color:#9a6700'>✎ {result.feedback.get(lang)}</div>"
    explanation = (f"<div class='moe-quiz-explanation'><b>{label('explanation', lang)}:</b> "
                   f"{_md_inline(question.explanation.get(lang))}</div>")
    if question.kind == "short":
        return (f"<div class='moe-quiz-model' style='border-left:3px solid #0969da;"
                f"padding-left:0.6em'><b>{result.feedback.get(lang)}:</b> "
                f"{_md_inline(question.answer.get(lang))}"
                f"{key_points_html(question.key_points, lang, live=True)}{explanation}</div>")
    return (f"<div class='moe-quiz-wrong' style='color:#cf222e'>✗ {result.feedback.get(lang)}"
            f"</div>{explanation}")


def _static_question(question: Question, number: int) -> str:
    prompts = (f"{prompt_html(question, number, 'en')}<br>"
               f"<span lang='ko'>{_md_inline(question.prompt.ko)}</span>")
    options = ""
    if question.kind == "choice":
        options = "<ul>" + "".join(
            f"<li>{o.id}) {_md_inline(o.text.en)} / {_md_inline(o.text.ko)}</li>"
            for o in question.options) + "</ul>"
    computed = ""
    if question.kind == "numeric" and question.answer_source != "literal":
        computed = (f" <small>({label('computed', 'en')} "
                    f"<code>{html.escape(question.answer_source)}</code>)</small>")
    answers = "".join(
        f"<p lang='{lang}'><b>{label('answer', lang)}:</b> {_md_inline(answer_text(question, lang))}"
        f"{computed if lang == 'en' else ''}<br><b>{label('explanation', lang)}:</b> "
        f"{_md_inline(question.explanation.get(lang))}</p>"
        + key_points_html(question.key_points, lang)
        for lang in LANGUAGES)
    return (f"<div class='moe-quiz-static-q'><p>{prompts}</p>{options}"
            f"<details><summary>{label('show_answer', 'en')} / {label('show_answer', 'ko')}"
            f"</summary>{answers}</details></div>")


def static_html(quiz: Quiz | list[Question], title: Text | None = None) -> str:
    """The whole quiz for a viewer without a kernel: questions in both languages, each answer
    and explanation in a collapsed <details> block."""
    questions = quiz.questions if isinstance(quiz, Quiz) else tuple(quiz)
    title = quiz.title if isinstance(quiz, Quiz) else title
    heading = f"<h4>{html.escape(title.en)} / {html.escape(title.ko)}</h4>" if title else ""
    body = "".join(_static_question(q, i) for i, q in enumerate(questions, start=1))
    return f"<div class='moe-quiz-static'>{heading}{body}</div>"
