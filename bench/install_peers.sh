#!/usr/bin/env bash
# Installs the relays `deno task bench` compares Parley with, besides its own
# Deno baseline, into bench/.peers (git ignores it): Node's `ws` and Bun, from
# npm, at pinned versions. Run it once; the suite itself downloads nothing and
# skips, with a note, a relay that is not installed.
set -u
dir="$(cd "$(dirname "$0")" && pwd)/.peers"
mkdir -p "$dir"
npm() { command npm --prefix "$dir" --no-audit --no-fund --save-exact --loglevel=error "$@"; }

if npm install ws@8.23.0; then
  echo "Node ws: $(node --version), ws 8.23.0"
else
  echo "Node ws: could not install ws; the suite will skip it" >&2
fi

# The package brings the real binary (its install script moves it in place).
if npm install bun@1.4.5 && bun="$dir/node_modules/bun/bin/bun.exe" && "$bun" --version >/dev/null; then
  echo "Bun: $("$bun" --version)"
else
  echo "Bun: could not install or run it here; the suite will skip it" >&2
fi
