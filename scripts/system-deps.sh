#!/usr/bin/env bash
# System packages the daemon and its tests need: JACK (the audio server the tests run with its
# dummy backend), PortAudio (sounddevice's Linux wheel does not bundle it), and the X11/GL
# libraries VST3 plugins link against even when loaded headless, and espeak-ng (speech the
# transcription tests synthesise), and PostgreSQL (the server the shared job store's tests start).
# As root on Debian/Ubuntu this installs them; otherwise it prints the exact command to run.
set -euo pipefail

packages=(jackd2 libportaudio2 libgl1 libx11-6 libxext6 libxrandr2 espeak-ng postgresql)

if ! command -v dpkg-query >/dev/null 2>&1; then
  if [[ "$(uname -s)" == "Darwin" ]]; then
    command -v brew >/dev/null 2>&1 && ! brew list portaudio >/dev/null 2>&1 \
      && echo "system-deps: PortAudio missing; run: brew install portaudio jack"
  else
    echo "system-deps: not a Debian/Ubuntu system; install JACK 2 and PortAudio with your package manager"
  fi
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  echo "system-deps: installing ${missing[*]}"
  apt-get update -qq
  # Without the frontend setting, jackd2's realtime-priority question blocks a script with no terminal.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "system-deps: missing ${missing[*]}; run this once, then make again:"
  echo "  sudo sh -c '$cmd'"
fi
