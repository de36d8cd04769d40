/**
 * The ztunnel stand-ins' proxy leg (the node-level stand-in of harness/sim/agent.ts, the
 * bench's in harness/bench/traffic-peer.ts, the in-pod one of harness/sim/ztunnel-inpod.ts).
 */
import net from 'node:net';

/**
 * Relays an accepted connection upstream and back: stream pipes only, no per-chunk
 * JavaScript, Nagle off on both legs (small request/response traffic), half-closes passed
 * on (both sockets need allowHalfOpen), an error on either leg ends both.
 *
 * `up` defaults to a connection to the original destination as transparent capture leaves
 * it, the accepted socket's local address (TPROXY, bpf_sk_assign); a caller with its own
 * upstream socket (marked, opened in a pod's netns) passes it, with Nagle off already.
 * While `up` connects, `down` is paused and piped once it is connected.
 */
export function relay(down: net.Socket, up?: net.Socket): void {
  down.setNoDelay(true);
  down.pause();
  const upstream = up ?? net.connect({ host: down.localAddress!, port: down.localPort!, allowHalfOpen: true, noDelay: true });
  const close = () => {
    down.destroy();
    upstream.destroy();
  };
  down.on('error', close);
  upstream.on('error', close);
  const pipe = () => {
    down.pipe(upstream);
    upstream.pipe(down);
  };
  if (upstream.connecting) upstream.once('connect', pipe);
  else pipe();
}
