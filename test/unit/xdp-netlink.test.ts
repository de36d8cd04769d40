/**
 * src/bpf/xdp.ts reads a device's XDP hook from one RTM_GETLINK reply (not libbpf's dump of
 * every link): the parse, on replies built here as the kernel lays them out (struct
 * nlmsghdr, struct ifinfomsg, IFLA_XDP nesting IFLA_XDP_ATTACHED and the per-mode ids).
 */
import { describe, expect, it } from 'vitest';
import { parseXdpLink } from '../../src/bpf/xdp.js';

function attr(type: number, value: Buffer): Buffer {
  const len = 4 + value.length;
  const out = Buffer.alloc((len + 3) & ~3);
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(type, 2);
  value.copy(out, 4);
  return out;
}
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
};
const NLA_F_NESTED = 0x8000;

function newlink(ifindex: number, xdp: Buffer | null): Buffer {
  const body = Buffer.concat([Buffer.alloc(16), attr(3 /* IFLA_IFNAME */, Buffer.from('veth0\0')), ...(xdp ? [attr(43 | NLA_F_NESTED, xdp)] : [])]);
  body.writeInt32LE(ifindex, 4);
  const m = Buffer.concat([Buffer.alloc(16), body]);
  m.writeUInt32LE(m.length, 0);
  m.writeUInt16LE(16 /* RTM_NEWLINK */, 4);
  return m;
}
function error(errno: number): Buffer {
  const m = Buffer.alloc(36);
  m.writeUInt32LE(36, 0);
  m.writeUInt16LE(2 /* NLMSG_ERROR */, 4);
  m.writeInt32LE(-errno, 16);
  return m;
}
const ack = error(0);
const xdpAttrs = (attached: number, ids: Record<number, number>) =>
  Buffer.concat([attr(2, Buffer.from([attached])), ...Object.entries(ids).map(([t, id]) => attr(Number(t), u32(id)))]);

describe('parseXdpLink', () => {
  it('native: the driver-mode program id', () => {
    expect(parseXdpLink([newlink(7, xdpAttrs(1, { 4: 91, 5: 91 })), ack], 'ifindex 7')).toEqual({ id: 91, mode: 'native' });
  });

  it('generic: the skb-mode program id', () => {
    expect(parseXdpLink([newlink(7, xdpAttrs(2, { 4: 12, 6: 12 })), ack], 'ifindex 7')).toEqual({ id: 12, mode: 'generic' });
  });

  it('no program: XDP_ATTACHED_NONE, or no IFLA_XDP at all', () => {
    expect(parseXdpLink([newlink(7, xdpAttrs(0, {})), ack], 'ifindex 7')).toBeNull();
    expect(parseXdpLink([newlink(7, null), ack], 'ifindex 7')).toBeNull();
  });

  it('a device that is gone is null; another error names the operation and errno', () => {
    expect(parseXdpLink([error(19)], 'ifindex 7')).toBeNull();
    expect(() => parseXdpLink([error(1)], 'ifindex 7')).toThrow(/RTM_GETLINK\(ifindex 7\): EPERM/);
  });

  it('a truncated attribute does not read past the message', () => {
    const m = newlink(7, xdpAttrs(1, { 5: 91 }));
    expect(parseXdpLink([m.subarray(0, m.length - 6)], 'ifindex 7')).toBeNull();
  });
});
