/**
 * One TCP connection client → server inside the calling thread's netns (over lo), for the
 * data-path harnesses that need real sockets for the programs to look up. The listener is
 * closed once the connection is accepted, so only the two connected sockets remain.
 */
import net from 'node:net';

export async function connectOverLo(
  client: { ip: string; port: number },
  server: { ip: string; port: number },
): Promise<{ client: net.Socket; accepted: net.Socket }> {
  const accepted: net.Socket[] = [];
  const srv = net.createServer((c) => {
    c.on('error', () => undefined);
    accepted.push(c);
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen({ port: server.port, host: server.ip }, () => resolve());
  });
  const cli = net.connect({ host: server.ip, port: server.port, localAddress: client.ip, localPort: client.port });
  cli.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    cli.once('connect', () => resolve());
    cli.once('error', reject);
  });
  while (accepted.length === 0) await new Promise((r) => setTimeout(r, 5));
  // close() stops listening at once; its callback would wait for the connection to end.
  srv.close();
  return { client: cli, accepted: accepted[0]! };
}
