// Bytes, hex and hashing helpers of the explorer (one home for each).
import { keccak_256 } from '../vendor/noble-hashes/sha3.js';

export const keccak = (data) => keccak_256(data);

/** Bytes of a "0x…" string; throws naming `what` if malformed or of the wrong length. */
export function unhex(text, length, what = 'value') {
  if (typeof text !== 'string' || !/^0x([0-9a-fA-F]{2})*$/.test(text)) {
    throw new Error(`${what}: expected a 0x-hex string`);
  }
  const out = new Uint8Array((text.length - 2) / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 + 2 * i, 2), 16);
  if (length !== undefined && out.length !== length) {
    throw new Error(`${what}: expected ${length} bytes, got ${out.length}`);
  }
  return out;
}

export function hex(bytes) {
  let s = '0x';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

export function equal(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export const utf8 = (text) => new TextEncoder().encode(text);

/** A 32-byte big-endian word of a non-negative integer (number or bigint). */
export function word(value) {
  let v = BigInt(value);
  if (v < 0n || v >= 1n << 256n) throw new Error(`${value} does not fit 256 bits`);
  const out = new Uint8Array(32);
  for (let i = 31; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n; }
  return out;
}

export const addressWord = (address) => concat(new Uint8Array(12), address);

export function toBigInt(bytes) {
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

/** Safe integer from a JSON value, or throw naming it (bool, float, huge: refused). */
export function int(value, what) {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new Error(`${what}: not an integer`);
  return value;
}
