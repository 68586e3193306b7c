#!/usr/bin/env bash
# The other CPython versions this machine offers that the current stack supports (3.11 to 3.13), one path per line,
# one per minor version, leaving out the version of PYTHON (default python3: the one `make setup` uses).
# Looked for: python3.X on PATH (Debian/Ubuntu apt, e.g. Debian 13's python3.13), then pyenv's versions.
# Usage: scripts/other_pythons.sh [PYTHON]
set -euo pipefail
default=$("${1:-python3}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for minor in 3.11 3.12 3.13; do
  [[ $minor == "$default" ]] && continue
  found=""
  for candidate in "$(command -v "python$minor" 2>/dev/null || true)" \
                   "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$minor".*/bin/python"$minor"; do
    [[ -n $candidate && -x $candidate ]] || continue
    # A real CPython of that version, with venv (Debian splits it into python3.X-venv).
    if "$candidate" -c "import sys, venv, ensurepip; sys.exit(sys.implementation.name != 'cpython' or '%d.%d' % sys.version_info[:2] != '$minor')" 2>/dev/null; then
      found=$candidate
    fi
  done
  [[ -n $found ]] && echo "$found"
done
exit 0
