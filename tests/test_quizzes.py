"""The quiz files (moe_lab/quizzes/NN.yaml): every file loads and validates, computed answers
equal the package's exact values, broken files are refused naming the file and the question,
and grading marks right, wrong and unreadable answers."""

import copy
import json
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

from moe_lab.quizzes import (
    LANGUAGES,
    QuizFormatError,
    grade,
    load_all,
    load_quiz,
    parse_number,
    parse_quiz,
    quiz_files,
)
from moe_lab.quizzes import answers as computed

ROOT = Path(__file__).resolve().parents[1]
FILES = quiz_files()


def headings(lesson: str) -> set[str]:
    """The markdown headings of a lesson (its text source if there is one, else its notebook)."""
    source = next(iter((ROOT / "lessons").glob(f"{lesson}.py")), None)
    if source is not None:
        lines = [line[2:] for line in source.read_text(encoding="utf-8").splitlines()
                 if line.startswith("# #")]
    else:
        cells = json.loads((ROOT / "notebooks" / f"{lesson}.ipynb").read_text(encoding="utf-8"))
        lines = [line for cell in cells["cells"] if cell["cell_type"] == "markdown"
                 for line in "".join(cell["source"]).splitlines()]
    return {line.lstrip("#").strip() for line in lines if line.startswith("#")}


def test_there_are_quiz_files_and_the_package_ships_them():
    assert FILES, "no quiz files"
    # the package-data line of pyproject.toml (tomllib needs Python 3.11; the course runs on 3.10)
    line = re.search(r'^moe_lab = \[(.*)\]$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    package_data = re.findall(r'"([^"]+)"', line)
    for path in FILES + [ROOT / "moe_lab" / "quizzes" / "README.md"]:
        relative = path.relative_to(ROOT / "moe_lab").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in package_data), relative


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_validates_in_both_languages(path):
    quiz = load_quiz(path)
    assert path.stem == quiz.lesson[:2]
    assert (ROOT / "notebooks" / f"{quiz.lesson}.ipynb").is_file() or \
        (ROOT / "lessons" / f"{quiz.lesson}.py").is_file(), quiz.lesson
    if quiz.lesson[:2] != "12":
        assert 4 <= len(quiz.questions) <= 8, len(quiz.questions)
    for question in quiz.questions:
        for lang in LANGUAGES:
            assert question.prompt.get(lang) and question.explanation.get(lang)
        if question.kind == "choice":
            assert question.answer in [o.id for o in question.options]
        elif question.kind == "numeric":
            # a right answer, typed as the learner would, is marked right; a far one wrong
            assert grade(question, repr(question.answer)).correct is True
            assert grade(question, repr(question.answer * 2 + 1)).correct is False
        else:
            assert question.answer.en and question.answer.ko
        # "{answer}" is filled in for numeric questions and means nothing elsewhere
        assert "{answer}" not in question.prompt.en + question.prompt.ko + \
            question.explanation.en + question.explanation.ko, question.id


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_see_links_point_at_a_heading_of_a_lesson(path):
    for question in load_quiz(path).questions:
        for point in question.key_points:
            if point.see is None:
                continue
            lesson, heading = point.see.split("#", 1)
            assert heading in headings(lesson), f"{question.id}: {point.see}"


def test_quizzes_mix_the_three_kinds_over_the_course():
    kinds = {q.kind for quiz in load_all() for q in quiz.questions}
    assert kinds == {"choice", "numeric", "short"}


# ---- computed answers: the package's exact values at known points -------------------------

@pytest.mark.parametrize("num_experts,top_k", [(2, 1), (8, 1), (8, 2), (64, 8), (3, 2)])
def test_uniform_aux_loss_is_one(num_experts, top_k):
    assert computed.aux_loss_at_uniform_routing(num_experts, top_k) == pytest.approx(1.0)
    assert computed.hf_mixtral_aux_loss_at_uniform_routing(num_experts, top_k) == \
        pytest.approx(top_k)


@pytest.mark.parametrize("num_experts", [2, 8, 64])
def test_collapsed_aux_loss_is_e(num_experts):
    assert computed.aux_loss_at_collapse(num_experts) == pytest.approx(num_experts)


def test_other_computed_answers_at_known_points():
    import math
    assert computed.z_loss_of_constant_logits(8) == pytest.approx(math.log(8) ** 2)
    assert computed.capacity(1.25, 4096, 2, 8) == 1280  # ceil(1.25 * 4096 * 2 / 8)
    assert computed.capacity(1.0, 10, 1, 4) == 3  # ceil(2.5)
    assert computed.expert_params(4096, 14336) == 3 * 4096 * 14336
    assert computed.mixtral_params_billions("total") == 46.7  # Jiang et al. 2024
    assert computed.mixtral_params_billions("active") == 12.9
    with pytest.raises(ValueError, match="which"):
        computed.mixtral_params_billions("stored")


# ---- broken files are refused ---------------------------------------------------------------

GOOD = {
    "lesson": "04_load_balancing",
    "title": {"en": "t", "ko": "제목"},
    "questions": [
        {"id": "c", "kind": "choice", "prompt": {"en": "p", "ko": "문"},
         "options": [{"id": "a", "en": "A", "ko": "가"}, {"id": "b", "en": "B", "ko": "나"}],
         "answer": "a", "explanation": {"en": "e", "ko": "설"}},
        {"id": "n", "kind": "numeric", "prompt": {"en": "p", "ko": "문"},
         "answer": {"compute": "moe_lab.compute_capacity",
                    "args": {"capacity_factor": 1.0, "num_tokens": 10, "top_k": 1,
                             "num_experts": 4}},
         "explanation": {"en": "e", "ko": "설"}},
        {"id": "s", "kind": "short", "prompt": {"en": "p", "ko": "문"},
         "answer": {"en": "m", "ko": "모"}, "explanation": {"en": "e", "ko": "설"}},
    ],
}


def broken(edit):
    raw = copy.deepcopy(GOOD)
    edit(raw)
    return raw


def test_the_good_example_parses_and_computes_through_a_dotted_name():
    quiz = parse_quiz(GOOD)
    numeric = quiz.question("n")
    assert numeric.answer == 3.0
    assert numeric.answer_source.startswith("moe_lab.compute_capacity(")


def test_answer_placeholder_is_the_computed_value():
    raw = copy.deepcopy(GOOD)
    raw["questions"][1]["explanation"] = {"en": "C = {answer} slots", "ko": "C = {answer}개"}
    raw["questions"][1]["answer"]["args"]["num_tokens"] = 4000  # ceil(4000 / 4) = 1000
    numeric = parse_quiz(raw).question("n")
    assert numeric.explanation == type(numeric.explanation)(en="C = 1,000 slots", ko="C = 1,000개")


BROKEN = [
    ("missing ko", lambda r: r["questions"][0]["prompt"].pop("ko"), r"question 0 \(c\).*\['ko'\]"),
    ("empty en", lambda r: r["questions"][2]["answer"].update(en="  "), r"\(s\) answer.*\['en'\]"),
    ("no explanation", lambda r: r["questions"][1].pop("explanation"), r"\(n\): missing explanation"),
    ("answer not an option", lambda r: r["questions"][0].update(answer="z"), "not among the options"),
    ("one option", lambda r: r["questions"][0]["options"].pop(), "at least two options"),
    ("repeated option ids", lambda r: r["questions"][0]["options"][1].update(id="a"), "repeat"),
    ("option lacks ko", lambda r: r["questions"][0]["options"][1].pop("ko"), r"option b"),
    ("options out of order", lambda r: r["questions"][0]["options"].reverse(),
     r"option ids must be \['a', 'b'\] in the order shown"),
    ("maths in an option", lambda r: r["questions"][0]["options"][0].update(en="$f P$"),
     r"option a: no maths"),
    ("unknown kind", lambda r: r["questions"][0].update(kind="essay"), "kind must be one of"),
    ("typo key", lambda r: r["questions"][0].update(explaination={}), "unknown keys"),
    ("repeated ids", lambda r: r["questions"][1].update(id="c"), "question ids repeat"),
    ("not a number", lambda r: r["questions"][1].update(answer="1.0"), "finite number"),
    ("nan", lambda r: r["questions"][1].update(answer=float("nan")), "finite number"),
    ("bool", lambda r: r["questions"][1].update(answer=True), "finite number"),
    ("unknown function", lambda r: r["questions"][1]["answer"].update(compute="no_such"), "no function"),
    ("outside the package", lambda r: r["questions"][1]["answer"].update(compute="os.getcwd"),
     "moe_lab function"),
    ("bad args", lambda r: r["questions"][1]["answer"]["args"].update(top_k="x"), "raised"),
    ("negative tolerance", lambda r: r["questions"][1].update(tolerance=-1), "tolerance must be"),
    ("options on numeric", lambda r: r["questions"][1].update(options=[]), "only a choice"),
    ("bad see", lambda r: r["questions"][2].update(key_points=[{"en": "k", "ko": "요", "see": "04"}]),
     "NN_slug#Heading"),
    ("no questions", lambda r: r.update(questions=[]), "non-empty list"),
    ("bad lesson", lambda r: r.update(lesson="load_balancing"), "NN_slug"),
    ("no title", lambda r: r.pop("title"), "title"),
]


@pytest.mark.parametrize("edit,match", [(e, m) for _, e, m in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_quizzes_are_refused_naming_the_question(edit, match):
    with pytest.raises(QuizFormatError, match=match):
        parse_quiz(broken(edit))


def test_file_named_for_another_lesson_is_refused(tmp_path):
    import yaml
    path = tmp_path / "03.yaml"
    path.write_text(yaml.safe_dump(GOOD, allow_unicode=True), encoding="utf-8")
    with pytest.raises(QuizFormatError, match="named NN.yaml"):
        load_quiz(path)
    with pytest.raises(TypeError, match="lesson must be"):
        load_quiz(4.0)
    with pytest.raises(FileNotFoundError, match="no quiz file"):
        load_quiz(99)


# ---- grading --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [("1", 1.0), (" 2e-3 ", 2e-3), ("1,024", 1024.0),
                                        ("-0.5", -0.5), (".5", 0.5), ("", None), ("nan", None),
                                        ("1/2", None), ("inf", None), ("one", None),
                                        ("12,345.5", 12345.5), ("1,000,000", 1e6),
                                        ("7,81", None), ("1,5", None), ("10,24", None)])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_grading_marks_right_wrong_and_unreadable():
    quiz = parse_quiz(GOOD)
    choice, numeric, short = quiz.questions
    assert grade(choice, "a").correct is True and not grade(choice, "a").show_explanation
    wrong = grade(choice, "b")
    assert wrong.correct is False and wrong.show_explanation
    assert grade(choice, None).correct is None
    with pytest.raises(ValueError, match="option ids"):
        grade(choice, "z")
    assert grade(numeric, "3").correct is True
    assert grade(numeric, "3.5").correct is False
    assert grade(numeric, "three").correct is None
    assert grade(short, "   ").correct is None and not grade(short, "").show_explanation
    assert grade(short, "my answer").show_explanation


# ---- lesson 12: the starting card's questions ------------------------------------------------

def test_lesson_12_quotes_the_card_questions_and_answers_as_its_quiz_holds_them():
    source = ROOT / "lessons" / "12_review_and_interview.py"
    text = source.read_text(encoding="utf-8")
    markdown = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    card = load_quiz(12)
    assert len(card.questions) == 3
    for question in card.questions:
        assert question.kind == "short" and len(question.key_points) >= 3
        # verbatim Korean: as a question in section 1 and in the <details> of section 5
        assert markdown.count(question.prompt.ko) >= 2, question.id
        assert question.answer.ko in markdown and question.prompt.en in markdown, question.id
        assert all(point.see for point in question.key_points), question.id


def test_review_draws_one_marked_question_per_lesson():
    from moe_lab.quizzes import review_questions
    review = review_questions(seed=0)
    lessons = [quiz.lesson[:2] for quiz in load_all() if quiz.lesson[:2] != "12"]
    assert [q.id.split(":")[0] for q in review] == lessons
    assert all(q.kind in ("choice", "numeric") and q.prompt.en.startswith(f"[{q.id[:2]}] ")
               for q in review)
    assert review_questions(seed=0) == review  # seeded: the same every run
    assert len(review_questions(per_lesson=2)) == 2 * len(lessons)
    with pytest.raises(ValueError, match="per_lesson"):
        review_questions(per_lesson=0)


# ---- choice questions: the order shown, the answers' positions, the distractors (issue 20) ----

def _choices():
    return [(quiz, q) for quiz in load_all() for q in quiz.questions if q.kind == "choice"]


def test_the_order_in_the_file_is_the_order_shown():
    from moe_lab.quizzes.render import option_labels
    from moe_lab.widgets.quiz import QuestionView

    for quiz, question in _choices():
        ids = [o.id for o in question.options]
        assert ids == [chr(ord("a") + i) for i in range(len(ids))], (quiz.lesson, question.id)
        assert [i for _, i in option_labels(question, "en")] == ids
    view = QuestionView(_choices()[0][1], 1, "en")
    assert [value for _, value in view.input.options] == ["a", "b", "c"]


def test_right_answers_are_spread_across_positions():
    positions = []
    for quiz in load_all():
        mine = [[o.id for o in q.options].index(q.answer) for q in quiz.questions
                if q.kind == "choice"]
        if len(mine) >= 2:  # no quiz with one position for all its answers
            assert len(set(mine)) >= 2, (quiz.lesson, mine)
        positions += mine
    # over the course, no position holds much more than its share
    for position in range(3):
        share = positions.count(position) / len(positions)
        assert 0.2 < share < 0.45, (position, positions)


def test_distractors_are_as_long_as_the_right_option():
    """The right option is not given away by being the longest: the longest distractor is at
    least 70 % of its length in both languages, and it is the longest option in at most a third
    of the questions."""
    longest = 0
    for quiz, question in _choices():
        for lang in ("en", "ko"):
            right = len(next(o for o in question.options if o.id == question.answer).text.get(lang))
            other = max(len(o.text.get(lang)) for o in question.options if o.id != question.answer)
            assert other >= 0.7 * right, (quiz.lesson, question.id, lang, right, other)
            longest += lang == "en" and right > other
    assert longest <= len(_choices()) / 3, longest


def test_quiz_text_renders_markdown_and_leaves_maths_to_the_typesetter():
    from moe_lab.quizzes.render import key_points_html, option_labels, prompt_html
    from moe_lab.widgets.quiz import QuestionView

    raw = copy.deepcopy(GOOD)
    raw["questions"][0]["prompt"]["en"] = "Run `moe_lab.bench` for **two** sizes: $f \\cdot P$?"
    raw["questions"][0]["options"][0]["en"] = "the `nonzero` call"
    question = parse_quiz(raw).question("c")
    shown = prompt_html(question, 1, "en")
    assert "<code>moe_lab.bench</code>" in shown and "<b>two</b>" in shown and "`" not in shown
    assert "$f \\cdot P$" in shown  # left for MathJax: the prompt is an HTMLMath widget
    assert option_labels(question, "en")[0][0] == "the nonzero call"  # a label shows plain text
    view = QuestionView(question, 1, "en")
    assert type(view.prompt).__name__ == "HTMLMath"
    card = load_quiz(12)
    point = next(p for q in card.questions for p in q.key_points if "$" in p.see)
    assert "$f \\cdot P$" in key_points_html((point,), "en")


def test_reveal_button_is_as_wide_as_its_label():
    from moe_lab.widgets.quiz import show_quiz

    quiz = show_quiz(12)
    assert quiz.views[0].button.description == "Show the model answer"
    assert quiz.views[0].button.layout.width == "auto"


def test_feedback_is_drawn_by_the_notebook_renderer_so_links_open_in_jupyterlab():
    """The revealed model answer, with its key-point links, is an Output widget's text/html:
    JupyterLab renders it with the notebook's own link handler (the link opens the lesson in a
    tab, at the heading) and typesets its maths; tests/test_browser_quiz.py clicks a link."""
    from moe_lab.widgets.quiz import show_quiz

    view = show_quiz(12).views[0]
    view.input.value = "more parameters at the same compute"
    view.check()
    (output,) = view.feedback.outputs
    html = output["data"]["text/html"]
    assert html == view.feedback.value and 'href="00_start_here.ipynb#heading=3.-The-math' in html


def test_qwen3_active_accepts_the_model_cards_figure():
    question = load_quiz(8).question("qwen3-active")  # 3.35e9 by the calculator
    assert grade(question, "3.3e9").correct and grade(question, "3.4e9").correct
    assert grade(question, "3.1e9").correct is False
