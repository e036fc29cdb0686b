/**
 * coalesceWrites: the writes of one tick leave as one writev, in order; a later tick's writes
 * leave on their own. Checked on a real TCP connection over loopback.
 */
import net, { type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { coalesceWrites } from '../../src/daemon/coalesce-writes.js';

type Instrumented = net.Socket & { _write: (...args: unknown[]) => void; _writev: (...args: unknown[]) => void };

const cleanup: Array<() => void> = [];
afterEach(() => {
  for (const done of cleanup.splice(0)) done();
});

/** A connected client socket whose low-level writes are counted, and everything the peer received. */
async function connectedPair(): Promise<{ client: Instrumented; received: () => Promise<Buffer>; calls: { write: number; writev: number[] } }> {
  const chunks: Buffer[] = [];
  let peerEnded: () => void;
  const ended = new Promise<void>((resolve) => (peerEnded = resolve));
  const server = net.createServer((peer) => {
    peer.on('data', (data: Buffer) => chunks.push(data));
    peer.on('end', () => peerEnded());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = net.connect((server.address() as AddressInfo).port, '127.0.0.1') as Instrumented;
  await new Promise<void>((resolve) => client.once('connect', resolve));
  cleanup.push(() => {
    client.destroy();
    server.close();
  });
  const calls = { write: 0, writev: [] as number[] };
  const write = client._write;
  const writev = client._writev;
  client._write = function (...args: unknown[]) {
    calls.write++;
    return write.apply(this, args);
  };
  client._writev = function (...args: unknown[]) {
    calls.writev.push((args[0] as unknown[]).length);
    return writev.apply(this, args);
  };
  return {
    client,
    calls,
    received: async () => {
      client.end();
      await ended;
      return Buffer.concat(chunks);
    },
  };
}

describe('coalesceWrites', () => {
  it('sends the writes of one tick with one writev, in order, and a later tick on its own', async () => {
    const { client, calls, received } = await connectedPair();
    coalesceWrites(client);
    expect(client.write(Buffer.from('one '))).toBe(true);
    client.write(Buffer.from('two '));
    client.write('three ');
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls).toEqual({ write: 0, writev: [3] });
    client.write(Buffer.from('four'));
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls.write + calls.writev.length).toBe(2);
    expect((await received()).toString()).toBe('one two three four');
  });

  it('without it, each write is its own system call (what the wrapper changes)', async () => {
    const { client, calls, received } = await connectedPair();
    client.write(Buffer.from('one '));
    client.write(Buffer.from('two '));
    client.write('three');
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls.writev.length).toBeLessThanOrEqual(1);
    expect(calls.write).toBeGreaterThanOrEqual(1);
    expect(calls).not.toEqual({ write: 0, writev: [3] });
    expect((await received()).toString()).toBe('one two three');
  });
});
