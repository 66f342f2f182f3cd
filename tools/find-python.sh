#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter (3.12 preferred), or fail with a clear message.
# Works with a plain python3.12 on PATH and with pyenv shims that only answer when PYENV_VERSION selects them.
set -euo pipefail

ok() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
real_path() { "$@" -c 'import sys; print(sys.executable)'; }

if [ -n "${PYTHON:-}" ] && ok "$PYTHON"; then real_path "$PYTHON"; exit 0; fi
for candidate in python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && ok "$candidate"; then real_path "$candidate"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])(\.[0-9]+)?$' | sort -V); do
    exe=$(PYENV_VERSION="$version" pyenv which python 2>/dev/null || true)
    if [ -n "$exe" ] && ok "$exe"; then echo "$exe"; exit 0; fi
  done
fi
echo "error: no Python >= 3.12 found (tried \$PYTHON, python3.12, python3.13, python3 and pyenv versions)." >&2
echo "       install Python 3.12 or point PYTHON=/path/to/python3.12" >&2
exit 1
