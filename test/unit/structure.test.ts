/**
 * The shape of src/, measured (issue 10's Quality rules): no import cycle among its modules
 * (type-only imports and re-exports count: they tie modules together for a reader all the same),
 * no file over 400 lines, no function over 80 lines in src/daemon and src/vm. Each failure lists
 * every offender with what to do about it, so one run tells the whole story.
 *
 * The sources are parsed with the TypeScript compiler (no regular expressions over code), so an
 * import in a comment or a string does not count and `import type` / `export … from` do.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const REPO = path.resolve(import.meta.dirname, '../..');
const SRC = path.join(REPO, 'src');
const MAX_FILE_LINES = 400;
const MAX_FUNCTION_LINES = 80;
const FUNCTION_RULE_DIRS = ['daemon', 'vm'];

interface Source {
  /** Path relative to the repository, e.g. `src/vm/qemu.ts`. */
  rel: string;
  text: string;
  file: ts.SourceFile;
}

function listTs(dir: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) found.push(...listTs(full));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) found.push(full);
  }
  return found.sort();
}

function loadSources(): Source[] {
  return listTs(SRC).map((full) => {
    const text = readFileSync(full, 'utf8');
    return { rel: path.relative(REPO, full), text, file: ts.createSourceFile(full, text, ts.ScriptTarget.Latest, true) };
  });
}

/** Specifiers of `import … from`, `import type …`, `export … from`, `import x = require()` and `import()`. */
function moduleSpecifiers(file: ts.SourceFile): string[] {
  const specifiers: string[] = [];
  const visit = (node: ts.Node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      specifiers.push(node.moduleSpecifier.text);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      const expression = node.moduleReference.expression;
      if (ts.isStringLiteral(expression)) specifiers.push(expression.text);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [argument] = node.arguments;
      if (argument && ts.isStringLiteralLike(argument)) specifiers.push(argument.text);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      specifiers.push(node.argument.literal.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return specifiers;
}

/** The src/ module a relative specifier names (`./x.js` → `src/…/x.ts`), or undefined for packages. */
function resolveInSrc(fromRel: string, specifier: string, known: Set<string>): string | undefined {
  if (!specifier.startsWith('.')) return undefined;
  const base = path.join(path.dirname(fromRel), specifier);
  const candidates = [base.replace(/\.js$/, '.ts'), `${base}.ts`, path.join(base, 'index.ts')];
  return candidates.find((candidate) => known.has(candidate));
}

function importGraph(sources: Source[]): Map<string, Set<string>> {
  const known = new Set(sources.map((s) => s.rel));
  const graph = new Map<string, Set<string>>();
  for (const source of sources) {
    const targets = new Set<string>();
    for (const specifier of moduleSpecifiers(source.file)) {
      const target = resolveInSrc(source.rel, specifier, known);
      if (target && target !== source.rel) targets.add(target);
    }
    graph.set(source.rel, targets);
  }
  return graph;
}

/**
 * Strongly connected components of more than one module (Tarjan), each reported as one cycle
 * through it: `a.ts → b.ts → a.ts`. A component can hold more cycles than the one shown; breaking
 * the shown one and running again reveals the next.
 */
function findCycles(graph: Map<string, Set<string>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  let counter = 0;
  const strongConnect = (node: string) => {
    index.set(node, counter);
    low.set(node, counter);
    counter += 1;
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!index.has(next)) {
        strongConnect(next);
        low.set(node, Math.min(low.get(node)!, low.get(next)!));
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node)!, index.get(next)!));
      }
    }
    if (low.get(node) === index.get(node)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== node);
      if (component.length > 1) components.push(component);
    }
  };
  for (const node of [...graph.keys()].sort()) if (!index.has(node)) strongConnect(node);
  return components.map((component) => shortestCycle(graph, new Set(component)));
}

/** The shortest cycle through the alphabetically first module of a component (breadth-first). */
function shortestCycle(graph: Map<string, Set<string>>, component: Set<string>): string[] {
  const start = [...component].sort()[0];
  const previous = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const node = queue.shift()!;
    for (const next of [...(graph.get(node) ?? [])].sort()) {
      if (!component.has(next)) continue;
      if (next === start) {
        const path = [node];
        while (path[0] !== start) path.unshift(previous.get(path[0])!);
        return [...path, start];
      }
      if (!previous.has(next)) {
        previous.set(next, node);
        queue.push(next);
      }
    }
  }
  throw new Error(`internal: no cycle through ${start}`);
}

interface FunctionSize {
  rel: string;
  line: number;
  name: string;
  lines: number;
}

/** The name a function is known by: its own, its method or property name, or the variable it is assigned to. */
function functionName(node: ts.FunctionLikeDeclaration, file: ts.SourceFile): string | undefined {
  if (node.name) return node.name.getText(file);
  const parent = node.parent;
  if (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)) return parent.name.getText(file);
  if (ts.isBinaryExpression(parent) && parent.operatorToken.kind === ts.SyntaxKind.EqualsToken) return parent.left.getText(file);
  if (ts.isExportAssignment(parent)) return 'export default';
  return undefined;
}

function className(node: ts.Node, file: ts.SourceFile): string | undefined {
  const parent = node.parent;
  if ((ts.isClassDeclaration(parent) || ts.isClassExpression(parent)) && parent.name) return parent.name.getText(file);
  return undefined;
}

/**
 * Every named function's length in lines, from its first line to its last (the text of the
 * declaration, comments before it not counted; a nested function counts in its own and in the
 * one around it). Callbacks passed as arguments have no name and
 * count towards the function they sit in.
 */
function functionSizes(source: Source): FunctionSize[] {
  const sizes: FunctionSize[] = [];
  const enclosing: string[] = [];
  const visit = (node: ts.Node) => {
    const isFunction =
      ts.isFunctionDeclaration(node) ||
      ts.isMethodDeclaration(node) ||
      ts.isConstructorDeclaration(node) ||
      ts.isGetAccessorDeclaration(node) ||
      ts.isSetAccessorDeclaration(node) ||
      ts.isArrowFunction(node) ||
      ts.isFunctionExpression(node);
    if (isFunction && node.body) {
      const own = ts.isConstructorDeclaration(node) ? 'constructor' : functionName(node, source.file);
      if (own !== undefined) {
        const owner = ts.isClassElement(node) ? className(node, source.file) : undefined;
        const start = source.file.getLineAndCharacterOfPosition(node.getStart(source.file)).line;
        const end = source.file.getLineAndCharacterOfPosition(node.getEnd()).line;
        const name = owner ? `${owner}.${own}` : own;
        // A nested function is named with the ones around it: `runDaemon › reload`.
        sizes.push({ rel: source.rel, line: start + 1, name: [...enclosing, name].join(' › '), lines: end - start + 1 });
        enclosing.push(name);
        ts.forEachChild(node, visit);
        enclosing.pop();
        return;
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(source.file);
  return sizes;
}

function lineCount(text: string): number {
  if (text.length === 0) return 0;
  return text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
}

const sources = loadSources();

describe('the shape of src/', () => {
  it('finds the modules it measures', () => {
    // A guard for the measurement itself: if the walk found nothing, every rule below would pass.
    expect(sources.length).toBeGreaterThan(50);
    expect(sources.map((s) => s.rel)).toContain('src/cli.ts');
    const graph = importGraph(sources);
    expect(graph.get('src/cli.ts')?.size ?? 0).toBeGreaterThan(0);
    expect(sources.filter((s) => FUNCTION_RULE_DIRS.some((d) => s.rel.startsWith(`src/${d}/`))).length).toBeGreaterThan(5);
  });

  it('has no import cycle among its modules (type-only imports and re-exports count)', () => {
    const cycles = findCycles(importGraph(sources));
    const report = cycles.map((cycle) => `  ${cycle.join(' → ')}`).join('\n');
    expect(
      cycles.length,
      `${cycles.length} import cycle(s) in src/ (\`import type\` and \`export … from\` count):\n${report}\n` +
        'Break each: move what both modules need into one of them, or into a third module that imports neither, so imports run one way.',
    ).toBe(0);
  });

  it(`has no file over ${MAX_FILE_LINES} lines`, () => {
    const long = sources
      .map((s) => ({ rel: s.rel, lines: lineCount(s.text) }))
      .filter((s) => s.lines > MAX_FILE_LINES)
      .sort((a, b) => b.lines - a.lines);
    const report = long.map((s) => `  ${s.rel}: ${s.lines} lines (${s.lines - MAX_FILE_LINES} over)`).join('\n');
    expect(
      long.length,
      `${long.length} file(s) in src/ over ${MAX_FILE_LINES} lines:\n${report}\n` +
        'Split each by concern: move its parts into sibling modules (one module, one job).',
    ).toBe(0);
  });

  it(`has no function over ${MAX_FUNCTION_LINES} lines in ${FUNCTION_RULE_DIRS.map((d) => `src/${d}`).join(' and ')}`, () => {
    const long = sources
      .filter((s) => FUNCTION_RULE_DIRS.some((d) => s.rel.startsWith(`src/${d}/`)))
      .flatMap(functionSizes)
      .filter((f) => f.lines > MAX_FUNCTION_LINES)
      .sort((a, b) => b.lines - a.lines);
    const report = long.map((f) => `  ${f.rel}:${f.line} ${f.name} (${f.lines} lines)`).join('\n');
    expect(
      long.length,
      `${long.length} function(s) over ${MAX_FUNCTION_LINES} lines:\n${report}\n` +
        'Split each into named steps (its own functions or modules), so each reads on one screen.',
    ).toBe(0);
  });
});

describe('the measurements themselves', () => {
  const parse = (rel: string, text: string): Source => ({ rel, text, file: ts.createSourceFile(rel, text, ts.ScriptTarget.Latest, true) });

  it('see type-only imports and re-exports as edges, and ignore packages and comments', () => {
    const graph = importGraph([
      parse('src/a.ts', "import type { B } from './b.js';\n// import { c } from './c.js';\nimport z from 'zod';\n"),
      parse('src/b.ts', "export { c } from './sub/index.js';\n"),
      parse('src/sub/index.ts', "const m = await import('../a.js');\n"),
      parse('src/c.ts', "const s = \"import x from './a.js'\";\n"),
    ]);
    expect([...graph.get('src/a.ts')!]).toEqual(['src/b.ts']);
    expect([...graph.get('src/b.ts')!]).toEqual(['src/sub/index.ts']);
    expect([...graph.get('src/c.ts')!]).toEqual([]);
    expect(findCycles(graph)).toEqual([['src/a.ts', 'src/b.ts', 'src/sub/index.ts', 'src/a.ts']]);
  });

  it('report one path per cycle and nothing for a graph that runs one way', () => {
    const graph = new Map<string, Set<string>>([
      ['a', new Set(['b'])],
      ['b', new Set(['a', 'c'])],
      ['c', new Set(['d'])],
      ['d', new Set()],
      ['x', new Set(['y'])],
      ['y', new Set(['x'])],
    ]);
    expect(findCycles(graph)).toEqual([
      ['a', 'b', 'a'],
      ['x', 'y', 'x'],
    ]);
    expect(findCycles(new Map([['a', new Set(['b'])], ['b', new Set<string>()]]))).toEqual([]);
  });

  it('measure named functions, methods and arrow functions by their lines, not anonymous callbacks', () => {
    const body = (n: number) => Array.from({ length: n }, (_, i) => `  const v${i} = ${i};`).join('\n');
    const sizes = functionSizes(
      parse(
        'src/vm/x.ts',
        `export function long() {\n${body(85)}\n}\n` +
          `class Vm {\n  stop() {\n    const inner = () => 1;\n${body(2)}\n  }\n}\n` +
          `const arrow = () => {\n${body(2)}\n};\n` +
          `[1].map((n) => {\n${body(100)}\n});\n`,
      ),
    );
    expect(sizes.map((s) => `${s.line} ${s.name} ${s.lines}`)).toEqual(['1 long 87', '89 Vm.stop 5', '90 Vm.stop › inner 1', '95 arrow 4']);
  });
});
