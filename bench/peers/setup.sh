#!/usr/bin/env bash
# Create bench/.venv-peers with the pinned peers (dramatiq, huey, celery, redis-py,
# procrastinate, pgqueuer).
#
# The peers are never project dependencies: they live in their own virtual
# environment so that installing them cannot change what drainpool runs with.
# Idempotent: a stamp holds the hash of requirements.txt, and a venv whose stamp
# matches is left alone. bench/run.py calls this script when the stamp is stale.
#
# Usage: bench/peers/setup.sh [--force]
#   PYTHON=python3.11 bench/peers/setup.sh   to choose the interpreter
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(dirname "$here")/.venv-peers"
requirements="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "peers venv up to date: $venv"
    exit 0
fi

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
# Import every peer once, so a broken install fails here and not in the middle of a run.
"$venv/bin/python" -c "import asyncpg, celery, dramatiq, huey, pgqueuer, procrastinate, psycopg, redis"
echo "$want" >"$stamp"
echo "peers venv ready: $venv"
