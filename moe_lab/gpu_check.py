"""``python -m moe_lab.gpu_check``: the whole course on a GPU (lesson 06).
The code is :mod:`moe_lab.course.gpu_check`.

A command entry point only:
importing ``moe_lab.gpu_check`` gives ``moe_lab.course.gpu_check`` itself.
"""

import sys

from moe_lab.course import gpu_check as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
