#!/usr/bin/env bash
# Create .venv in the repository and install cemsplit with its test tools into it.
#
# CEMSPLIT_TORCH=cpu (the default) pins torch==2.13.0 with constraints/cpu.txt. That is the CPU
# build where pip finds a CPU wheel (a local wheel folder, or PIP_EXTRA_INDEX_URL set to
# https://download.pytorch.org/whl/cpu); PyPI's own Linux wheel of that version is a CUDA build.
# CEMSPLIT_TORCH=any lets pip pick the newest PyTorch, which on Linux is a CUDA build of
# several GB: use it on GPU hosts.
# PYTHON selects the interpreter that creates the environment (default: python3, 3.10+).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
torch_choice=${CEMSPLIT_TORCH:-cpu}
case "$torch_choice" in
  cpu) constraint=(-c constraints/cpu.txt) ;;
  any) constraint=() ;;
  *) echo "setup.sh: CEMSPLIT_TORCH=$torch_choice is invalid; use cpu or any" >&2; exit 2 ;;
esac

if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup.sh: $python not found; install Python 3.10 or newer, or set PYTHON" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup.sh: creating .venv with $("$python" --version 2>&1)"
  "$python" -m venv .venv
fi

# Reinstall only when the dependency description or the torch choice changed.
stamp=.venv/.cemsplit-installed
wanted="$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-16)-$torch_choice"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "setup.sh: installing cemsplit and its dependencies into .venv (torch: $torch_choice)"
  # A pip configuration can name wheel folders that do not exist, and pip then warns once per
  # package about them, so those lines are filtered out. Other output stays visible.
  set -o pipefail
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${constraint[@]}" -e ".[dev]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$wanted" >"$stamp"
fi
