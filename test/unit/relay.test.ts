/**
 * The ztunnel stand-ins' relay (harness/sim/relay.ts), over loopback: bytes both ways, a
 * half-close passed on in each direction, and an error on one leg ending the other.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { relay } from '../../harness/sim/relay.js';

const servers: net.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function listen(onConnection: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, onConnection);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

/** A front listener whose every connection is relayed to the upstream port (a leg still connecting). */
const front = (upstreamPort: number) => listen((down) => relay(down, net.connect({ host: '127.0.0.1', port: upstreamPort, allowHalfOpen: true })));

function collect(s: net.Socket): Promise<string> {
  let got = '';
  s.setEncoding('utf8').on('data', (d: string) => (got += d));
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(got));
    s.once('error', reject);
  });
}

describe('relay', () => {
  it('carries bytes both ways and passes each half-close on', async () => {
    // Upstream: reads until the client half-closes, then answers with what it read and ends.
    const upstream = await listen((s) => {
      let got = '';
      s.setEncoding('utf8').on('data', (d: string) => (got += d));
      s.once('end', () => s.end(`echo:${got}`));
    });
    const client = net.connect({ host: '127.0.0.1', port: await front(upstream), allowHalfOpen: true });
    const reply = collect(client);
    client.write('hello ');
    client.end('world');
    expect(await reply).toBe('echo:hello world');
  });

  it('ends the client leg when the upstream leg is reset', async () => {
    const upstream = await listen((s) => s.once('data', () => s.resetAndDestroy()));
    const client = net.connect({ host: '127.0.0.1', port: await front(upstream), allowHalfOpen: true });
    client.write('x');
    // The relay destroys its accepted leg: the client reads the end of the stream.
    expect(await collect(client)).toBe('');
  });

  it('ends the client leg when the upstream refuses the connection', async () => {
    const closed = await listen(() => undefined);
    await new Promise((r) => servers.pop()!.close(r));
    const client = net.connect({ host: '127.0.0.1', port: await front(closed), allowHalfOpen: true });
    expect(await collect(client)).toBe('');
  });
});
