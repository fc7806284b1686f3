#!/usr/bin/env bash
# MoE Lab: the two commands of the README.
#   bash run.sh course   set up (first time only) and open the course in JupyterLab
#   bash run.sh test     set up (first time only) and run every test, the lessons under nbval included
# Setup: a virtual environment in .venv, torch (if it has none yet), the requirements, the package.
# The course installs requirements.txt only; the tests add requirements-dev.txt.
# To choose your torch build (CUDA, ROCm, CPU), install it into .venv before the first run, or set
# TORCH_SPEC (default "torch>=2.4").
set -euo pipefail
cd "$(dirname "$0")"

setup() {
    # $1: "course" (what a learner needs) or "dev" (the course plus tests, linters, jupytext)
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
    if ! python -c "import torch" 2>/dev/null; then
        pip install "${TORCH_SPEC:-torch>=2.4}"
    fi
    local marker=".venv/.moe_lab_$1" files=(-r requirements.txt)
    if [ "$1" = dev ]; then files+=(-r requirements-dev.txt); fi
    if [ ! -f "$marker" ] || [ requirements.txt -nt "$marker" ] \
        || [ requirements-dev.txt -nt "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
        pip install "${files[@]}"
        pip install --no-deps -e .
        touch "$marker"
    fi
}

case "${1:-}" in
    course)
        setup course
        shift
        extra=()
        if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi
        exec jupyter lab --ip=127.0.0.1 "${extra[@]}" notebooks/00_start_here.ipynb "$@"
        ;;
    test)
        setup dev
        shift
        exec python -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg "$@"
        ;;
    *)
        echo "usage: bash run.sh course | test" >&2
        exit 2
        ;;
esac
