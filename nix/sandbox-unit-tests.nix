# The unit tests flake.nix's checks.unit runs in the Nix build sandbox: those that need nothing
# but node and the stdenv (no root, no network, no qemu, mmdebstrap, OpenSSH, e2fsprogs or Nix).
# Found by running all of test/unit as `nobody` with HOME=/homeless-shelter and only node and
# coreutils-like tools on PATH (2026-12-02): these 23 files passed whole, with nothing skipped.
[
  "test/unit/atomic-file.test.ts"
  "test/unit/backend-selection.test.ts"
  "test/unit/coalesce-writes.test.ts"
  "test/unit/config-named.test.ts"
  "test/unit/config.test.ts"
  "test/unit/daemon-start.test.ts"
  "test/unit/debian-suite.test.ts"
  "test/unit/doctor-layers.test.ts"
  "test/unit/doctor-state-disk.test.ts"
  "test/unit/durable-writes.test.ts"
  "test/unit/guest-pool.test.ts"
  "test/unit/image-build-json.test.ts"
  "test/unit/output-spotter.test.ts"
  "test/unit/process-runner.test.ts"
  "test/unit/reload-port.test.ts"
  "test/unit/reload-start.test.ts"
  "test/unit/ssh-front.test.ts"
  "test/unit/state-files.test.ts"
  "test/unit/structure.test.ts"
  "test/unit/supervisor.test.ts"
  "test/unit/uninstall-cli.test.ts"
  "test/unit/vfkit-standin.test.ts"
  "test/unit/vm-argv.test.ts"
]
