#!/usr/bin/env bash
# ferry's nix-darwin module on a real Mac (the Intel runner of the macOS workflow): a nix-darwin
# configuration that imports this checkout's flake and sets services.ferry.enable, switched in
# with darwin-rebuild; then a real `nix build` of an x86_64-linux derivation, which the host's
# nix-daemon can only send to ferry (nix.buildMachines), through the alias in
# /etc/ssh/ssh_config.d/ferry.conf, to the guest the LaunchAgent's daemon boots on demand.
# Last, the module switched off again: the agent, the alias and the machines entry are gone.
#
#   bash scripts/check-darwin-module.sh     (as the runner's login user, with sudo; Nix installed
#                                           by the upstream installer, not yet managed by nix-darwin)
#
# Written from nix-darwin's own CI (a1fa429, .github/workflows/test.yml): its flake template, the
# installer's nix.conf allowed through environment.etc."nix/nix.conf".knownSha256Hashes, and
# `sudo nix run github:nix-darwin/nix-darwin/master#darwin-rebuild -- switch`. It changes the machine: run it on a CI runner.
set -euo pipefail
ferry_src=$(cd "$(dirname "$0")/.." && pwd)
user=$(id -un)
system=$(nix --extra-experimental-features nix-command eval --impure --raw --expr builtins.currentSystem)
work=$(mktemp -d)
step() { printf '\n== %s\n' "$*"; }
nixf() { nix --extra-experimental-features 'nix-command flakes' "$@"; }

# The configuration: the module on, the guest stopped after 5 idle minutes, nothing else.
write_config() { # $1: true|false
  local conf_hash
  conf_hash=$(shasum -a 256 /etc/nix/nix.conf.before-nix-darwin 2>/dev/null || shasum -a 256 /etc/nix/nix.conf)
  cat > "$work/flake.nix" <<NIX
{
  inputs = {
    # git+file: only what git tracks (not node_modules/ or dist/), as a user's checkout would give.
    ferry.url = "git+file:$ferry_src";
    nixpkgs.follows = "ferry/nixpkgs";
    nix-darwin.url = "github:nix-darwin/nix-darwin/master";
    nix-darwin.inputs.nixpkgs.follows = "ferry/nixpkgs";
  };
  outputs = { ferry, nix-darwin, ... }: {
    darwinConfigurations.ci = nix-darwin.lib.darwinSystem {
      modules = [
        ferry.darwinModules.default
        {
          nixpkgs.hostPlatform = "$system";
          system.stateVersion = 6;
          system.primaryUser = "$user";
          nix.settings.experimental-features = "nix-command flakes";
          environment.etc."nix/nix.conf".knownSha256Hashes = [ "${conf_hash%% *}" ];
          services.ferry.enable = $1;
          services.ferry.settings.idleTimeout = "5m";
        }
      ];
    };
  };
}
NIX
}

switch() {
  (cd "$work" && sudo nix --extra-experimental-features 'nix-command flakes' run github:nix-darwin/nix-darwin/master#darwin-rebuild -- switch --flake "$work#ci")
}

step "nix-darwin switch with services.ferry.enable = true ($system)"
write_config true
(cd "$work" && nixf flake lock)
switch
. /etc/bashrc || true

step "what the module put in place"
agent="$HOME/Library/LaunchAgents/dev.ferry.daemon.plist"
test -f "$agent" || { echo "no LaunchAgent at $agent"; exit 1; }
plutil -p "$agent"
cat /etc/ssh/ssh_config.d/ferry.conf
grep ferry-builder /etc/nix/machines
grep -E '^builders-use-substitutes = true' /etc/nix/nix.conf
launchctl print "gui/$(id -u)/dev.ferry.daemon" | head -20

step "the daemon's first start: its host key, pinned for the alias"
known="$HOME/.local/state/ferry/builder_known_hosts"
for _ in $(seq 60); do [ -s "$known" ] && break; sleep 1; done
test -s "$known" || { echo "the daemon did not write $known"; tail -50 "$HOME/Library/Logs/ferry/daemon.out.log" || true; exit 1; }
cat "$known"

step "a real x86_64-linux build through ferry (the guest boots on demand)"
marker=$(date +%s)
if ! nixf build --max-jobs 0 --print-build-logs --no-link --print-out-paths --impure --expr "
  derivation { name = \"ferry-check-$marker\"; system = \"x86_64-linux\"; builder = \"/bin/sh\";
    args = [ \"-c\" \"uname -m > \$out; echo built by \$(uname -s) >> \$out\" ]; }" > "$work/out"; then
  ferry doctor || true
  tail -80 "$HOME/Library/Logs/ferry/daemon.log" || true
  exit 1
fi
cat "$(cat "$work/out")"
grep -qx x86_64 "$(cat "$work/out")"
ferry status

step "switched off: the agent, the alias and the machines entry are gone"
write_config false
switch
test ! -e "$agent" || { echo "the LaunchAgent is still there"; exit 1; }
test ! -e /etc/ssh/ssh_config.d/ferry.conf || { echo "the alias is still there"; exit 1; }
! grep -q ferry-builder /etc/nix/machines 2>/dev/null || { echo "the machines entry is still there"; exit 1; }
! launchctl print "gui/$(id -u)/dev.ferry.daemon" >/dev/null 2>&1 || { echo "the agent is still loaded"; exit 1; }

echo
echo "check-darwin-module: ok"
