/**
 * The Node.js flags the daemon runs with: the launchd/systemd service (`daemonArgv`) and
 * bench/daemon.ts start it with these.
 *
 * `--initial-heap-size=64` (MB): V8 sets the old generation's allocation limit from the heap it
 * has seen, and after the daemon has been idle or served small sessions that limit is ~20 MB.
 * ssh2 allocates a 32 KiB buffer for every SSH packet on each link, and that external memory
 * counts against the same limit, so a transfer set off a full mark-compact every 20–40 ms (~150
 * per GiB). Starting from 64 MB it is a handful: in bench/forward.ts after 20 small sessions the
 * front's CPU time per GiB went from ~2.9 s to ~1.8 s (48 MB was enough, 32 MB was not).
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--initial-heap-size=64'];
