"""``python -m moe_lab.bench``: the benchmark (lesson 06).
The code is :mod:`moe_lab.systems.bench`.

A command entry point only:
importing ``moe_lab.bench`` gives ``moe_lab.systems.bench`` itself.
"""

import sys

from moe_lab.systems import bench as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
