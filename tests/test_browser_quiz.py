"""The self-check quiz in a real browser (JupyterLab 4 + Debian's chromium, driven by Playwright).

Lesson 12 (review and interview): run all cells; in the mixed review, a wrong numeric answer and a
wrong option show their explanation, the right ones are marked; in the card's quiz, a written
answer reveals the model answer with its linked checklist; the language switch turns every
prompt into the kernel's Korean text and back. No console errors, the lesson stays under the
websocket budget, and an answer costs a few kB. The quiz, cropped, is saved to
artifacts/browser/quiz.png (and, with ``MOE_LAB_DOCS_IMG=<dir>``, to that directory).

Skipped only when /usr/bin/chromium is absent (CI installs it). Never runs ``playwright install``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from browser.session import (
    ARTIFACTS,
    BROWSER_MARKS,
    check_console,
    check_lesson_bytes,
    opened_lesson,
)

pytestmark = BROWSER_MARKS

QUIZ_LESSON = "12_review_and_interview.ipynb"
MAX_BYTES_PER_ANSWER = 30_000  # one click or a typed answer and its feedback, both directions

# Every QuizWidget of the lesson (the last expression of a cell lands in Out), as JSON: per
# question its kind, right answer, a wrong one, and the prompt as the page shows it (plain text).
QUIZ_QUERY = """
import html as _html, json as _json, re as _re
from moe_lab.widgets.quiz import QuizWidget as _QuizWidget
from moe_lab.quizzes.render import prompt_html as _prompt_html
_pool = list(globals().values()) + list(globals().get("Out", {}).values())
_quizzes = list({id(_v): _v for _v in _pool if isinstance(_v, _QuizWidget)}.values())
def _plain(markup):
    return " ".join(_html.unescape(_re.sub(r"<[^>]+>", "", markup)).split())
def _view(v):
    q = v.question
    out = {"kind": q.kind, "prompt": {l: _plain(_prompt_html(q, v.number, l)) for l in ("en", "ko")},
           "explanation": q.explanation.en, "correct": None if v.result is None else v.result.correct}
    if q.kind == "choice":
        out["right"] = next(o.text.en for o in q.options if o.id == q.answer)
        out["wrong"] = next(o.text.en for o in q.options if o.id != q.answer)
    elif q.kind == "numeric":
        typed = lambda x: str(int(x)) if float(x).is_integer() else repr(x)  # as a learner types it
        out["right"], out["wrong"] = typed(q.answer), typed(q.answer * 3 + 7)
    else:
        out["right"] = q.answer.en
    return out
print(_json.dumps({_q.title.en: {"lang": _q.language.value, "titles": {"en": _q.title.en, "ko": _q.title.ko},
                                 "views": [_view(_v) for _v in _q.views]} for _q in _quizzes}))
"""


def plain(text: str) -> str:
    return " ".join(text.split())


def quiz_box(page, titles: dict[str, str]):
    """The quiz whose heading is one of ``titles`` (its English and Korean title), so the
    locator keeps finding it after the language switch."""
    either = re.compile("|".join(re.escape(t) for t in titles.values()))
    return page.locator(".moe-quiz").filter(has=page.locator("h4", has_text=either)).first


def save_quiz_image(page, box, max_height: int = 620) -> None:
    """The top of the quiz (heading, switch, first questions), cropped, as quiz.png."""
    box.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)  # let JupyterLab settle the scroll
    bbox = box.bounding_box()
    clip = {"x": bbox["x"], "y": max(bbox["y"], 0), "width": bbox["width"],
            "height": min(bbox["height"], max_height)}
    targets = [ARTIFACTS / "quiz.png"]
    if os.environ.get("MOE_LAB_DOCS_IMG"):
        targets.append(Path(os.environ["MOE_LAB_DOCS_IMG"]) / "quiz.png")
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), clip=clip, animations="disabled")
        print(f"saved {path} ({path.stat().st_size / 1e3:.0f} kB)")


def test_quiz_marks_explains_and_switches_language(lab) -> None:
    with opened_lesson(lab, QUIZ_LESSON) as (page, lesson, logs, meter):
        page.locator(".moe-quiz").nth(1).wait_for(state="visible")
        load_bytes, load_summary = meter.total_bytes, meter.summary()
        quizzes = lesson.kernel_json(QUIZ_QUERY)
        review_title = next(t for t in quizzes if t.startswith("Mixed review"))
        card_title = next(t for t in quizzes if t.startswith("The starting card"))
        review, card = quizzes[review_title]["views"], quizzes[card_title]["views"]
        box = quiz_box(page, quizzes[review_title]["titles"])
        questions = box.locator(".moe-quiz-question")
        assert questions.count() == len(review)
        meter.reset()
        answers = 0

        # A numeric question: a wrong number shows the explanation, the right one is marked.
        i = next(n for n, q in enumerate(review) if q["kind"] == "numeric")
        question = questions.nth(i)
        question.locator("input[type=text]").fill(review[i]["wrong"])
        question.locator("button").click()
        question.locator(".moe-quiz-wrong").wait_for(state="visible")
        shown = plain(question.locator(".moe-quiz-explanation").inner_text())
        assert plain(review[i]["explanation"]).replace("`", "")[:60] in shown
        question.locator("input[type=text]").fill(review[i]["right"])
        question.locator("button").click()
        question.locator(".moe-quiz-right").wait_for(state="visible")
        assert question.locator(".moe-quiz-explanation").count() == 0
        answers += 2

        # A choice question: the same, by clicking the options' labels.
        j = next(n for n, q in enumerate(review) if q["kind"] == "choice")
        question = questions.nth(j)
        question.locator("label", has_text=review[j]["wrong"]).first.click()
        question.locator("button").click()
        question.locator(".moe-quiz-wrong").wait_for(state="visible")
        assert question.locator(".moe-quiz-explanation").is_visible()
        question.locator("label", has_text=review[j]["right"]).first.click()
        question.locator("button").click()
        question.locator(".moe-quiz-right").wait_for(state="visible")
        answers += 4
        lesson.wait_kernel_idle()
        marked = lesson.kernel_json(QUIZ_QUERY)[review_title]["views"]
        assert marked[i]["correct"] is True and marked[j]["correct"] is True, \
            "the kernel's quiz did not record the right answers the page shows as marked"

        # The card's quiz: write an answer, reveal the model answer and the linked checklist.
        card_box = quiz_box(page, quizzes[card_title]["titles"])
        first = card_box.locator(".moe-quiz-question").first
        first.locator("textarea").fill("More parameters at the same active compute.")
        first.locator("button").click()
        first.locator(".moe-quiz-model").wait_for(state="visible")
        assert plain(card[0]["right"])[:60] in plain(first.locator(".moe-quiz-model").inner_text())
        links = first.locator(".moe-quiz-keypoints a")
        assert links.count() >= 3
        hrefs = [links.nth(n).get_attribute("href") for n in range(links.count())]
        # JupyterLab rewrites a local link to its download URL and handles the click itself
        assert all(re.search(r"\d\d_\w+\.ipynb(\?\S*)?#heading=\S+$", href) for href in hrefs), hrefs
        answers += 2

        # A key point's link opens its lesson in a JupyterLab tab, without a page navigation:
        # this page (and every live widget in it) stays as it was. Once that lesson is open, the
        # link scrolls it to the heading. (On the very first open JupyterLab 4.6 applies the
        # fragment before the new notebook is laid out and it stays at its top: JupyterLab's
        # own race, the same for a link in a markdown cell.)
        url_before = page.url
        link = links.nth(1)
        target, heading = link.inner_text().split(" · ", 1)
        link.click()
        tab = page.locator(".lm-TabBar-tab", has_text=f"{target}.ipynb")
        tab.first.wait_for(state="visible", timeout=30_000)
        assert page.url.split("/lab")[0] == url_before.split("/lab")[0]
        shown = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-MarkdownCell h2, "
                             ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-MarkdownCell h3",
                             has_text=heading).first
        shown.wait_for(state="attached", timeout=30_000)
        page.wait_for_timeout(1000)  # the new notebook settles
        page.locator(".lm-TabBar-tab", has_text=QUIZ_LESSON).first.click()
        first.locator(".moe-quiz-model").wait_for(state="visible")
        link.click()  # the lesson is open now: the link scrolls it to the heading
        page.wait_for_function(  # scrolled to it: the heading is in the viewport
            "el => { const r = el.getBoundingClientRect(); "
            "return r.top >= 0 && r.top < window.innerHeight; }",
            arg=shown.element_handle(), timeout=30_000, polling=200)
        page.locator(".lm-TabBar-tab", has_text=QUIZ_LESSON).first.click()
        first.locator(".moe-quiz-model").wait_for(state="visible")  # the widget is still live
        assert first.locator("textarea").input_value().startswith("More parameters")

        # The language switch: every prompt becomes the kernel's Korean text, then English again.
        for lang, button in (("ko", "한국어"), ("en", "English")):
            box.locator(".moe-quiz-language button", has_text=button).click()
            # The kernel sends one update per question: wait until every prompt has switched
            # (under load the later ones arrive after the first). Queried afresh at each poll, in
            # case a widget redraws its text; a timeout falls through to the assertions below,
            # which name the question that did not switch.
            from playwright.sync_api import TimeoutError as PlaywrightTimeout

            try:
                page.wait_for_function(
                    "([box, texts]) => { const qs = box.querySelectorAll('.moe-quiz-question'); "
                    "return qs.length === texts.length && texts.every((text, n) => { "
                    "const el = qs[n].querySelector('.widget-htmlmath-content'); "
                    "return el !== null && el.innerText.replace(/\\s+/g, ' ').trim() === text; }); }",
                    arg=[box.element_handle(), [q["prompt"][lang] for q in review]],
                    timeout=30_000, polling=200)
            except PlaywrightTimeout:
                pass
            for n, expected in enumerate(review):
                shown = plain(questions.nth(n).locator(".widget-htmlmath-content").first
                              .inner_text())
                assert shown == expected["prompt"][lang], f"question {n + 1} in {lang}: {shown!r}"
            answers += 1
            if lang == "ko":
                mark = questions.nth(i).locator(".moe-quiz-right").inner_text()
                assert "정답" in mark, "the mark did not follow the language switch"
        lesson.wait_kernel_idle()

        # For the picture: the first question marked right, a wrong option explained.
        question = questions.nth(j)
        question.locator("label", has_text=review[j]["wrong"]).first.click()
        question.locator("button").click()
        question.locator(".moe-quiz-explanation").wait_for(state="visible")
        answers += 2
        lesson.wait_kernel_idle()
        save_quiz_image(page, box)
        assert lesson.kernel_json(QUIZ_QUERY)[review_title]["lang"] == "en"

        print(f"{QUIZ_LESSON}: {answers} interactions: kernel websocket {meter.summary()}, "
              f"{meter.total_bytes / answers / 1e3:.1f} kB per interaction")
        check_console(QUIZ_LESSON, logs)
        assert meter.total_bytes / answers < MAX_BYTES_PER_ANSWER, meter.summary()
        check_lesson_bytes(QUIZ_LESSON, load_bytes, load_summary)
