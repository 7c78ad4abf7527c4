#!/usr/bin/env bash
# The real third-party plugins the tests load:
# - the VST3 of the effect tests: Debian trixie's dragonfly-reverb-vst3, unpacked into .cache/plugins/;
# - ALSA's JACK PCM plugin (libasound2-plugins of this machine's own suite, for its libasound), whose
#   module alone is unpacked into .cache/alsa-lib/: the two-device stream tests make ALSA devices
#   that only record or only play on the test's JACK server with it (tests/bridge/test_stream_devices.py).
#   Installing the package would make ALSA's "jack" device every PortAudio program's default.
#
# No archive host is written here: the source lists are derived from this machine's own
# /etc/apt/sources.list.d/debian.sources (its first stanza as it is, and with `Suites: trixie`).
# apt runs with private source, list and cache folders under .cache/, so the system's apt state is
# untouched and nothing is installed.
# Idempotent (returns at once when both are there), needs no terminal, prints the bundle's path.
set -euo pipefail

package=dragonfly-reverb-vst3
bundle_name=DragonflyRoomReverb.vst3
alsa_package=libasound2-plugins
alsa_module_name=libasound_module_pcm_jack.so

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugins_dir="$repo_root/.cache/plugins"
alsa_dir="$repo_root/.cache/alsa-lib"
work_dir="$repo_root/.cache/apt-trixie"
system_sources=/etc/apt/sources.list.d/debian.sources

say() { echo "fetch-test-plugins: $*"; }
die() { echo "fetch-test-plugins: error: $*" >&2; exit 1; }

find_bundle() {
  [[ -d "$plugins_dir" ]] || return 1
  local found
  found=$(find "$plugins_dir" -type d -name "$bundle_name" -print -quit)
  [[ -n "$found" ]] && echo "$found"
}

# The plugin links the X11/GL libraries of its (unused, headless) editor; without them it does not load.
check_libraries() {
  command -v ldd >/dev/null 2>&1 || return 0
  local so missing
  for so in "$1"/Contents/*-linux/*.so; do
    [[ -f "$so" ]] || continue
    missing=$(ldd "$so" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
    [[ -z "$missing" ]] || die "$bundle_name needs shared libraries this machine lacks: ${missing% };" \
      "on Debian: apt-get install libgl1 libx11-6 libxext6 libxrandr2"
  done
}

if bundle=$(find_bundle) && [[ -f "$alsa_dir/$alsa_module_name" ]]; then
  check_libraries "$bundle"
  say "$bundle_name and $alsa_module_name already there"
  echo "$bundle"
  exit 0
fi

if [[ ! -f "$system_sources" ]] || ! command -v apt-get >/dev/null 2>&1 \
  || ! command -v dpkg-deb >/dev/null 2>&1; then
  say "not a Debian system (no $system_sources, apt-get or dpkg-deb); cannot fetch $package."
  say "install the Dragonfly Reverb VST3 yourself and unpack it so that .cache/plugins/ holds $bundle_name"
  exit 0
fi

rm -rf "$work_dir"
mkdir -p "$work_dir/sources.list.d" "$work_dir/lists/partial" "$work_dir/cache/archives/partial" \
  "$work_dir/download"

# First stanza only (stanzas end at a blank line), comments dropped, the Suites field (with any
# continuation lines it has) replaced by trixie (or kept, for the system's own suite). URIs,
# Components and Signed-By stay as the system has them.
first_stanza() {
  awk -v suite="$1" '
    /^[[:space:]]*$/ { if (seen) exit; next }
    /^#/ { next }
    { seen = 1 }
    /^[[:space:]]/ { if (!skipping) print; next }
    /^Suites:/ { if (suite == "") { print; next } print "Suites: " suite; skipping = 1; next }
    { skipping = 0; print }
  ' "$system_sources"
}
first_stanza trixie >"$work_dir/sources.list.d/trixie.sources"
first_stanza "" >"$work_dir/sources.list.d/system.sources"
grep -q '^URIs:' "$work_dir/sources.list.d/trixie.sources" \
  || die "the first stanza of $system_sources has no URIs field; cannot derive a trixie source"
# The system's own suite: the first word of the stanza's Suites field (bookworm).
system_suite=$(awk '/^Suites:/ { print $2; exit }' "$work_dir/sources.list.d/system.sources")
[[ -n "$system_suite" ]] || die "the first stanza of $system_sources has no Suites field"

# As root, apt downloads as the unprivileged _apt user: it must be able to write these folders.
if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then
  chown -R _apt "$work_dir/lists" "$work_dir/cache" "$work_dir/download"
fi

apt_opts=(
  -o "Dir::Etc::sourcelist=/dev/null"
  -o "Dir::Etc::sourceparts=$work_dir/sources.list.d"
  -o "Dir::State::Lists=$work_dir/lists"
  -o "Dir::Cache=$work_dir/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Get::List-Cleanup=0"
)

say "reading the trixie and $system_suite package indexes (private apt state in $work_dir)"
# apt-get update exits 0 on some fetch failures; the `download` step below is what proves success.
DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" -q update >"$work_dir/update.log" 2>&1 \
  || { cat "$work_dir/update.log" >&2; die "apt-get update for trixie failed (see above)"; }

# Download PACKAGE[/SUITE] and unpack it into the folder $2 (made afresh); its file's name in $deb_name.
unpack() {
  local name=${1%%/*} debs
  say "downloading $1"
  (cd "$work_dir/download" && DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" -q download "$1") \
    >"$work_dir/download.log" 2>&1 \
    || { cat "$work_dir/update.log" "$work_dir/download.log" >&2; die "apt-get download $1 failed (see above)"; }
  debs=("$work_dir"/download/"${name}"_*.deb)
  [[ -f "${debs[0]}" ]] || die "apt-get download reported success but no ${name}_*.deb is in $work_dir/download"
  rm -rf "$2"
  mkdir -p "$2"
  dpkg-deb -x "${debs[0]}" "$2" || die "dpkg-deb -x ${debs[0]} failed"
  deb_name=$(basename "${debs[0]}")
}

# Each is unpacked beside its final folder, then renamed: an interrupted run never leaves a half
# bundle that the idempotence check above would take for a complete one. .cache/plugins and
# .cache/alsa-lib belong to this script, so whatever an earlier, interrupted run left is replaced.
if ! bundle=$(find_bundle); then
  unpack "$package" "$plugins_dir.partial"
  rm -rf "$plugins_dir"
  mv "$plugins_dir.partial" "$plugins_dir"
  bundle=$(find_bundle) || die "$deb_name unpacked, but it holds no $bundle_name"
  say "unpacked $deb_name into $plugins_dir"
fi

if [[ ! -f "$alsa_dir/$alsa_module_name" ]]; then
  # The system's suite: trixie's module needs a newer C library than bookworm's.
  unpack "$alsa_package/$system_suite" "$alsa_dir.partial/deb"
  module=$(find "$alsa_dir.partial/deb" -name "$alsa_module_name" -print -quit)
  [[ -n "$module" ]] || die "$deb_name unpacked, but it holds no $alsa_module_name"
  mv "$module" "$alsa_dir.partial/$alsa_module_name"
  rm -rf "$alsa_dir.partial/deb" "$alsa_dir"
  mv "$alsa_dir.partial" "$alsa_dir"
  say "unpacked $alsa_module_name of $deb_name into $alsa_dir"
fi
rm -rf "$work_dir"

check_libraries "$bundle"
echo "$bundle"
