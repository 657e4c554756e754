#!/bin/sh
# Install packages into the image's virtual environment /opt/cemsplit. Arguments go to pip.
# When /wheels contains wheels, pip installs from them alone (--no-index), so the build needs
# no network; otherwise it uses the package index. TORCH=cpu adds constraints/cpu.txt, which
# pins the CPU build of PyTorch; TORCH=any lets pip choose.
set -eu

case "${TORCH:-cpu}" in
  cpu) constraint="-c /src/constraints/cpu.txt" ;;
  any) constraint="" ;;
  *) echo "pip_install.sh: build argument TORCH=$TORCH is invalid; use cpu or any" >&2; exit 2 ;;
esac

if ls /wheels/*.whl >/dev/null 2>&1; then
  echo "pip_install.sh: installing $* from $(ls /wheels/*.whl | wc -l) local wheels, without a package index"
  source="--no-index --find-links /wheels"
else
  echo "pip_install.sh: no wheels in the wheel folder; installing $* from the package index"
  source=""
fi

# $source and $constraint are lists of options, split on purpose.
# shellcheck disable=SC2086
/opt/cemsplit/bin/pip install --quiet $source $constraint "$@"
