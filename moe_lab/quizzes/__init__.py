"""Self-check quizzes: one YAML file per lesson (``NN.yaml``), the loader that validates them,
the grading, and the HTML they are drawn with. The widget is :class:`moe_lab.widgets.quiz.Quiz`.

The format is described in ``moe_lab/quizzes/README.md`` and :mod:`moe_lab.quizzes.schema`.
"""

from moe_lab.quizzes.grading import Grade, grade, parse_number
from moe_lab.quizzes.review import review_questions
from moe_lab.quizzes.schema import (
    LANGUAGES,
    KeyPoint,
    Option,
    Question,
    Quiz,
    QuizFormatError,
    Text,
    load_all,
    load_quiz,
    parse_quiz,
    quiz_files,
)

__all__ = ["LANGUAGES", "Grade", "KeyPoint", "Option", "Question", "Quiz", "QuizFormatError", "Text",
           "grade", "load_all", "load_quiz", "parse_number", "parse_quiz", "quiz_files",
           "review_questions"]
