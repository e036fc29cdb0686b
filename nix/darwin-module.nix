# services.ferry for nix-darwin: ferry's daemon as a LaunchAgent of the primary user (or a
# LaunchDaemon with systemWide), its ferry.toml from typed options, and the Nix wiring
# `ferry install` would write: the nix.buildMachines entry, nix.distributedBuilds,
# builders-use-substitutes and the ssh alias in /etc/ssh/ssh_config.d/ferry.conf. Disabled, the
# module defines none of it, and nix-darwin's activation unloads and removes the agent.
#
# One source of truth: the plist and the alias are not written here. The package's own
# `ferry service-files` renders them at build time, from launchd/ferry-daemon.plist and the same
# code `ferry install` runs (src/install/service-files.ts), for this config file and home.
#
# The daemon's host key is made when the daemon first starts, not at evaluation, so it stays per
# install and out of the store: the machines entry carries no publicHostKey, and the alias pins
# the key with UserKnownHostsFile, the known-hosts file the daemon writes in its state dir when
# it starts (src/daemon/ssh-alias.ts). The client key the host's nix-daemon logs in with is made
# then too (mode 600, in the state dir).
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ferry;
  inherit (lib) mkOption mkEnableOption mkIf types;
  toml = import ./toml.nix { inherit lib; };

  # The guest runs Linux on the Mac's own architecture, as ferry's own default does.
  hostArch = lib.head (lib.splitString "-" pkgs.stdenv.hostPlatform.system);

  # Settings left null are left out of ferry.toml: ferry's own defaults apply (src/config/defaults.ts).
  # system, cpus, max-jobs and features are always written: the machines entry repeats them.
  settings = lib.recursiveUpdate
    {
      guest = lib.filterAttrs (_: v: v != null) {
        inherit (cfg.settings) system cpus memory interpreter;
        state-disk-size = cfg.settings.stateDiskSize;
        extra-systems = cfg.settings.extraSystems;
        nix = { max-jobs = cfg.settings.maxJobs; inherit (cfg.settings) features; };
      };
      daemon = lib.filterAttrs (_: v: v != null) {
        inherit (cfg.settings) port;
        idle-timeout = cfg.settings.idleTimeout;
      };
    }
    cfg.extraSettings;

  configFile = pkgs.writeText "ferry.toml" (toml.toTOML settings);

  home = if cfg.systemWide then "/var/root" else config.system.primaryUserHome;

  # What `ferry install` would write for this config and home; the build also checks ferry.toml
  # (a bad setting fails the switch with ferry's message: file, key, what was expected).
  serviceFiles = pkgs.runCommand "ferry-service-files" { } ''
    ${lib.getExe cfg.package} service-files --platform darwin --out "$out" \
      --config ${configFile} --home ${lib.escapeShellArg home} ${lib.optionalString cfg.systemWide "--system"}
  '';

  label = "dev.ferry.daemon";
  # Where the daemon keeps the client key and the known-hosts file (ferry's paths.ts).
  stateDir = if cfg.systemWide then "/var/lib/ferry" else "${home}/.local/state/ferry";
in
{
  options.services.ferry = {
    enable = mkEnableOption "ferry, the Linux builder: a daemon that builds, boots and serves its own Linux guest for Nix remote builds";

    package = mkOption {
      type = types.package;
      description = "The ferry package (ferry's flake sets its own).";
    };

    vmPackages = mkOption {
      type = types.listOf types.package;
      default = [ pkgs.vfkit ];
      defaultText = lib.literalExpression "[ pkgs.vfkit ]";
      example = lib.literalExpression "[ pkgs.qemu ]";
      description = ''
        The hypervisors `vm.backend = "auto"` picks from (vfkit on every Mac; qemu where set),
        installed in the system profile, which is on the daemon's PATH (/run/current-system/sw/bin).
      '';
    };

    systemWide = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run the daemon as a LaunchDaemon as root (`ferry install --system`: /etc-free state in
        /var/lib/ferry) instead of a LaunchAgent of {option}`system.primaryUser`.
      '';
    };

    settings = {
      system = mkOption {
        type = types.enum [ "x86_64-linux" "aarch64-linux" ];
        default = "${hostArch}-linux";
        defaultText = lib.literalExpression ''"<the Mac's architecture>-linux"'';
        description = "`guest.system`: the guest's own system.";
      };
      cpus = mkOption {
        type = types.ints.positive;
        default = 4;
        description = "`guest.cpus`.";
      };
      memory = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "8GiB";
        description = "`guest.memory` (null: ferry's default, 4GiB).";
      };
      stateDiskSize = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "80GiB";
        description = "`guest.state-disk-size`: grows in place when raised, never shrinks (null: ferry's default, 40GiB).";
      };
      extraSystems = mkOption {
        type = types.listOf (types.enum [ "x86_64-linux" "aarch64-linux" "i686-linux" ]);
        default = [ ];
        example = [ "x86_64-linux" ];
        description = "`guest.extra-systems`: built in the same guest through `interpreter`.";
      };
      interpreter = mkOption {
        type = types.nullOr (types.enum [ "rosetta" "qemu-user" "none" ]);
        default = null;
        description = "`guest.interpreter` (null: ferry's default, Rosetta for x86_64-linux on Apple silicon).";
      };
      maxJobs = mkOption {
        type = types.ints.positive;
        default = cfg.settings.cpus;
        defaultText = lib.literalExpression "config.services.ferry.settings.cpus";
        description = "`guest.nix.max-jobs`, and the machines entry's maxJobs.";
      };
      features = mkOption {
        type = types.listOf types.str;
        default = [ "benchmark" "big-parallel" ];
        description = "`guest.nix.features`, and the machines entry's supportedFeatures.";
      };
      idleTimeout = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "1h";
        description = ''`daemon.idle-timeout`: stop the guest after this long without builds ("0": never; null: ferry's default, 30m).'';
      };
      port = mkOption {
        type = types.nullOr types.port;
        default = null;
        description = "`daemon.port`: the daemon's SSH port on loopback (null: ferry's default, 31322).";
      };
    };

    extraSettings = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      example = lib.literalExpression ''{ vm.backend = "qemu"; guest.nix.extra-config = "keep-outputs = true"; }'';
      description = "Any other ferry.toml keys, merged over the typed settings (README: Configuration).";
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = configFile;
      defaultText = lib.literalMD "ferry.toml in the store, from the settings";
      description = "The ferry.toml the daemon runs with (also FERRY_CONFIG for `ferry` in a shell).";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.systemWide || config.system.primaryUser != null;
        message = "services.ferry: a LaunchAgent runs as system.primaryUser; set it, or services.ferry.systemWide = true.";
      }
      {
        # With nix.enable off (Determinate Nix, for one) nix-darwin drops every nix.* setting
        # without a word, and Nix would never send a build to ferry.
        assertion = config.nix.enable;
        message = "services.ferry: nix.enable is off, so nix-darwin would drop ferry's nix.buildMachines, nix.distributedBuilds and builders-use-substitutes; use `ferry install` instead (it writes /etc/nix/machines and Determinate's nix.custom.conf), or let nix-darwin manage Nix.";
      }
    ];

    environment.systemPackages = [ cfg.package ] ++ cfg.vmPackages;
    # `ferry status`, `ferry doctor`, `ferry image build` in a shell read the daemon's ferry.toml.
    environment.variables.FERRY_CONFIG = "${configFile}";

    environment.userLaunchAgents = mkIf (!cfg.systemWide) { "${label}.plist".source = "${serviceFiles}/${label}.plist"; };
    environment.launchDaemons = mkIf cfg.systemWide { "${label}.plist".source = "${serviceFiles}/${label}.plist"; };

    environment.etc."ssh/ssh_config.d/ferry.conf".source = "${serviceFiles}/ferry.conf";

    # launchd opens StandardOutPath before it starts the daemon, and makes no directory for it
    # (`ferry install` makes the log dir first): made here, before the launchd step loads the job,
    # as the job's user, from the plist's own key.
    system.activationScripts.extraActivation.text = let
      plist = "${serviceFiles}/${label}.plist";
      asUser = lib.optionalString (!cfg.systemWide) "sudo --user=${lib.escapeShellArg config.system.primaryUser} -- ";
    in ''
      ${asUser}mkdir -p "$(dirname "$(/usr/libexec/PlistBuddy -c 'Print :StandardOutPath' ${plist})")"
    '';

    nix.distributedBuilds = true;
    nix.settings.builders-use-substitutes = true;
    nix.buildMachines = [
      {
        hostName = "ferry-builder"; # the alias in /etc/ssh/ssh_config.d/ferry.conf (port, user, known hosts)
        protocol = "ssh-ng";
        systems = [ cfg.settings.system ] ++ lib.filter (s: s != cfg.settings.system) cfg.settings.extraSystems;
        sshKey = "${stateDir}/keys/client_ed25519";
        inherit (cfg.settings) maxJobs;
        speedFactor = 1;
        supportedFeatures = cfg.settings.features;
        mandatoryFeatures = [ ];
      }
    ];
  };
}
