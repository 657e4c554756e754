#!/usr/bin/env bash
# Set up .venv if needed, then run the demo: server, attacker and client as three local
# processes on the embedded MNIST digits. Extra arguments go to `cemsplit demo`.
# Default run directory: runs/demo-<date>-<time>.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

out_given=0
for argument in "$@"; do
  [ "$argument" = "--out" ] && out_given=1
done
if [ "$out_given" -eq 0 ]; then
  set -- --out "runs/demo-$(date +%Y%m%d-%H%M%S)" "$@"
fi
exec .venv/bin/cemsplit demo "$@"
