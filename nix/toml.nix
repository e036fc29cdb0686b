# A small TOML writer for ferry.toml: nixpkgs' `pkgs.formats.toml` needs a package (remarshal)
# at build time, and ferry.toml holds only strings, integers, booleans, lists of those, tables
# and arrays of tables. A value is written with builtins.toJSON: a JSON string is a TOML basic
# string (the same escapes), and JSON's integers, booleans and arrays of scalars are TOML's too.
{ lib }:

let
  isTable = v: builtins.isAttrs v;
  isTableArray = v: builtins.isList v && v != [ ] && lib.all builtins.isAttrs v;
  key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;

  scalarLines = attrs:
    lib.mapAttrsToList (k: v: "${key k} = ${builtins.toJSON v}")
      (lib.filterAttrs (_: v: !(isTable v) && !(isTableArray v)) attrs);

  # A table's own keys first, then its subtables, each under its dotted name.
  section = prefix: attrs:
    let
      tables = lib.filterAttrs (_: isTable) attrs;
      arrays = lib.filterAttrs (_: isTableArray) attrs;
      name = k: if prefix == "" then key k else "${prefix}.${key k}";
    in
    lib.concatLists (
      lib.mapAttrsToList (k: v: [ "" "[${name k}]" ] ++ scalarLines v ++ section (name k) (lib.filterAttrs (_: w: isTable w || isTableArray w) v)) tables
      ++ lib.mapAttrsToList (k: vs: lib.concatMap (v: [ "" "[[${name k}]]" ] ++ scalarLines v) vs) arrays
    );
in
{
  toTOML = attrs: lib.concatStringsSep "\n" (scalarLines attrs ++ section "" attrs) + "\n";
}
