#!/usr/bin/env bash
# The real third-party VST3 the effect tests load: Debian trixie's dragonfly-reverb-vst3.
#
# No archive host is written here: the source list is derived from this machine's own
# /etc/apt/sources.list.d/debian.sources (its first stanza, with `Suites: trixie`). apt runs with
# private source, list and cache folders under .cache/, so the system's apt state is untouched and
# nothing is installed: the .deb is only unpacked into .cache/plugins/.
# Idempotent (returns at once when the bundle is there), needs no terminal, prints the bundle's path.
set -euo pipefail

package=dragonfly-reverb-vst3
bundle_name=DragonflyRoomReverb.vst3

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugins_dir="$repo_root/.cache/plugins"
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

if bundle=$(find_bundle); then
  check_libraries "$bundle"
  say "$bundle_name already there"
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
# continuation lines it has) replaced by trixie. URIs, Components and Signed-By stay as the system has them.
awk '
  /^[[:space:]]*$/ { if (seen) exit; next }
  /^#/ { next }
  { seen = 1 }
  /^[[:space:]]/ { if (!skipping) print; next }
  /^Suites:/ { print "Suites: trixie"; skipping = 1; next }
  { skipping = 0; print }
' "$system_sources" >"$work_dir/sources.list.d/trixie.sources"
grep -q '^URIs:' "$work_dir/sources.list.d/trixie.sources" \
  || die "the first stanza of $system_sources has no URIs field; cannot derive a trixie source"

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

say "reading the trixie package index (private apt state in $work_dir)"
# apt-get update exits 0 on some fetch failures; the `download` step below is what proves success.
DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" -q update >"$work_dir/update.log" 2>&1 \
  || { cat "$work_dir/update.log" >&2; die "apt-get update for trixie failed (see above)"; }

say "downloading $package"
(cd "$work_dir/download" && DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" -q download "$package") \
  >"$work_dir/download.log" 2>&1 \
  || { cat "$work_dir/update.log" "$work_dir/download.log" >&2; die "apt-get download $package failed (see above)"; }

debs=("$work_dir"/download/"${package}"_*.deb)
[[ -f "${debs[0]}" ]] || die "apt-get download reported success but no ${package}_*.deb is in $work_dir/download"

# Unpack beside the final folder, then rename: an interrupted run never leaves a half bundle
# that the idempotence check above would take for a complete one. .cache/plugins belongs to this
# script, so whatever an earlier, interrupted run left there is replaced.
staging="$plugins_dir.partial"
rm -rf "$staging"
mkdir -p "$staging"
dpkg-deb -x "${debs[0]}" "$staging" || die "dpkg-deb -x ${debs[0]} failed"
rm -rf "$plugins_dir"
mv "$staging" "$plugins_dir"
rm -rf "$work_dir"

bundle=$(find_bundle) || die "$(basename "${debs[0]}") unpacked, but it holds no $bundle_name"
say "unpacked $(basename "${debs[0]}") into $plugins_dir"
check_libraries "$bundle"
echo "$bundle"
