"""The self-check quiz widget: questions from a quiz file (:mod:`moe_lab.quizzes`), a language
switch (English by default, 한국어), and per question a control, a Check button and feedback.

All text comes from the pure functions of :mod:`moe_lab.quizzes.render`; this module only
wires ipywidgets to them. Each question is a box of four small widgets (prompt, input, button,
feedback) whose Layout and Style models are shared across the quiz (:class:`_SharedLooks`), so a
quiz of eight questions opens about forty models on the websocket and an answer is one short
message each way. Without a kernel (a notebook viewer, widget state
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


class _SharedLooks:
    """One Layout and one Style model per kind of control, shared by all the questions of a quiz.

    Every ipywidgets control opens its own Layout and Style models unless given existing ones;
    sharing them, a question opens 5 models on the websocket (its box, prompt, input, button and
    feedback) instead of about 14.
    """

    def __init__(self) -> None:
        self._layouts: dict[str, widgets.Layout] = {}
        self._first: dict[str, widgets.DOMWidget] = {}

    def layout(self, key: str, **properties: str) -> widgets.Layout:
        if key not in self._layouts:
            self._layouts[key] = widgets.Layout(**properties)
        return self._layouts[key]

    def make(self, cls: type, key: str, *, layout: dict[str, str] | None = None,
             **traits: object) -> widgets.DOMWidget:
        """A new ``cls`` control that reuses the layout (and style) of the first one of ``key``."""
        first = self._first.get(key)
        if first is None:
            self._first[key] = cls(layout=self.layout(key, **(layout or {})), **traits)
            return self._first[key]
        shared = {"layout": first.layout}
        if hasattr(first, "style"):
            shared["style"] = first.style
        return cls(**shared, **traits)


class _FeedbackArea(widgets.Output):
    """What shows under a question, as HTML drawn by the notebook's own renderer (an ``Output``
    widget, not an ``HTML`` one): in JupyterLab its maths is typeset and a link to another
    lesson (``04_load_balancing.ipynb#heading``) opens that notebook in a tab at the heading,
    as a link in a markdown cell does, instead of navigating the whole page away."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._html = ""

    @property
    def value(self) -> str:
        return self._html

    @value.setter
    def value(self, html: str) -> None:
        self._html = html
        # one message to the browser; an empty string shows nothing
        self.outputs = ({"output_type": "display_data", "data": {"text/html": html},
                         "metadata": {}},) if html else ()


class QuestionView(widgets.VBox):
    """One question: prompt, input (radio buttons, a number box or a text area), button, feedback."""

    def __init__(self, question: Question, number: int, lang: str,
                 looks: _SharedLooks | None = None) -> None:
        looks = looks or _SharedLooks()
        self.question, self.number, self.lang = question, number, lang
        self.result = None  # the last Grade
        self.prompt = looks.make(widgets.HTMLMath, "html")  # $...$ typeset
        if question.kind == "choice":
            self.input = looks.make(widgets.RadioButtons, "choice", layout={"width": "auto"},
                                    options=option_labels(question, lang), value=None)
        elif question.kind == "numeric":
            self.input = looks.make(widgets.Text, "numeric", layout={"width": "160px"},
                                    placeholder="0.0")
        else:
            self.input = looks.make(widgets.Textarea, "short",
                                    layout={"width": "95%", "height": "80px"})
        self.button = looks.make(widgets.Button, "button", button_style="primary",
                                 layout={"width": "auto"})  # "Show the model answer" in full
        self.feedback = looks.make(_FeedbackArea, "feedback")
        self.button.on_click(lambda _: self.check())
        super().__init__([self.prompt, self.input, self.button, self.feedback],
                         layout=looks.layout("question", margin="0 0 12px 0"))
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
        looks = _SharedLooks()
        self.views = [QuestionView(q, i, lang, looks) for i, q in enumerate(self.questions, start=1)]
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
