{
  description = "ferry: Linux Nix builds for macOS — a daemon that builds, boots and serves its own Linux guest";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "aarch64-darwin" "x86_64-darwin" "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The unit tests that need nothing outside a Nix build sandbox: no root, no network, no
      # qemu, mmdebstrap, OpenSSH, e2fsprogs or Nix — only node and the stdenv's coreutils. Found by
      # running test/unit as an unprivileged user with only those on PATH and HOME=/homeless-shelter;
      # the rest of test/unit and all of test/e2e run in the Debian CI (`npm test`).
      sandboxUnitTests = import ./nix/sandbox-unit-tests.nix;
    in
    {
      overlays.default = final: _prev: { ferry = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (pkgs: {
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.ferry;
        ferry = pkgs.callPackage ./nix/package.nix { };
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = nixpkgs.lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.ferry;
          meta.description = "ferry's command line (ferry install, status, doctor, …)";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages =
            [ pkgs.nodejs_22 pkgs.e2fsprogs pkgs.openssh pkgs.qemu pkgs.nix ]
            # The Debian guest the tests boot is made with mmdebstrap, a Linux tool.
            ++ nixpkgs.lib.optionals pkgs.stdenv.hostPlatform.isLinux [ pkgs.mmdebstrap pkgs.busybox ];
        };
      });

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.ferry;
        unit = pkgs.callPackage ./nix/package.nix { unitTests = sandboxUnitTests; };
      });

      # nix-darwin: imports = [ ferry.darwinModules.default ]; services.ferry.enable = true;
      darwinModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/darwin-module.nix ];
        services.ferry.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.ferry;
      };
    };
}
