// Ethereum in the browser: JSON-RPC to a chain node the auditor names, ABI words, EIP-712
// digests (consensus/SIGNING.md) and secp256k1 signer recovery (primitives/eip712.py rules).
import { secp256k1 } from '../vendor/noble-curves/secp256k1.js';
import { addressWord, concat, hex, keccak, toBigInt, unhex, utf8, word } from './bytes.js';

export const RPC_TIMEOUT_MS = 15000;
export const MAX_RPC_BYTES = 4 * 1024 * 1024;
const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const DOMAIN_TYPE = 'EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)';

export class RpcError extends Error {}

/** One chain RPC endpoint; every answer is bounded in time and size. */
export class Rpc {
  constructor(url) { this.url = url; this.nextId = 1; }

  async call(method, params) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), RPC_TIMEOUT_MS);
    let body;
    try {
      const response = await fetch(this.url, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: controller.signal,
        body: JSON.stringify({ jsonrpc: '2.0', id: this.nextId++, method, params }),
      });
      body = await response.text();
      if (!response.ok) throw new RpcError(`RPC ${this.url}: HTTP ${response.status}`);
    } catch (exc) {
      if (exc instanceof RpcError) throw exc;
      throw new RpcError(`RPC ${this.url} could not be asked (${exc.name}: ${exc.message})`);
    } finally {
      clearTimeout(timer);
    }
    if (body.length > MAX_RPC_BYTES) throw new RpcError(`RPC ${this.url}: answer over ${MAX_RPC_BYTES} bytes`);
    let answer;
    try { answer = JSON.parse(body); } catch { throw new RpcError(`RPC ${this.url}: not JSON`); }
    if (answer.error) throw new RpcError(`RPC ${method}: ${String(answer.error.message).slice(0, 200)}`);
    return answer.result;
  }

  async chainId() { return Number(BigInt(await this.call('eth_chainId', []))); }
  async blockNumber() { return Number(BigInt(await this.call('eth_blockNumber', []))); }
  async code(address, block) { return unhex(await this.call('eth_getCode', [hex(address), tag(block)]), undefined, 'code'); }
  async ethCall(to, data, block) {
    return unhex(await this.call('eth_call', [{ to: hex(to), data: hex(data) }, tag(block)]), undefined, 'eth_call');
  }
}

const tag = (block) => (block === undefined ? 'latest' : '0x' + block.toString(16));

export const selector = (signature) => keccak(utf8(signature)).slice(0, 4);

/** Calldata of `signature` with static words and, at most, bytes32[] arrays (head/tail encoding). */
export function calldata(signature, args) {
  const heads = [];
  const tails = [];
  let tailOffset = 32 * args.length;
  for (const arg of args) {
    if (Array.isArray(arg)) {
      heads.push(word(tailOffset));
      const encoded = concat(word(arg.length), ...arg);
      tails.push(encoded);
      tailOffset += encoded.length;
    } else {
      heads.push(arg);
    }
  }
  return concat(selector(signature), ...heads, ...tails);
}

export function words(data) {
  if (data.length % 32) throw new RpcError('ABI answer is not a whole number of words');
  const out = [];
  for (let i = 0; i < data.length; i += 32) out.push(data.subarray(i, i + 32));
  return out;
}

export const uintAt = (data, index) => toBigInt(words(data)[index] ?? fail('ABI answer too short'));
export const addressAt = (data, index) => (words(data)[index] ?? fail('ABI answer too short')).slice(12);

export function addressArray(data, max = 1024) {
  const w = words(data);
  const offset = Number(toBigInt(w[0] ?? fail('ABI answer too short'))) / 32;
  const count = Number(toBigInt(w[offset] ?? fail('ABI array out of range')));
  if (count > max) throw new RpcError(`ABI array of ${count} addresses (at most ${max})`);
  const out = [];
  for (let i = 0; i < count; i++) out.push((w[offset + 1 + i] ?? fail('ABI array out of range')).slice(12));
  return out;
}

function fail(message) { throw new RpcError(message); }

export function domainSeparator(name, version, chainId, contract) {
  return keccak(concat(keccak(utf8(DOMAIN_TYPE)), keccak(utf8(name)), keccak(utf8(version)), word(chainId),
    addressWord(contract)));
}

/** keccak256(0x1901 || domainSeparator || keccak256(typeHash || encoded words)). */
export function typedDigest(separator, typeString, encodedWords) {
  const structHash = keccak(concat(keccak(utf8(typeString)), ...encodedWords));
  return keccak(concat(new Uint8Array([0x19, 0x01]), separator, structHash));
}

/** The signer address of a 65-byte r||s||v signature; throws why not (bad v, high s, no point). */
export function recoverAddress(digest, signature) {
  if (signature.length !== 65) throw new Error('signature must be 65 bytes');
  const v = signature[64];
  if (v !== 27 && v !== 28) throw new Error('signature v must be 27 or 28');
  const s = toBigInt(signature.subarray(32, 64));
  if (!(s > 0n && s <= N / 2n)) throw new Error('signature s must be in the lower half of the curve order');
  let point;
  try {
    const recovered = concat(new Uint8Array([v - 27]), signature.subarray(0, 64));
    point = secp256k1.Signature.fromBytes(recovered, 'recovered').recoverPublicKey(digest);
  } catch (exc) {
    throw new Error(`signature does not recover: ${exc.message}`);
  }
  return keccak(point.toBytes(false).subarray(1)).slice(12);
}
