"""The self-check quiz widget: questions from a quiz file (:mod:`moe_lab.quizzes`), a language
switch (English by default, 한국어), and per question a control, a Check button and feedback.

All text comes from the pure functions of :mod:`moe_lab.quizzes.render`; this module only
wires ipywidgets to them. Each question is four small widgets (prompt, input, button, feedback),
so a quiz of eight questions opens a few dozen models on the websocket (tens of kB) and an
answer is one short message each way. Without a kernel (a notebook viewer, widget state
stripped) the display bundle's HTML shows the questions with each answer in a collapsed
``<details>`` block.
"""

from __future__ import annotations

import ipywidgets as widgets

from moe_lab.quizzes import Question, Quiz, grade, load_quiz
from moe_lab.quizzes.render import (
    LANGUAGE_NAMES,
    feedback_html,
    label,
    option_labels,
    prompt_html,
    static_html,
)
from moe_lab.quizzes.schema import LANGUAGES, Text


class QuestionView(widgets.VBox):
    """One question: prompt, input (radio buttons, a number box or a text area), button, feedback."""

    def __init__(self, question: Question, number: int, lang: str) -> None:
        self.question, self.number, self.lang = question, number, lang
        self.result = None  # the last Grade
        self.prompt = widgets.HTML()
        if question.kind == "choice":
            self.input = widgets.RadioButtons(options=option_labels(question, lang), value=None,
                                              layout=widgets.Layout(width="auto"))
        elif question.kind == "numeric":
            self.input = widgets.Text(placeholder="0.0", layout=widgets.Layout(width="160px"))
        else:
            self.input = widgets.Textarea(layout=widgets.Layout(width="95%", height="80px"))
        self.button = widgets.Button(button_style="primary")
        self.feedback = widgets.HTML()
        self.button.on_click(lambda _: self.check())
        super().__init__([self.prompt, self.input, self.button, self.feedback],
                         layout=widgets.Layout(margin="0 0 12px 0"))
        self.add_class("moe-quiz-question")
        self.add_class(f"moe-quiz-{question.kind}")
        self.set_language(lang)

    def set_language(self, lang: str) -> None:
        self.lang = lang
        self.prompt.value = prompt_html(self.question, self.number, lang)
        self.button.description = label("reveal" if self.question.kind == "short" else "check",
                                        lang)
        if self.question.kind == "choice":
            chosen = self.input.value
            self.input.options = option_labels(self.question, lang)
            self.input.value = chosen
        elif self.question.kind == "short":
            self.input.placeholder = label("your_answer", lang)
        if self.result is not None:
            self.feedback.value = feedback_html(self.question, self.result, lang)

    def check(self) -> None:
        self.result = grade(self.question, self.input.value)
        self.feedback.value = feedback_html(self.question, self.result, self.lang)


class QuizWidget(widgets.VBox):
    """A quiz (a lesson number, a :class:`~moe_lab.quizzes.Quiz`, or a list of questions)."""

    def __init__(self, quiz: int | str | Quiz | list[Question], *, lang: str = "en",
                 title: Text | None = None) -> None:
        if lang not in LANGUAGES:
            raise ValueError(f"lang must be one of {LANGUAGES}, got {lang!r}")
        if not isinstance(quiz, (Quiz, list)):
            quiz = load_quiz(quiz)
        self.questions = tuple(quiz.questions if isinstance(quiz, Quiz) else quiz)
        if not self.questions:
            raise ValueError("quiz has no questions")
        self.title = quiz.title if isinstance(quiz, Quiz) else title
        self._static = static_html(list(self.questions), self.title)
        self.language = widgets.ToggleButtons(
            options=[(LANGUAGE_NAMES[code], code) for code in LANGUAGES], value=lang,
            style={"button_width": "80px"})
        self.language.add_class("moe-quiz-language")
        self.heading = widgets.HTML()
        self.views = [QuestionView(q, i, lang) for i, q in enumerate(self.questions, start=1)]
        self.language.observe(lambda change: self.set_language(change["new"]), names="value")
        super().__init__([widgets.HBox([self.heading, self.language]), *self.views])
        self.add_class("moe-quiz")
        self.set_language(lang)

    def set_language(self, lang: str) -> None:
        self.heading.value = (f"<h4 style='margin:4px 16px 4px 0'>{self.title.get(lang)}</h4>"
                              if self.title else "")
        for view in self.views:
            view.set_language(lang)

    def _repr_mimebundle_(self, **kwargs: object) -> dict[str, object] | None:
        """The widget view, and the static quiz as HTML for front ends that draw no widget."""
        base = getattr(super(), "_repr_mimebundle_", None)  # ipywidgets 7 (Colab) displays otherwise
        bundle = base(**kwargs) if base is not None else None
        if bundle is None:
            return None
        return {"text/html": self._static, **bundle}


def show_quiz(lesson: int | str | Quiz | list[Question], *, lang: str = "en") -> QuizWidget:
    """The quiz of ``lesson`` as a widget (the last expression of a cell displays it)."""
    return QuizWidget(lesson, lang=lang)
