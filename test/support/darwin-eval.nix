# ferry's nix-darwin module (nix/darwin-module.nix) evaluated by nix-darwin's real module system
# (its eval-config.nix and module-list.nix) with nixpkgs' real lib, for scripts/eval-darwin-module.ts.
#
# STAND-IN: `pkgs` is not nixpkgs. The whole nixpkgs tree is too large to bring here, so this
# is a minimal package set with what the attributes read below need — writeText, runCommand, a
# darwin hostPlatform — whose derivations are plain `/bin/sh` builds; and `ferry` is the
# checkout's own dist/cli.js run by `node`, not nix/package.nix's build. The real nixpkgs and the
# real package are evaluated and built in the macOS workflow (scripts/check-darwin-module.sh).
{
  nixDarwin,
  nixpkgsLib,
  ferrySrc,
  node,
  enable,
  nixEnable ? true,
  home,
  ferrySettings ? { },
}:

let
  lib = import (nixpkgsLib + "/lib");
  system = builtins.currentSystem;

  sh = name: env: script: derivation (env // {
    inherit name system;
    # The trixie rootfs's own tools (these builds run without Nix's sandbox).
    PATH = "/usr/bin:/bin";
    builder = "/bin/sh";
    args = [ "-c" script ];
  });

  ferry = (sh "ferry-standin" { } ''
    mkdir -p "$out/bin"
    printf '#!/bin/sh\nexec %s %s "$@"\n' ${node} ${ferrySrc}/dist/cli.js > "$out/bin/ferry"
    chmod +x "$out/bin/ferry"
  '') // { meta.mainProgram = "ferry"; };

  pkgs = {
    inherit lib;
    stdenv.hostPlatform = lib.systems.elaborate "aarch64-darwin";
    writeText = name: text: sh name { inherit text; passAsFile = [ "text" ]; } ''cp "$textPath" "$out"'';
    runCommand = name: env: script: sh name env script;
    # The module's default hypervisor (vmPackages); only its name is used here.
    vfkit = sh "vfkit-standin" { } ''mkdir "$out"'';
    # nix-darwin's nix module reads the package's version (isNixAtLeast) and its paths lazily.
    nix = sh "nix-2.28.0" { } ''mkdir "$out"'' // { version = "2.28.0"; };
  };

  eval = import (nixDarwin + "/eval-config.nix") {
    inherit lib;
    modules = [
      (ferrySrc + "/nix/darwin-module.nix")
      {
        _module.args.pkgs = lib.mkForce pkgs;
        system.stateVersion = 6;
        system.primaryUser = "alice";
        nix.enable = nixEnable;
        users.users.alice.home = home;
        services.ferry = { inherit enable; package = ferry; settings = ferrySettings; };
      }
    ];
  };
  inherit (eval) config;

  # A file's store path and the derivation that makes it (to build it after the evaluation).
  file = entry: {
    path = builtins.unsafeDiscardStringContext "${entry.source}";
    drvs = lib.attrNames (builtins.getContext "${entry.source}");
  };
  ferryFiles = attrs: lib.mapAttrs (_: file) (lib.filterAttrs (n: _: lib.hasPrefix "dev.ferry" n) attrs);
in
{
  nixDarwinRelease = (lib.importJSON (nixDarwin + "/version.json")).release;
  libRelease = lib.trivial.release;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  userLaunchAgents = ferryFiles config.environment.userLaunchAgents;
  launchDaemons = ferryFiles config.environment.launchDaemons;
  sshAlias = if config.environment.etc ? "ssh/ssh_config.d/ferry.conf" then file config.environment.etc."ssh/ssh_config.d/ferry.conf" else null;
  machinesFile = config.environment.etc."nix/machines".text or null;
  buildMachines = config.nix.buildMachines;
  distributedBuilds = config.nix.distributedBuilds;
  buildersUseSubstitutes = config.nix.settings.builders-use-substitutes or null;
  ferryConfig = config.environment.variables.FERRY_CONFIG or null;
  activation = config.system.activationScripts.extraActivation.text;
}
