#!/usr/bin/env bash
# The flake on a Mac (both macOS runners) or any of its four systems: `nix build .#`, the built
# `ferry` run (its --help and --version, and through `nix run`), then `nix flake check` — which
# builds this system's checks (the package, and the unit tests in nix/sandbox-unit-tests.nix in
# the build sandbox) — and every system's outputs evaluated without building them.
#
#   bash scripts/check-flake.sh        (needs Nix with network access; nothing else)
#
# No flake.lock is committed: it records nixpkgs' narHash, which only a fetch of nixpkgs can
# compute, and this repository was made without network access. Without one, the script locks
# nixpkgs-unstable now and prints what it locked, so the run says what it built against.
set -euo pipefail
cd "$(dirname "$0")/.."

nix() { command nix --extra-experimental-features 'nix-command flakes' "$@"; }
step() { printf '\n== %s\n' "$*"; }

if [ ! -f flake.lock ]; then
  step "nix flake lock (no flake.lock committed)"
  nix flake lock
  # A git flake sees only files git knows: flake.lock marked as to be added, so every command below uses this lock.
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then git add --intent-to-add flake.lock; fi
fi
nix flake metadata

step "nix build .#"
out=$(nix build .# --print-build-logs --no-link --print-out-paths)
echo "$out"
"$out/bin/ferry" --version
"$out/bin/ferry" --help >/dev/null
# The launchd template ships beside dist/: service-files reads it as install does.
cfg=$(mktemp -d)
trap 'rm -rf "$cfg"' EXIT
printf '[daemon]\nport = 31400\n' > "$cfg/ferry.toml"
"$out/bin/ferry" service-files --platform darwin --config "$cfg/ferry.toml" --home "$HOME" --out "$cfg/out" --json >/dev/null
grep -q "<string>$out/lib/node_modules/ferry/dist/cli.js</string>" "$cfg/out/dev.ferry.daemon.plist" \
  || { echo "the plist does not run the package's own cli.js:"; cat "$cfg/out/dev.ferry.daemon.plist"; exit 1; }

step "nix run .# -- --version"
nix run .# -- --version

step "nix flake check (this system: builds checks.package and checks.unit)"
nix flake check --print-build-logs

step "nix flake check --all-systems --no-build (every system's outputs evaluate)"
nix flake check --all-systems --no-build

echo
echo "check-flake: ok ($(nix eval --impure --raw --expr builtins.currentSystem))"
