#!/usr/bin/env bash
# MoE Lab: the two commands of the README.
#   bash run.sh course   set up (first time only) and open the course in JupyterLab (your copy of
#                        the lessons is my_course/)
#   bash run.sh test     set up (first time only) and run every test, the lessons under nbval included
#   bash run.sh site     set up (first time only) and build the course's website from the stored
#                        notebooks into build/site/html (nothing is re-executed or downloaded)
# Setup: a virtual environment in .venv, torch (if it has none yet), the requirements, the package.
# The course installs requirements.txt only; the tests add requirements-dev.txt, the site
# requirements-site.txt.
# To choose your torch build (CUDA, ROCm, CPU), install it into .venv before the first run, or set
# TORCH_SPEC (default "torch>=2.6"). MOE_LAB_VENV names another environment folder than .venv
# (CI tests a second torch in .venv-2.14 this way).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MOE_LAB_VENV:-.venv}"

setup() {
    # $1: "course" (what a learner needs), "dev" (the course plus tests, linters, jupytext) or
    # "site" (the course plus the website's builder)
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    if ! python -c "import torch" 2>/dev/null; then
        pip install "${TORCH_SPEC:-torch>=2.6}"
    fi
    local marker="$VENV/.moe_lab_$1" files=(-r requirements.txt)
    if [ "$1" = dev ]; then files+=(-r requirements-dev.txt); fi
    if [ "$1" = site ]; then files+=(-r requirements-site.txt); fi
    if [ ! -f "$marker" ] || [ requirements.txt -nt "$marker" ] || [ requirements-dev.txt -nt "$marker" ] \
        || [ requirements-site.txt -nt "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
        pip install "${files[@]}"
        pip install --no-deps -e .
        touch "$marker"
    fi
}

# The learner's working copy of the lessons: $COPY (ignored by git), so the tracked notebooks stay
# as they ship (nbval tests them, `git pull` never conflicts). A lesson is copied when the copy has
# none; an existing copy is never overwritten, only reported when the shipped lesson is newer.
COPY=my_course
working_copy() {
    mkdir -p "$COPY"
    local lesson copy
    for lesson in notebooks/[0-9]*.ipynb; do
        copy="$COPY/$(basename "$lesson")"
        if [ ! -e "$copy" ]; then
            cp "$lesson" "$copy"
        elif [ "$lesson" -nt "$copy" ]; then
            echo "note: $lesson is newer than your $copy (delete your copy to get the new one)" >&2
        fi
    done
}

case "${1:-}" in
    course)
        setup course
        shift
        extra=()
        if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi
        working_copy
        # The course's JupyterLab settings (course/): saved widgets show their last figure once
        # their kernel is gone, no news pop-up. The server's root is the repository (moe_lab/ is
        # one click away); it opens the learner's copy of lesson 00.
        export JUPYTER_CONFIG_PATH="$PWD/course${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
        exec jupyter lab --ip=127.0.0.1 "${extra[@]}" --ServerApp.root_dir="$PWD" \
            "$COPY/00_start_here.ipynb" "$@"
        ;;
    test)
        setup dev
        shift
        exec python -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg "$@"
        ;;
    site)
        setup site
        shift
        exec python tools/build_site.py "$@"
        ;;
    *)
        echo "usage: bash run.sh course | test | site" >&2
        exit 2
        ;;
esac
