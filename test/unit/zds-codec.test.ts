import { describe, expect, it } from 'vitest';
import {
  decodeHello,
  decodeRequest,
  decodeResponse,
  encodeHello,
  encodeRequest,
  encodeResponse,
  MAX_DATAGRAM,
  ZdsDecodeError,
  ZdsEncodeError,
  type DecodeErrorKind,
  type WorkloadRequest,
} from '../../src/zds/codec.js';

const info = { name: 'web-0', namespace: 'shop', serviceAccount: 'web' };
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function kindOf(fn: () => unknown): DecodeErrorKind | 'no error' | 'other error' {
  try {
    fn();
    return 'no error';
  } catch (err) {
    return err instanceof ZdsDecodeError ? err.kind : 'other error';
  }
}

describe('ZDS codec', () => {
  it('round-trips every request kind', () => {
    const requests: WorkloadRequest[] = [
      { kind: 'add', uid: 'u-1', workloadInfo: info },
      { kind: 'add', uid: 'u-2', workloadInfo: { name: '', namespace: '', serviceAccount: '' } },
      { kind: 'keep', uid: 'u-3' },
      { kind: 'del', uid: 'u-4' },
      { kind: 'snapshot_sent' },
    ];
    for (const r of requests) expect(decodeRequest(encodeRequest(r))).toEqual(r);
  });

  it('uses the published field numbers on the wire', () => {
    // del is field 2 of WorkloadRequest and its uid is field 2 of DelWorkload.
    expect(encodeRequest({ kind: 'del', uid: 'a' }).toString('hex')).toBe('1203120161');
    // keep is field 5, snapshot_sent field 3, add field 1 with workload_info field 2.
    expect(encodeRequest({ kind: 'keep', uid: 'a' }).toString('hex')).toBe('2a030a0161');
    expect(encodeRequest({ kind: 'snapshot_sent' }).toString('hex')).toBe('1a00');
    expect(encodeRequest({ kind: 'add', uid: 'a', workloadInfo: { name: 'n', namespace: 's', serviceAccount: 'k' } }).toString('hex')).toBe(
      '0a0e' + '0a0161' + '1209' + '0a016e' + '120173' + '1a016b',
    );
  });

  it('round-trips hello and ack', () => {
    expect(decodeHello(encodeHello({ version: 1 }))).toEqual({ version: 1 });
    expect(encodeHello({ version: 1 }).toString('hex')).toBe('0801');
    expect(decodeResponse(encodeResponse({ error: '' }))).toEqual({ error: '' });
    expect(decodeResponse(encodeResponse({ error: 'no such netns' }))).toEqual({ error: 'no such netns' });
  });

  it('decodes a hello without a version (even an empty datagram) as NOT_USED (the server rejects it)', () => {
    expect(decodeHello(Buffer.alloc(0))).toEqual({ version: 0 });
    // An empty datagram is an error of its own; a hello with only an unknown field is version 0.
    expect(decodeHello(hex('1001'))).toEqual({ version: 0 });
  });

  const add = encodeRequest({ kind: 'add', uid: 'u-1', workloadInfo: info });
  const malformed: [string, () => unknown, DecodeErrorKind][] = [
    ['empty request', () => decodeRequest(Buffer.alloc(0)), 'payload'],
    ['empty response', () => decodeResponse(Buffer.alloc(0)), 'payload'],
    ['request cut in the middle', () => decodeRequest(add.subarray(0, add.length - 3)), 'truncated'],
    ['request cut after its tag', () => decodeRequest(add.subarray(0, 1)), 'truncated'],
    ['length beyond the end', () => decodeRequest(hex('0a7f0a0161')), 'truncated'],
    ['varint without an end', () => decodeHello(hex('08ff')), 'truncated'],
    ['hello cut after its tag', () => decodeHello(hex('08')), 'truncated'],
    ['nested length beyond its parent', () => decodeRequest(hex('0a03 0a0561')), 'truncated'],
    ['longer than the 1024-byte buffer', () => decodeResponse(Buffer.alloc(MAX_DATAGRAM + 1, 0)), 'too-large'],
    ['hello version as a string', () => decodeHello(hex('0a0101')), 'wire-type'],
    ['add as a varint', () => decodeRequest(hex('0801')), 'wire-type'],
    ['uid as a varint', () => decodeRequest(hex('0a02 0801')), 'wire-type'],
    ['workload_info name as fixed32', () => decodeRequest(hex('0a0a 0a0161 1205 0d01020304')), 'wire-type'],
    ['ack as fixed64', () => decodeResponse(hex('090102030405060708')), 'wire-type'],
    ['group wire type', () => decodeRequest(hex('0b')), 'wire-type'],
    ['field number 0', () => decodeRequest(hex('0001')), 'wire-type'],
    ['unknown oneof member (field 4)', () => decodeRequest(hex('2200')), 'payload'],
    ['unknown oneof member (field 6)', () => decodeRequest(hex('3203 0a0161')), 'payload'],
    ['no payload at all (only an unknown varint)', () => decodeRequest(hex('5001')), 'payload'],
    ['two payloads', () => decodeRequest(hex('1a00 1203120161')), 'payload'],
    ['response without ack', () => decodeResponse(hex('1200')), 'payload'],
    ['add without uid', () => decodeRequest(encodeRequestRaw({ add: 'workloadInfoOnly' })), 'required'],
    ['add without workload_info', () => decodeRequest(hex('0a03 0a0161')), 'required'],
    ['keep without uid', () => decodeRequest(hex('2a00')), 'required'],
    ['del without uid', () => decodeRequest(hex('1200')), 'required'],
    ['del with its uid in field 1 (the old number)', () => decodeRequest(hex('1203 0a0161')), 'required'],
  ];
  it.each(malformed)('rejects %s with a typed error', (_name, fn, kind) => {
    expect(kindOf(fn)).toBe(kind);
  });

  it('never throws anything but ZdsDecodeError on random bytes', () => {
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 256;
    for (let i = 0; i < 5000; i++) {
      const buf = Buffer.from(Array.from({ length: 1 + (i % 40) }, rnd));
      for (const dec of [decodeRequest, decodeResponse, decodeHello]) {
        expect(['no error', 'too-large', 'truncated', 'wire-type', 'payload', 'required']).toContain(kindOf(() => dec(buf)));
      }
    }
  });

  it('refuses to encode a request ztunnel would read truncated, or one without uid', () => {
    expect(() => encodeRequest({ kind: 'add', uid: 'u', workloadInfo: { ...info, name: 'x'.repeat(1100) } })).toThrow(ZdsEncodeError);
    expect(() => encodeRequest({ kind: 'del', uid: '' })).toThrow(ZdsEncodeError);
  });
});

/** add { workload_info { name: "n" } } with no uid. */
function encodeRequestRaw(_: { add: 'workloadInfoOnly' }): Buffer {
  return hex('0a05 1203 0a016e');
}
