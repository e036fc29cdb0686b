/**
 * Coalesces the writes a socket gets within one tick into one `writev`.
 *
 * Why: ssh2 writes every SSH packet (at most 32 KiB of data) with its own `socket.write`, and the
 * forwarder passes packets on in bursts — one read from the other link carries several. Corking
 * the socket on the first write of a tick and uncorking right after the tick sends a burst with
 * one system call and fewer TCP segments. On the busiest path (a build's upload: decrypt from the
 * client, encrypt to the guest, in one thread) bench/forward.ts measured about 8% more throughput.
 * Writes still go out in order and before any I/O of the next turn of the event loop.
 */
import type { Socket } from 'node:net';

export function coalesceWrites(socket: Socket): Socket {
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  const write = socket.write;
  socket.write = function coalescedWrite(this: Socket, ...args: Parameters<Socket['write']>) {
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    return (write as (...a: Parameters<Socket['write']>) => boolean).apply(this, args);
  } as Socket['write'];
  return socket;
}
