// A strict msgpack decoder for canonical ChargerEvents (ocpp_adapter/events.py): it accepts
// exactly what Python's msgpack.packb(canonical_value(x), use_bin_type=True) produces: the
// smallest encoding of every int, str, bin, array and map, float64 only, string map keys in
// ascending order, no ext types, valid UTF-8, nothing after the value. Anything else throws.
// It returns values plus the byte ranges of the top-level array items (the vouch body hash is
// over the first nine of them).

const text = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

export class Bin {
  constructor(bytes) { this.bytes = bytes; }
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function decodeCanonical(data, maxDepth = 64) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = 0;
  const need = (n) => { if (at + n > data.length) throw new Error('truncated msgpack'); };
  const u8 = () => { need(1); return data[at++]; };
  const u16 = () => { need(2); const v = view.getUint16(at); at += 2; return v; };
  const u32 = () => { need(4); const v = view.getUint32(at); at += 4; return v; };
  const minimal = (ok, what) => { if (!ok) throw new Error(`non-canonical msgpack: ${what} not in its smallest form`); };
  const topItems = [];

  function length(tag, small, b8, b16, b32, what) {
    if (tag === b8) { const n = u8(); minimal(n >= small, what); return n; }
    if (tag === b16) { const n = u16(); minimal(n >= 256 || (b8 === null && n >= small), what); return n; }
    const n = u32(); minimal(n >= 65536, what); return n;
  }

  function value(depth) {
    if (depth > maxDepth) throw new Error('msgpack nested too deeply');
    const tag = u8();
    if (tag <= 0x7f) return tag;
    if (tag >= 0xe0) return tag - 256;
    if ((tag & 0xe0) === 0xa0) return str(tag & 0x1f);
    if ((tag & 0xf0) === 0x90) return array(tag & 0x0f, depth);
    if ((tag & 0xf0) === 0x80) return map(tag & 0x0f, depth);
    switch (tag) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xcc: { const v = u8(); minimal(v > 0x7f, 'uint8'); return v; }
      case 0xcd: { const v = u16(); minimal(v > 0xff, 'uint16'); return v; }
      case 0xce: { const v = u32(); minimal(v > 0xffff, 'uint32'); return v; }
      case 0xcf: { need(8); const v = view.getBigUint64(at); at += 8; minimal(v > 0xffffffffn, 'uint64'); return big(v); }
      case 0xd0: { need(1); const v = view.getInt8(at); at += 1; minimal(v < -32, 'int8'); return v; }
      case 0xd1: { need(2); const v = view.getInt16(at); at += 2; minimal(v < -128, 'int16'); return v; }
      case 0xd2: { need(4); const v = view.getInt32(at); at += 4; minimal(v < -32768, 'int32'); return v; }
      case 0xd3: { need(8); const v = view.getBigInt64(at); at += 8; minimal(v < -2147483648n, 'int64'); return big(v); }
      case 0xcb: {
        need(8); const v = view.getFloat64(at); at += 8;
        if (!Number.isFinite(v)) throw new Error('NaN and infinities have no canonical form');
        return { float: v };
      }
      case 0xca: throw new Error('non-canonical msgpack: float32');
      case 0xd9: case 0xda: case 0xdb: return str(length(tag, 32, 0xd9, 0xda, 0xdb, 'str length'));
      case 0xc4: case 0xc5: case 0xc6: {
        const n = length(tag, 0, 0xc4, 0xc5, 0xc6, 'bin length');
        need(n); const b = data.slice(at, at + n); at += n; return new Bin(b);
      }
      case 0xdc: case 0xdd: return array(length(tag, 16, null, 0xdc, 0xdd, 'array length'), depth);
      case 0xde: case 0xdf: return map(length(tag, 16, null, 0xde, 0xdf, 'map length'), depth);
      default: throw new Error(`msgpack type 0x${tag.toString(16)} has no canonical form (ext or reserved)`);
    }
  }
  function big(v) { return (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) ? Number(v) : v; }
  function str(n) {
    need(n); const s = text.decode(data.subarray(at, at + n)); at += n; return s;
  }
  function array(n, depth) {
    const out = [];
    for (let i = 0; i < n; i++) {
      const start = at;
      out.push(value(depth + 1));
      if (depth === 0) topItems.push([start, at]);
    }
    return out;
  }
  function map(n, depth) {
    const out = new Map();
    let previous = null;
    for (let i = 0; i < n; i++) {
      const key = value(depth + 1);
      if (typeof key !== 'string') throw new Error('a map key is not a string');
      const keyBytes = encoder.encode(key); // UTF-8 order is code point order, as Python's sorted()
      if (previous !== null && compareBytes(previous, keyBytes) >= 0) {
        throw new Error('non-canonical msgpack: map keys not in strictly ascending order');
      }
      previous = keyBytes;
      out.set(key, value(depth + 1));
    }
    return out;
  }

  const result = value(0);
  if (at !== data.length) throw new Error(`${data.length - at} bytes after the msgpack value`);
  return { value: result, topItems };
}

/** Plain JSON-like view of a decoded value, for showing to people. */
export function toPlain(v) {
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, toPlain(x)]));
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof Bin) return Array.from(v.bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  if (typeof v === 'bigint') return v.toString();
  if (v && typeof v === 'object' && 'float' in v) return v.float;
  return v;
}
