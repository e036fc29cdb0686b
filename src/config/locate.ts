/**
 * Finds the line of a key in TOML text, so a problem can say `ferry.toml:12:` as well as the key.
 * A best effort over the common forms — `[table]`, `[[array]]`, `key = …` and `dotted.key = …`;
 * keys set inside inline tables fall back to the line of the nearest enclosing key found. The TOML
 * has already parsed when this runs, so the text is well formed.
 */

type Segment = string | number;

/** `image.layers[1].path` → `["image", "layers", 1, "path"]`. */
export function parseKeyPath(key: string): Segment[] {
  return [...key.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] === undefined ? m[1] : Number(m[2])));
}

/** 1-based line where `key` (or, failing that, its nearest parent) is set; undefined if nowhere. */
export function locateKey(text: string, key: string): number | undefined {
  const lines = keyLines(text);
  for (let path = parseKeyPath(key); path.length > 0; path = path.slice(0, -1)) {
    const line = lines.get(JSON.stringify(path));
    if (line !== undefined) return line;
  }
  return undefined;
}

/** Every table header and key assignment in the text, by full path. */
function keyLines(text: string): Map<string, number> {
  const found = new Map<string, number>();
  const arrayCounts = new Map<string, number>();
  let table: Segment[] = [];
  const record = (path: Segment[], line: number) => {
    const id = JSON.stringify(path);
    if (!found.has(id)) found.set(id, line);
  };
  text.split(/\r?\n/).forEach((rawLine, index) => {
    const line = index + 1;
    const arrayHeader = /^\s*\[\[\s*([^\]]+?)\s*\]\]/.exec(rawLine);
    if (arrayHeader) {
      const path = splitDotted(arrayHeader[1]);
      const id = JSON.stringify(path);
      const position = arrayCounts.get(id) ?? 0;
      arrayCounts.set(id, position + 1);
      table = [...path, position];
      record(path, line);
      record(table, line);
      return;
    }
    const header = /^\s*\[\s*([^\]]+?)\s*\]/.exec(rawLine);
    if (header) {
      table = splitDotted(header[1]);
      record(table, line);
      return;
    }
    const assignment = /^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=/.exec(rawLine);
    if (assignment) {
      const keyPath = splitDotted(assignment[1]);
      // Each prefix of a dotted key defines a table on this line too.
      for (let n = 1; n <= keyPath.length; n++) record([...table, ...keyPath.slice(0, n)], line);
    }
  });
  return found;
}

function splitDotted(key: string): string[] {
  return [...key.matchAll(/"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+)/g)].map((m) => m[1] ?? m[2] ?? m[3]);
}
