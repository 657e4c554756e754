#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest
# (for example -m "not slow" to skip the multi-process training runs).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?

.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  # pytest exits with 5 when it collected no tests: a wrong path or filter, never a pass.
  echo "test.sh: pytest collected no tests; check the tests/ folder and any -k or -m filter" >&2
  exit 1
fi
exit "$status"
