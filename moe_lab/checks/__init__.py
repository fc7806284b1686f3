"""Exercise checkers: run the learner's function on small seeded inputs, compare it with the
package's reference, and explain a wrong answer with the likely mistake.

Each lesson's checkers live in their own module (``moe_lab.checks.router`` for lesson 01, ...)
and are built with :func:`moe_lab.checks.core.checker`. A stub that still raises
``NotImplementedError`` gets a friendly "not implemented yet" line, not a traceback, and the
checker returns a falsy result, so the lesson can go on with the reference implementation.
"""

from moe_lab.checks.core import CheckFailed, CheckResult, checker, expect_close

__all__ = ["CheckFailed", "CheckResult", "checker", "expect_close"]
