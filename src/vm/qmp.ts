/**
 * A small QMP client: JSON lines over qemu's unix socket. Enough for ferry's needs — the
 * capabilities handshake, system_powerdown (ask the guest) and quit (end qemu).
 */
import net from 'node:net';

export interface QmpResponse {
  return?: unknown;
  error?: { class: string; desc: string };
}

export class QmpClient {
  private buffer = '';
  private readonly pending: Array<{ resolve: (r: QmpResponse) => void; reject: (e: Error) => void }> = [];
  private greeting: Promise<void>;
  private closedError: Error | undefined;
  readonly events: Array<{ event: string; data?: unknown }> = [];

  private constructor(private readonly socket: net.Socket) {
    let greeted: () => void;
    let failed: (e: Error) => void;
    this.greeting = new Promise((resolve, reject) => {
      greeted = resolve;
      failed = reject;
    });
    let gotGreeting = false;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let newline: number;
      while ((newline = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, newline).trim();
        this.buffer = this.buffer.slice(newline + 1);
        if (!line) continue;
        const message = JSON.parse(line) as Record<string, unknown>;
        if ('QMP' in message) {
          gotGreeting = true;
          greeted();
        } else if ('event' in message) {
          this.events.push(message as { event: string; data?: unknown });
        } else {
          this.pending.shift()?.resolve(message as QmpResponse);
        }
      }
    });
    const onGone = (error?: Error): void => {
      this.closedError = error ?? new Error('QMP connection closed');
      if (!gotGreeting) failed(this.closedError);
      for (const waiter of this.pending.splice(0)) waiter.reject(this.closedError);
    };
    socket.on('error', onGone);
    socket.on('close', () => onGone());
  }

  /** Connects and completes the handshake (greeting, then qmp_capabilities). */
  static async connect(socketPath: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const client = new QmpClient(socket);
    const timer = setTimeout(() => socket.destroy(new Error(`no QMP greeting within ${timeoutMs} ms`)), timeoutMs);
    try {
      await client.greeting;
      await client.execute('qmp_capabilities');
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.closedError) throw this.closedError;
    const response = await new Promise<QmpResponse>((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
    if (response.error) throw new Error(`QMP ${command}: ${response.error.class}: ${response.error.desc}`);
    return response.return;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Connects once qemu has created the socket; gives up when `gaveUp` resolves or after timeoutMs. */
export async function connectQmpWhenReady(
  socketPath: string,
  options: { timeoutMs: number; gaveUp: Promise<unknown> },
): Promise<QmpClient> {
  let over = false;
  void options.gaveUp.then(() => (over = true));
  const deadline = Date.now() + options.timeoutMs;
  let lastError: unknown;
  while (!over && Date.now() < deadline) {
    try {
      return await QmpClient.connect(socketPath, Math.max(1000, deadline - Date.now()));
    } catch (error) {
      lastError = error;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(
    over ? 'qemu exited before its QMP socket was ready' : `no QMP socket at ${socketPath} after ${options.timeoutMs} ms (${String(lastError)})`,
  );
}
