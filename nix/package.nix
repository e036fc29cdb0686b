# ferry as a Nix package, built from package-lock.json with nixpkgs' importNpmLock: each
# dependency is fetched by the `resolved` URL and `integrity` hash the lock already records, so
# there is no npmDepsHash to compute online and update by hand (nixpkgs
# pkgs/build-support/node/import-npm-lock/default.nix). Node 22 (nodejs_20 is being retired;
# package.json's engines allow >=20.10).
{
  lib,
  buildNpmPackage,
  importNpmLock,
  nodejs_22,
  # Unit tests that need nothing outside the build sandbox (flake.nix's checks.unit sets it).
  unitTests ? [ ],
}:

let
  package = lib.importJSON ../package.json;
  # What the build and the package need; not bench/, scripts/, test/ unless tests run.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions (
      [
        ../package.json
        ../package-lock.json
        ../tsconfig.json
        ../bin
        ../launchd
        ../src
      ]
      ++ lib.optionals (unitTests != [ ]) [
        ../tsconfig.test.json
        ../vitest.config.ts
        ../test
      ]
    );
  };

  # ferry's lock is written with npm's `omit-lockfile-registry-resolved`: each package has its
  # `integrity` but no `resolved` URL, and importNpmLock fetches only what has one. The URL is the
  # npm registry's own tarball layout, NAME/-/BASENAME-VERSION.tgz (`npm view commander@14.0.3
  # dist.tarball` gives https://registry.npmjs.org/commander/-/commander-14.0.3.tgz); the
  # integrity hash the lock records still decides what is accepted.
  registryUrl = lockPath: version:
    let
      name = lib.last (lib.splitString "node_modules/" lockPath);
      base = lib.last (lib.splitString "/" name);
    in
    "https://registry.npmjs.org/${name}/-/${base}-${version}.tgz";
  withResolved = lock: lock // {
    packages = lib.mapAttrs
      (lockPath: module:
        if lockPath != "" && module ? integrity && !(module ? resolved) && !(module.link or false)
        then module // { resolved = registryUrl lockPath module.version; }
        else module)
      lock.packages;
  };
in
buildNpmPackage {
  pname = package.name;
  inherit (package) version;
  inherit src;
  nodejs = nodejs_22;

  npmDeps = importNpmLock {
    npmRoot = src;
    packageLock = withResolved (lib.importJSON ../package-lock.json);
  };
  npmConfigHook = importNpmLock.npmConfigHook;

  # ssh2's optional native binding (cpu-features, its own crypto addon) is not needed: ssh2 falls
  # back to node's crypto, and a node-gyp build would need a compiler on every platform.
  npmRebuildFlags = [ "--ignore-scripts" ];
  # `npm run build`: tsc to dist/.
  npmBuildScript = "build";

  doCheck = unitTests != [ ];
  # The SSH front's tests listen on 127.0.0.1: macOS's build sandbox allows that only when asked.
  __darwinAllowLocalNetworking = unitTests != [ ];
  checkPhase = ''
    runHook preCheck
    npx vitest run ${lib.escapeShellArgs unitTests}
    runHook postCheck
  '';

  # npm pack would leave dist/ out (it is in .gitignore and package.json has no `files`), so the
  # package is laid out by hand: what bin/ferry, dist/ and the launchd template need at run time.
  installPhase = ''
    runHook preInstall
    npm prune --omit=dev --ignore-scripts
    dir=$out/lib/node_modules/ferry
    mkdir -p $dir $out/bin
    cp -r package.json bin dist launchd node_modules $dir/
    patchShebangs $dir/bin
    ln -s $dir/bin/ferry $out/bin/ferry
    runHook postInstall
  '';

  meta = {
    description = package.description;
    license = lib.licenses.mit;
    mainProgram = "ferry";
    platforms = [ "aarch64-darwin" "x86_64-darwin" "x86_64-linux" "aarch64-linux" ];
  };
}
