#!/usr/bin/env bash
# MoE Lab: the two commands of the README.
#   bash run.sh course   set up (first time only) and open the course in JupyterLab
#   bash run.sh test     set up (first time only) and run every test, the lessons under nbval included
# Setup: a virtual environment in .venv, torch (if it has none yet), the requirements, the package.
# To choose your torch build (CUDA, ROCm, CPU), install it into .venv before the first run, or set
# TORCH_SPEC (default "torch>=2.4").
set -euo pipefail
cd "$(dirname "$0")"

setup() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
    if ! python -c "import torch" 2>/dev/null; then
        pip install "${TORCH_SPEC:-torch>=2.4}"
    fi
    if [ ! -f .venv/.moe_lab_installed ] || [ requirements.txt -nt .venv/.moe_lab_installed ] \
        || [ requirements-dev.txt -nt .venv/.moe_lab_installed ] \
        || [ pyproject.toml -nt .venv/.moe_lab_installed ]; then
        pip install -r requirements.txt -r requirements-dev.txt
        pip install --no-deps -e .
        touch .venv/.moe_lab_installed
    fi
}

case "${1:-}" in
    course)
        setup
        shift
        extra=()
        if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi
        exec jupyter lab --ip=127.0.0.1 "${extra[@]}" notebooks/00_start_here.ipynb "$@"
        ;;
    test)
        setup
        shift
        exec python -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg "$@"
        ;;
    *)
        echo "usage: bash run.sh course | test" >&2
        exit 2
        ;;
esac
