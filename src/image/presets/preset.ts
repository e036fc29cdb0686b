/** What a base preset provides to the image build. */
export interface PresetInputs {
  name: 'debian' | 'nixpkgs';
  /** The guest's root filesystem, as a tarball (the first layer). */
  rootfsTar?: string;
  /** Store paths for a nix layer, when the base comes from nixpkgs. */
  storePaths?: string[];
  /** The kernel for direct boot. */
  kernel: string;
  /** The kernel's /lib/modules/<version>. */
  modulesDir: string;
  kernelVersion: string;
  /** A static busybox for the initramfs. */
  busybox: string;
  /** Identifies these inputs (package versions, argv): part of the image cache keys. */
  identity: string;
}
