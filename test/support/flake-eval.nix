# flake.nix's outputs evaluated with nixpkgs' real lib (the callPackage'd files, lib.fileset and
# all) and STAND-INS for what only the whole nixpkgs has: buildNpmPackage returns its arguments,
# importNpmLock its own, and the devShell's packages are names. What comes out is the flake's
# shape for each of the four systems; the real nixpkgs builds it in the macOS workflow
# (scripts/check-flake.sh).
{ nixpkgsLib, ferrySrc }:

let
  lib = import (nixpkgsLib + "/lib");
  standinPkgs = system: rec {
    inherit lib;
    stdenv.hostPlatform = lib.systems.elaborate system;
    callPackage = fn: args: import fn (builtins.intersectAttrs (builtins.functionArgs (import fn)) (standinPkgs system) // args);
    buildNpmPackage = args: args // { type = "derivation"; name = "${args.pname}-${args.version}"; outPath = "/nix/store/standin-${args.pname}"; };
    importNpmLock = { __functor = _: args: { importNpmLock = args; }; npmConfigHook = "importNpmLock.npmConfigHook"; };
    nodejs_22 = "nodejs_22";
    mkShell = args: args // { type = "derivation"; outPath = "/nix/store/standin-shell"; };
  } // lib.genAttrs [ "e2fsprogs" "openssh" "qemu" "nix" "mmdebstrap" "busybox" ] (name: name);

  flake = import (ferrySrc + "/flake.nix");
  self = flake.outputs {
    inherit self;
    nixpkgs = {
      inherit lib;
      legacyPackages = lib.genAttrs [ "aarch64-darwin" "x86_64-darwin" "x86_64-linux" "aarch64-linux" ] standinPkgs;
    };
  };
in
{
  inputs = flake.inputs;
  outputs = lib.attrNames self;
  systems = lib.mapAttrs (system: packages: {
    default = packages.default.name;
    nodejs = packages.default.nodejs;
    npmConfigHook = packages.default.npmConfigHook;
    lockPackages = lib.length (lib.attrNames packages.default.npmDeps.importNpmLock.packageLock.packages);
    src = lib.attrNames (builtins.readDir packages.default.src);
    app = self.apps.${system}.default;
    unit = { inherit (self.checks.${system}.unit) doCheck checkPhase __darwinAllowLocalNetworking; src = lib.attrNames (builtins.readDir self.checks.${system}.unit.src); };
    shell = self.devShells.${system}.default.packages;
  }) self.packages;
  darwinModule = builtins.isFunction self.darwinModules.default;
  overlay = lib.attrNames (self.overlays.default (standinPkgs "x86_64-linux") { });
}
