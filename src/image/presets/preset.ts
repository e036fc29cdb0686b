import type { Layer } from '../layers/layer.js';

/** What a base preset provides to the image build. */
export interface PresetInputs {
  name: 'debian' | 'nixpkgs';
  /** The guest's root filesystem, as a tarball (the first layer). */
  rootfsTar?: string;
  /** Store paths for a nix layer, when the base comes from nixpkgs. */
  storePaths?: string[];
  /**
   * Layers applied after the rootfs and the store paths, before the config's own layers: the
   * nixpkgs preset's root skeleton (users, /bin/sh, /usr/sbin/sshd … pointing into the store).
   * Not serialisable: presets that record their inputs as JSON record what these are made from.
   */
  layers?: Layer[];
  /** The kernel for direct boot. */
  kernel: string;
  /** The kernel's /lib/modules/<version>. */
  modulesDir: string;
  kernelVersion: string;
  /** busybox for the initramfs: static, or a store path whose loader and libraries are on the host. */
  busybox: string;
  /** Identifies these inputs (package versions, argv): part of the image cache keys. */
  identity: string;
}
