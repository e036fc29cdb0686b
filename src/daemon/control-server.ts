/**
 * The control socket: HTTP over a unix socket (mode 600, in the state dir) for the CLI —
 * status, start, stop, restart, rebuild. JSON in, JSON out; errors as `{ "error": "…" }`.
 */
import { chmodSync, unlinkSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

export type Handler = (query: URLSearchParams) => Promise<unknown>;

export class ControlServer {
  readonly #server: Server;
  readonly #routes = new Map<string, Handler>();

  constructor(private readonly socketPath: string) {
    this.#server = createServer((req, res) => void this.#handle(req, res));
  }

  route(method: 'GET' | 'POST', path: string, handler: Handler): this {
    this.#routes.set(`${method} ${path}`, handler);
    return this;
  }

  async listen(): Promise<void> {
    try {
      unlinkSync(this.socketPath); // a stale socket of a daemon that died; the pidfile check ran first
    } catch {
      // none
    }
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      // Create the socket with mode 600 from the start: no window where others could connect.
      const mask = process.umask(0o177);
      this.#server.listen(this.socketPath, () => {
        process.umask(mask);
        resolve();
      });
    });
    chmodSync(this.socketPath, 0o600);
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    try {
      unlinkSync(this.socketPath);
    } catch {
      // already gone
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://ferry');
    const handler = this.#routes.get(`${req.method} ${url.pathname}`);
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(`${JSON.stringify(body)}\n`);
    };
    if (!handler) return reply(404, { error: `no such request: ${req.method} ${url.pathname}` });
    try {
      reply(200, await handler(url.searchParams));
    } catch (error) {
      reply(500, { error: (error as Error).message });
    }
  }
}
