"""``python -m moe_lab.train``: training the tiny language model (lesson 05).
The code is :mod:`moe_lab.lm.train`.

A command entry point only:
importing ``moe_lab.train`` gives ``moe_lab.lm.train`` itself.
"""

import sys

from moe_lab.lm import train as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
