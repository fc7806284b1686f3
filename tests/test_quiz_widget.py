"""The quiz's presentation (pure HTML functions) and the widget that draws it: a wrong answer
shows its explanation, a right one is marked, the language switch changes every text, and the
static view (no kernel) holds each answer inside a collapsed <details> block."""

import re

import pytest

from moe_lab.quizzes import load_all, load_quiz, parse_quiz
from moe_lab.quizzes.grading import grade
from moe_lab.quizzes.render import answer_text, feedback_html, see_link, static_html
from moe_lab.widgets.quiz import QuizWidget, show_quiz

QUIZ = load_quiz(4)


def first(kind):
    return next(view for view in QuizWidget(QUIZ).views if view.question.kind == kind)


def test_static_view_hides_every_answer_in_a_details_block():
    for quiz in load_all():
        page = static_html(quiz)
        blocks = re.findall(r"<details>(.*?)</details>", page, flags=re.S)
        assert len(blocks) == len(quiz.questions)
        for question, block in zip(quiz.questions, blocks, strict=True):
            outside = page.replace(block, "")
            # the explanation's opening words (40 characters: a first "sentence" may be just "7")
            assert question.explanation.en[:40] not in outside.replace("&#x27;", "'")
            assert "<summary>" in block
            for lang in ("en", "ko"):
                assert re.sub(r"[`*]", "", question.explanation.get(lang))[:20] in \
                    re.sub(r"</?(code|b)>", "", block).replace("&#x27;", "'").replace("&quot;", '"')
        # no <details open>: collapsed by default
        assert "<details open" not in page


def test_static_view_escapes_html_in_the_text():
    raw = {"lesson": "04_x", "title": {"en": "t", "ko": "제"},
           "questions": [{"id": "s", "kind": "short", "prompt": {"en": "<script>x</script>", "ko": "문"},
                          "answer": {"en": "a < b", "ko": "가"}, "explanation": {"en": "e", "ko": "설"}}]}
    page = static_html(parse_quiz(raw))
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &lt; b" in page


def test_numeric_answers_show_their_computation_in_the_static_view():
    page = static_html(QUIZ)
    assert "moe_lab.quizzes.answers.aux_loss_at_uniform_routing(num_experts=8, top_k=2)" in page
    assert answer_text(QUIZ.question("uniform-loss"), "en") == "1"


def test_feedback_right_is_marked_wrong_shows_explanation():
    question = QUIZ.question("why-f-times-p")
    wrong_id = next(o.id for o in question.options if o.id != question.answer)
    right = feedback_html(question, grade(question, question.answer), "en")
    wrong = feedback_html(question, grade(question, wrong_id), "en")
    assert "✓" in right and "Why" not in right
    assert "✗" in wrong and "argmax/top-k is piecewise constant" in wrong
    assert "해설" in feedback_html(question, grade(question, wrong_id), "ko")


def test_see_link_is_a_notebook_heading_anchor():
    assert see_link("04_load_balancing#2. Routing collapse, reproduced") == (
        "04_load_balancing.ipynb#2.-Routing-collapse,-reproduced",
        "04_load_balancing · 2. Routing collapse, reproduced")
    # in JupyterLab the widget's link names the heading, found even before its cell is drawn
    assert see_link("06_efficiency#Visualise: timings (`moe_lab.systems.bench`)", live=True)[0] \
        == "06_efficiency.ipynb#heading=Visualise:-timings-(moe_lab.systems.bench)"


def test_widget_marks_right_and_explains_wrong():
    numeric = first("numeric")
    numeric.input.value = "7"
    numeric.button.click()
    assert "✗" in numeric.feedback.value and "Why" in numeric.feedback.value
    numeric.input.value = "1.0"
    numeric.button.click()
    assert "✓" in numeric.feedback.value and "Why" not in numeric.feedback.value
    numeric.input.value = "one"
    numeric.button.click()
    assert "number" in numeric.feedback.value


def test_widget_choice_and_short_answer():
    choice = first("choice")
    choice.input.value = choice.question.answer
    choice.button.click()
    assert "✓" in choice.feedback.value
    short = first("short")
    short.button.click()
    assert "Write an answer first" in short.feedback.value
    short.input.value = "the router prefers a few experts"
    short.button.click()
    assert short.question.answer.en[:30] in short.feedback.value


def test_language_switch_changes_every_text_and_keeps_the_answers():
    quiz = show_quiz(4)
    choice = next(v for v in quiz.views if v.question.kind == "choice")
    choice.input.value = "b"
    choice.button.click()
    before = [v.prompt.value for v in quiz.views] + [quiz.heading.value, choice.feedback.value,
                                                     choice.button.description]
    quiz.language.value = "ko"
    after = [v.prompt.value for v in quiz.views] + [quiz.heading.value, choice.feedback.value,
                                                    choice.button.description]
    assert all(b != a for b, a in zip(before, after, strict=True))
    assert choice.input.value == "b"  # the chosen option survives the relabelling
    assert [label for label, _ in choice.input.options] == [o.text.ko for o in choice.question.options]
    assert "해설" in choice.feedback.value and choice.button.description == "확인"
    quiz.language.value = "en"
    assert [v.prompt.value for v in quiz.views] + [quiz.heading.value, choice.feedback.value,
                                                   choice.button.description] == before


def test_bundle_carries_the_static_html_after_the_widget_view():
    bundle = show_quiz(4)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"].count("<details>") == len(QUIZ.questions)


def test_widget_bad_input():
    with pytest.raises(ValueError, match="lang must be one of"):
        QuizWidget(4, lang="fr")
    with pytest.raises(ValueError, match="no questions"):
        QuizWidget([])
    with pytest.raises(FileNotFoundError):
        QuizWidget(99)


def test_questions_share_their_layout_and_style_models():
    """A quiz opens about 5 widget models per question (its own box, prompt, input, button and
    feedback), not one Layout and one Style more per control."""
    import ipywidgets as widgets

    from moe_lab.widgets.quiz import QuestionView

    registry = widgets.widget._instances if hasattr(widgets.widget, "_instances") else widgets.Widget.widgets
    before = set(registry)
    quiz = show_quiz(4)
    opened = len(set(registry) - before)
    # the quiz's header (its box, heading, language toggle: 10 models with their looks) and at
    # most 12 shared looks (the feedback area has its own), then 5 per question
    assert opened <= 10 + 12 + 5 * len(quiz.views), f"{opened} models for {len(quiz.views)} questions"
    first, second = quiz.views[0], quiz.views[1]
    assert first.button.layout is second.button.layout and first.button.style is second.button.style
    assert first.feedback is not second.feedback and first.input is not second.input
    alone = QuestionView(QUIZ.questions[0], 1, "en")  # without a quiz: its own looks
    assert alone.prompt.layout is not first.prompt.layout
