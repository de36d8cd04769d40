/**
 * A byte relay that puts the API double (a Unix socket of the test process) on
 * 127.0.0.1:PORT of the netns this process runs in:
 *
 *   kube-relay.js --listen 127.0.0.1:6443 --to /run/<prefix>-kube.sock
 *
 * Each TCP connection is piped to a new Unix connection and back; when either side ends
 * or fails, both are cut, so the client sees exactly what the double did. Prints one JSON
 * line, {"event":"listening"}, once it listens. Bad arguments: one line on stderr, exit 2.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';

function main(): void {
  let values: { listen?: string; to?: string };
  try {
    values = parseArgs({ args: process.argv.slice(2), options: { listen: { type: 'string' }, to: { type: 'string' } }, strict: true }).values;
  } catch (err) {
    process.stderr.write(`kube-relay: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const m = /^(.+):(\d+)$/.exec(values.listen ?? '');
  if (!m || net.isIP(m[1]!) === 0 || !values.to) {
    process.stderr.write('kube-relay: usage: kube-relay.js --listen IP:PORT --to SOCKET\n');
    process.exit(2);
  }
  const to = values.to;
  const server = net.createServer((client) => {
    const upstream = net.connect(to);
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', cut).on('close', cut);
    upstream.on('error', cut).on('close', cut);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.on('error', (err) => {
    process.stderr.write(`kube-relay: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(Number(m[2]), m[1], () => process.stdout.write(`${JSON.stringify({ event: 'listening' })}\n`));
  process.on('SIGTERM', () => process.exit(0));
}

main();
