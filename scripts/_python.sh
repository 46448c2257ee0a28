# Sourced by scripts/demo and scripts/test (from the repository's root): which virtualenv,
# made with which Python.
#   VENV    the virtualenv's folder (default .venv). Another name keeps a second one beside
#           it, for another Python: PYTHON=python3.13 VENV=.venv-3.13 scripts/test
#   PYTHON  the interpreter that makes it. Unset: `python3` when it is 3.11 or newer, else
#           the newest of python3.13, python3.12, python3.11 that works (runs, and has venv
#           and ensurepip: Debian's python3-venv). An existing virtualenv is kept as it is;
#           with PYTHON set, its version must be PYTHON's.
VENV=${VENV:-.venv}

# True when "$1" runs, is Python 3.11 or newer and can make a virtualenv with pip
# (a pyenv shim of a version that is not selected fails to run: not working).
_celeray_python_works() {
  "$1" -c 'import ensurepip, sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

# Print the Python to make the virtualenv with; fail, saying why, when there is none.
celeray_python() {
  local candidate
  if [ -n "${PYTHON:-}" ]; then
    if _celeray_python_works "$PYTHON"; then echo "$PYTHON"; return 0; fi
    echo "PYTHON=$PYTHON is not a working Python 3.11 or newer with venv" >&2
    return 1
  fi
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && _celeray_python_works "$candidate"; then
      echo "$candidate"
      return 0
    fi
  done
  echo "no Python 3.11 or newer with venv found (Debian: apt install python3-venv);" \
    "set PYTHON to one" >&2
  return 1
}

# Make $VENV unless it exists, then bring its pip up to date.
celeray_venv() {
  local python want have
  if [ ! -x "$VENV/bin/python" ]; then
    python=$(celeray_python) || return 1
    "$python" -m venv "$VENV"
  elif [ -n "${PYTHON:-}" ]; then
    want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || return 1
    have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$want" != "$have" ]; then
      echo "$VENV has Python $have, PYTHON=$PYTHON is $want: name another VENV" \
        "(VENV=.venv-$want) or remove $VENV" >&2
      return 1
    fi
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
}
