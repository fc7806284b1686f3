"""Run transformers' own model tests with every MoE block swapped by moe_lab (issue 21).

transformers' test files are not part of this project and are never copied into it: this script
prepares them beside the project (from the installed version's sdist and a snapshot of the
repository, see /work/shared/notes/transformers-model-tests.md), runs them with and without the
swap, and compares the outcomes test by test.

    python tools/transformers_model_tests.py prepare WORK SDIST_DIR SNAPSHOT_GIT_DIR
    python tools/transformers_model_tests.py run WORK mixtral --swap --hidden-act silu
    python tools/transformers_model_tests.py compare WORK/results/mixtral-gelu-plain.xml \\
        WORK/results/mixtral-gelu-swap.xml

``run`` loads this file as a pytest plugin (``-p transformers_model_tests``): with
``MOE_LAB_SWAP=1`` every transformers model, once built (``PreTrainedModel.post_init``), has
its MoE blocks replaced by :func:`moe_lab.interop.swap_moe_blocks`; ``MOE_LAB_HIDDEN_ACT`` sets
the tester's ``hidden_act`` (its default is ``"gelu"``). The outcome measured last, and how to
read it: docs/transformers-model-tests.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

# the shared tester defaults of transformers 5.16-dev (testing_utils), which 5.25 no longer has
TESTER_DEFAULTS = '''
import os as _os
_TEXT_MODEL_TESTER_DEFAULTS = {
    "batch_size": 13, "seq_length": 7, "is_training": True, "use_input_mask": True,
    "use_labels": True, "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 32,
    "hidden_act": _os.environ.get("MOE_LAB_HIDDEN_ACT", "gelu"),
    "max_position_embeddings": 512, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    "expert_interval": 1, "moe_layer_start_index": 0, "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 36, "shared_expert_gate": True,
    "moe_num_shared_experts": 2, "num_experts_per_tok": 2, "num_experts": 8,
}
'''

DISTRIBUTED_STAND_IN = '''"""Stand-in: no distributed test helpers in the snapshot; every use skips."""
import unittest


def __getattr__(name):
    def skip(*args, **kwargs):
        raise unittest.SkipTest(f"distributed_testing_utils.{name} is not available here")
    return skip
'''


def prepare(work: Path, sdist_dir: Path, snapshot: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", f"--git-dir={snapshot}", "archive", "main", "tests",
                              "conftest.py", "pyproject.toml", "utils/test_module"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(work)], input=archive, check=True)
    import transformers

    sdist = next(sdist_dir.glob(f"transformers-{transformers.__version__}.tar.gz"))
    with tarfile.open(sdist) as tar:
        prefix = f"transformers-{transformers.__version__}/tests/"
        for member in tar.getmembers():
            if member.name.startswith(prefix) and member.name.count("/") == 2 \
                    and member.name.endswith(".py"):
                member.name = member.name.removeprefix(prefix)
                tar.extract(member, work / "tests", filter="data")
    tester = work / "tests" / "causal_lm_tester.py"
    text = tester.read_text().replace("    _TEXT_MODEL_TESTER_DEFAULTS,\n", "")
    tester.write_text(text.replace("\nfrom .test_configuration_common", TESTER_DEFAULTS
                                   + "\nfrom .test_configuration_common", 1))
    (work / "tests" / "distributed_testing_utils.py").write_text(DISTRIBUTED_STAND_IN)
    (work / "src").mkdir(exist_ok=True)
    link = work / "src" / "transformers"
    if not link.exists():
        link.symlink_to(Path(transformers.__file__).parent)
    shutil.copy(__file__, work / "transformers_model_tests.py")


def run(work: Path, model: str, *, swap: bool, hidden_act: str, extra: list[str]) -> int:
    name = f"{model}-{hidden_act}-{'swap' if swap else 'plain'}"
    (work / "results").mkdir(exist_ok=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "MOE_LAB_SWAP": "1" if swap else "0", "MOE_LAB_HIDDEN_ACT": hidden_act,
                        "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", f"tests/models/{model}/test_modeling_{model}.py",
               "-q", "-p", "no:cacheprovider", "-p", "transformers_model_tests",
               f"--junitxml=results/{name}.xml", *extra]
    return subprocess.run(command, cwd=work, env=env).returncode


def outcomes(junit: Path) -> dict[str, str]:
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[test] = ("failed" if kinds & {"failure", "error"} else
                        "skipped" if "skipped" in kinds else "passed")
    return result


def compare(plain: Path, swapped: Path) -> None:
    a, b = outcomes(plain), outcomes(swapped)
    for label, run_outcomes in (("without the swap", a), ("with the swap", b)):
        counts = [sum(v == kind for v in run_outcomes.values())
                  for kind in ("passed", "failed", "skipped")]
        print(f"{label}: {counts[0]} passed / {counts[1]} failed / {counts[2]} skipped")
    for test in sorted(set(a) | set(b)):
        if a.get(test) != b.get(test):
            print(f"  {test}: {a.get(test)} -> {b.get(test)}")


# ----------------------------------------------------------------------------- the pytest plugin

def _swap_after_post_init() -> None:
    from transformers.modeling_utils import PreTrainedModel

    from moe_lab.interop import swap_moe_blocks
    from moe_lab.interop.swap import _is_family_block

    original = PreTrainedModel.post_init

    def post_init(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if any(_is_family_block(module) for module in self.modules()):
            swap_moe_blocks(self)
        return result

    PreTrainedModel.post_init = post_init


def pytest_configure(config) -> None:
    if os.environ.get("MOE_LAB_SWAP") == "1":
        _swap_after_post_init()


if __name__ == "__main__":
    action, *args = sys.argv[1:]
    if action == "prepare":
        prepare(Path(args[0]), Path(args[1]), Path(args[2]))
    elif action == "run":
        work, model, *rest = args
        act = rest[rest.index("--hidden-act") + 1] if "--hidden-act" in rest else "gelu"
        extra = rest[rest.index("--") + 1:] if "--" in rest else []
        sys.exit(run(Path(work), model, swap="--swap" in rest, hidden_act=act, extra=extra))
    elif action == "compare":
        compare(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(__doc__)
