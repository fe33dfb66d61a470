// "Verify this event" in the browser: the checks of `devsen audit verify` (anchoring/audit.py,
// anchoring/AUDIT.md), made here from the node's proof document and the chain RPC the auditor
// names. Nothing the node says is taken on trust: the event id, the vouch, the leaf, the Merkle
// path, the root on chain, the block hash and the commit certificate are all recomputed, and
// the validator sets are read from the ValidatorSet contract's epoch history by eth_call.
import { addressWord, concat, equal, hex, int, keccak, toBigInt, unhex, word } from './bytes.js';
import { Bin, decodeCanonical } from './msgpack.js';
import {
  addressArray, addressAt, calldata, domainSeparator, recoverAddress, typedDigest, uintAt,
} from './eth.js';

export const PROOF_FORMAT = 'devsen-event-proof/1';
export const SET_SWITCH_DELAY = 2; // a set change committed at height H certifies from H + 2
export const VOUCH_SET_DELAY = 1; // the application's own set (vouches) switches after H
const MAX_PROOF_LENGTH = 64;
const MAX_EVENT_BYTES = 64 * 1024;
const MAX_TEXT_CHARS = 256;
const OCPP_VERSIONS = ['1.6', '2.0.1'];
const VOTE_TYPE = 'Vote(uint8 voteType,uint64 height,uint32 round,bytes32 blockHash)';
const VOUCH_TYPE = 'ChargerEventVouch(bytes32 bodyHash,uint128 connectionId,address ingressNode)';
const TAG_HASH = /^keccak256:[0-9a-f]{64}$/;
const ZERO32 = new Uint8Array(32);

export const check = (name, ok, detail) => ({ name, ok: Boolean(ok), detail });

/** The Anchor and ValidatorSet contracts at one RPC, read `confirmations` blocks below the head. */
export class ChainReader {
  constructor(rpc, anchor, confirmations = 0) {
    this.rpc = rpc; this.anchor = anchor; this.confirmations = confirmations; this.epochs = new Map();
  }

  async open() {
    this.chainId = await this.rpc.chainId();
    this.block = Math.max(0, (await this.rpc.blockNumber()) - this.confirmations);
    if ((await this.rpc.code(this.anchor, this.block)).length === 0) {
      throw new Error(`no contract at Anchor address ${hex(this.anchor)} on chain ${this.chainId} at block ${this.block}`);
    }
    this.validatorSet = addressAt(await this.rpc.ethCall(this.anchor, calldata('validatorSet()', []), this.block), 0);
    this.consensusSeparator = domainSeparator('DEVSEN', '1', this.chainId, this.validatorSet);
    this.ingressSeparator = domainSeparator('DEVSEN Ingress', '1', this.chainId, this.anchor);
    return this;
  }

  async batch(batchId) {
    const next = uintAt(await this.rpc.ethCall(this.anchor, calldata('nextBatchId()', []), this.block), 0);
    if (BigInt(batchId) >= next) return null;
    const out = await this.rpc.ethCall(this.anchor, calldata('batch(uint64)', [word(batchId)]), this.block);
    return { batch_id: batchId, root: out.slice(0, 32), first_height: Number(uintAt(out, 1)),
      last_height: Number(uintAt(out, 2)), event_count: Number(uintAt(out, 3)) };
  }

  async verifyInclusion(batchId, eventId, siblings, directions) {
    const data = calldata('verifyInclusion(uint256,bytes32,bytes32[],uint256)',
      [word(batchId), eventId, siblings, word(directions)]);
    return uintAt(await this.rpc.ethCall(this.anchor, data, this.block), 0) === 1n;
  }

  async epochAt(ethBlock) {
    const data = calldata('epochAtBlock(uint256)', [word(ethBlock)]);
    return Number(uintAt(await this.rpc.ethCall(this.validatorSet, data, this.block), 0));
  }

  async epochValidators(epoch) {
    if (!this.epochs.has(epoch)) {
      const data = calldata('epochValidators(uint64)', [word(epoch)]);
      const addresses = addressArray(await this.rpc.ethCall(this.validatorSet, data, this.block));
      this.epochs.set(epoch, addresses.map(hex).sort());
    }
    return { epoch, addresses: this.epochs.get(epoch) };
  }

  /** The operators (full nodes accepting chargers) registered in the state of Ethereum block `ethBlock`;
   *  none on a ValidatorSet without the registry. */
  async operatorsAt(ethBlock) {
    try {
      const out = await this.rpc.ethCall(this.validatorSet, calldata('operators()', []), ethBlock);
      return addressArray(out).map(hex);
    } catch { return []; }
  }

  /** The set certifying a height whose ancestor named Ethereum block `setBlock` (null: epoch 0). */
  async validatorsInForce(setBlock) {
    return this.epochValidators(setBlock === null ? 0 : await this.epochAt(setBlock));
  }
}

/** keccak256(abi.encode(height, timestampMs, proposer, prev, appState, payloadsHash, appHeaderHash)). */
export function blockHash(header, payloadHashes) {
  return keccak(concat(word(header.height), word(header.timestamp_ms), addressWord(header.proposer),
    header.prev_block_hash, header.app_state_hash, keccak(concat(...payloadHashes)), keccak(header.app_header)));
}

/** Header fields of a block document, as bytes (throws naming the field). */
export function parseHeader(doc) {
  return {
    height: int(doc.height, 'block.height'), timestamp_ms: int(doc.timestamp_ms, 'block.timestamp_ms'),
    proposer: unhex(doc.proposer, 20, 'block.proposer'),
    prev_block_hash: unhex(doc.prev_block_hash, 32, 'block.prev_block_hash'),
    app_state_hash: unhex(doc.app_state_hash, 32, 'block.app_state_hash'),
    app_header: unhex(doc.app_header, undefined, 'block.app_header'),
  };
}

/** The Ethereum block an app header names: canonical msgpack [1, number, 32-byte hash]. */
export function ethBlockOf(appHeader) {
  let fields;
  try { fields = decodeCanonical(appHeader).value; } catch (exc) { throw new Error(`app header is not canonical msgpack: ${exc.message}`); }
  if (!Array.isArray(fields) || fields.length !== 3 || fields[0] !== 1 || typeof fields[1] !== 'number'
      || fields[1] < 0 || !(fields[2] instanceof Bin) || fields[2].bytes.length !== 32) {
    throw new Error('app header is not [1, eth block number, 32-byte eth block hash]');
  }
  return fields[1];
}

/** Blocks by height from the node's /v1/blocks/{height} (null if missing or malformed), with hashes recomputed. */
export function blockLoader(fetchNode) {
  const cache = new Map();
  return async (height) => {
    if (!cache.has(height)) {
      let block = null;
      try {
        const doc = (await fetchNode(`/v1/blocks/${height}`)).block;
        const header = parseHeader(doc);
        const payloads = doc.payloads.map((p, i) => unhex(p, undefined, `payloads[${i}]`));
        block = { ...header, hash: blockHash(header, payloads.map(keccak)) };
      } catch { block = null; }
      cache.set(height, block);
    }
    return cache.get(height);
  };
}

/** The Ethereum block whose epoch certifies `height` (null: epoch 0), via hash-linked ancestors. */
export async function setBlockFor(height, prevBlockHash, load, delay) {
  if (height <= delay) return null;
  let expected = prevBlockHash;
  let ancestor = null;
  for (let below = height - 1; below > height - delay - 1; below--) {
    ancestor = await load(below);
    if (ancestor === null) throw new Error(`the node does not serve block ${below}`);
    if (ancestor.height !== below || !equal(ancestor.hash, expected)) {
      throw new Error(`block ${below} does not hash-link to block ${below + 1}`);
    }
    expected = ancestor.prev_block_hash;
  }
  return ethBlockOf(ancestor.app_header);
}

/** The fields of a canonical version-2 ChargerEvent (ocpp_adapter/events.py from_bytes); throws why not. */
export function parseEvent(bytes) {
  if (bytes.length > MAX_EVENT_BYTES) throw new Error(`event is ${bytes.length} bytes, limit ${MAX_EVENT_BYTES}`);
  const { value: f, topItems } = decodeCanonical(bytes);
  if (!Array.isArray(f) || f[0] !== 2) throw new Error('not a version-2 ChargerEvent array');
  if (f.length !== 10) throw new Error(`a ChargerEvent array has 10 fields, not ${f.length}`);
  const [, chargerId, version, action, messageId, payload, received, ingress, connection, signature] = f;
  if (![chargerId, version, action, messageId].every((x) => typeof x === 'string')) throw new Error('text fields must be strings');
  if (typeof received !== 'number' && typeof received !== 'bigint') throw new Error('received_at_ms must be an integer');
  if (![ingress, connection, signature].every((x) => x instanceof Bin)) throw new Error('ingress, connection_id and signature must be byte strings');
  if (ingress.bytes.length !== 0 && ingress.bytes.length !== 20) throw new Error('ingress must be 20 bytes (or empty if unsigned)');
  if (!OCPP_VERSIONS.includes(version)) throw new Error(`ocpp_version ${JSON.stringify(version)} not in 1.6, 2.0.1`);
  if (!chargerId || !action || !messageId) throw new Error('charger_id, action and message_id must be non-empty');
  if (!(payload instanceof Map)) throw new Error('payload must be a JSON object');
  if (plaintextIdTag(version, action, payload)) throw new Error(`the ${action} payload carries a plaintext idTag`);
  if (Math.max(...[chargerId, action, messageId].map((s) => [...s].length)) > MAX_TEXT_CHARS) throw new Error('text fields are at most 256 characters');
  if (!(BigInt(received) >= 0n && BigInt(received) < 1n << 63n)) throw new Error('received_at_ms must be in [0, 2^63)');
  if (connection.bytes.length !== 16) throw new Error('connection_id must be 16 bytes');
  if (signature.bytes.length !== 0 && signature.bytes.length !== 65) throw new Error('signature must be 65 bytes (or empty if unsigned)');
  // The vouch signs the canonical bytes of the first nine fields: 0x99 then the same item encodings.
  const body = concat(new Uint8Array([0x99]), bytes.subarray(topItems[0][0], topItems[8][1]));
  return { chargerId, version, action, messageId, payload, receivedAtMs: Number(received),
    ingress: ingress.bytes, connectionId: connection.bytes, signature: signature.bytes, bodyHash: keccak(body) };
}

function plaintextIdTag(version, action, payload) {
  const plain = (v) => typeof v === 'string' && !TAG_HASH.test(v);
  if (plain(payload.get('idTag'))) return true;
  const token = payload.get('idToken');
  if (token instanceof Map) {
    if (plain(token.get('idToken'))) return true;
    const extra = token.get('additionalInfo');
    if (Array.isArray(extra) && extra.some((i) => i instanceof Map && plain(i.get('additionalIdToken')))) return true;
  }
  return version === '2.0.1' && action === 'Authorize' && plain(payload.get('certificate'));
}

export async function vouchCheck(event, chain, height, prevBlockHash, load, ownEthBlock) {
  let signer = null;
  let who = 'no voucher';
  if (event.signature.length && event.ingress.length) {
    const digest = typedDigest(chain.ingressSeparator, VOUCH_TYPE,
      [event.bodyHash, word(toBigInt(event.connectionId)), addressWord(event.ingress)]);
    try { signer = recoverAddress(digest, event.signature); who = `vouched for by ${hex(signer)}`; }
    catch (exc) { who = `the ingress signature is malformed: ${exc.message}`; }
  } else {
    who = 'the event is not vouched for (no ingress validator signature)';
  }
  let validators;
  try {
    validators = await chain.validatorsInForce(await setBlockFor(height, prevBlockHash, load, VOUCH_SET_DELAY));
  } catch (exc) {
    return check('vouch', false, `${who}, but which validator set judged block ${height} is unknown: ${exc.message}`);
  }
  let problem = null;
  if (signer === null) problem = who;
  else if (!equal(signer, event.ingress)) problem = `the event names ingress ${hex(event.ingress)} but is signed by ${hex(signer)}`;
  else if (!validators.addresses.includes(hex(signer))) problem = `the ingress ${hex(event.ingress)} is not a current validator nor a registered operator`;
  const over = ` over connection ${hex(event.connectionId)}`;
  if (problem !== null && signer !== null && equal(signer, event.ingress) && ownEthBlock !== null
      && (await chain.operatorsAt(ownEthBlock)).includes(hex(signer))) {
    return check('vouch', true, `${who}${over} (an operator registered at Ethereum block ${ownEthBlock}, not a validator: a full node; it authenticated the charger)`);
  }
  return check('vouch', problem === null, problem === null
    ? `${who}${over} (a validator of epoch ${validators.epoch}; it authenticated the charger)`
    : `${who}${over}: ${problem} (epoch ${validators.epoch})`);
}

export async function certificateCheck(chain, hash, height, prevBlockHash, certificate, load) {
  let setBlock;
  let validators;
  try {
    setBlock = await setBlockFor(height, prevBlockHash, load, SET_SWITCH_DELAY);
    validators = await chain.validatorsInForce(setBlock);
  } catch (exc) {
    return check('commit certificate', false, `cannot tell which validator set certifies block ${height}: ${exc.message}`);
  }
  const source = `epoch ${validators.epoch} of the ValidatorSet at ${hex(chain.validatorSet)} (in force at Ethereum block ${setBlock ?? 'of deployment'})`;
  const fail = (why) => check('commit certificate', false, `${why} (checked against ${source})`);
  if (!equal(certificate.blockHash, hash)) return fail('certificate is for another block');
  if (equal(certificate.blockHash, ZERO32)) return fail('certificate is for nil');
  const digest = typedDigest(chain.consensusSeparator, VOTE_TYPE,
    [word(2), word(certificate.height), word(certificate.round), certificate.blockHash]);
  const signers = [];
  for (const signature of certificate.signatures) {
    try { signers.push(hex(recoverAddress(digest, signature))); } catch (exc) { return fail(`bad signature: ${exc.message}`); }
  }
  for (let i = 1; i < signers.length; i++) if (!(signers[i - 1] < signers[i])) return fail('signatures are not strictly ascending by signer');
  const outsider = signers.find((s) => !validators.addresses.includes(s));
  if (outsider) return fail(`signer ${outsider} is not a validator`);
  const quorum = Math.floor((2 * validators.addresses.length) / 3) + 1;
  if (signers.length < quorum) return fail(`power ${signers.length} below quorum ${quorum}`);
  return check('commit certificate', true, `${signers.length} of ${validators.addresses.length} validators of ${source} precommitted block ${hex(hash)} at round ${certificate.round}`);
}

/** Every check of `audit verify` on one proof document, in its order. */
export async function verifyEvent(document, eventId, chain, load) {
  const checks = [];
  let p;
  try {
    if (!document || document.format !== PROOF_FORMAT) throw new Error(`not a ${PROOF_FORMAT} document`);
    const siblings = document.proof.map((s, i) => unhex(s, 32, `proof[${i}]`));
    if (siblings.length > MAX_PROOF_LENGTH) throw new Error(`a proof has at most ${MAX_PROOF_LENGTH} siblings`);
    const directions = BigInt(int(document.directions, 'directions'));
    if (!(directions >= 0n && directions < 1n << BigInt(siblings.length))) throw new Error('directions must be in [0, 2**len(siblings))');
    const b = document.batch;
    const batch = { batch_id: int(b.batch_id, 'batch.batch_id'), root: unhex(b.root, 32, 'batch.root'),
      first_height: int(b.first_height, 'batch.first_height'), last_height: int(b.last_height, 'batch.last_height'),
      event_count: int(b.event_count, 'batch.event_count') };
    const c = document.certificate;
    const certificate = { height: int(c.height, 'certificate.height'), round: int(c.round, 'certificate.round'),
      blockHash: unhex(c.block_hash, 32, 'certificate.block_hash'),
      signatures: c.signatures.map((s, i) => unhex(s, 65, `certificate.signatures[${i}]`)) };
    const header = parseHeader(document.block);
    const hashes = document.block.payload_hashes.map((h, i) => unhex(h, 32, `payload_hashes[${i}]`));
    p = { eventBytes: unhex(document.event_bytes, undefined, 'event_bytes'), siblings, directions, batch, certificate,
      header, hashes, payload: unhex(document.block.payload, undefined, 'block.payload'),
      payloadIndex: int(document.block.payload_index, 'block.payload_index'),
      claimedChain: document.anchor ? document.anchor.chain_id : undefined, claimedHash: document.block.hash,
      leaf: document.leaf };
  } catch (exc) {
    return [check('proof document', false, `malformed: ${exc.message}`)];
  }
  const height = p.header.height;
  const hash = blockHash(p.header, p.hashes);

  const recomputed = keccak(p.eventBytes);
  checks.push(check('event id', equal(recomputed, eventId), `keccak256(event bytes) = ${hex(recomputed)}, asked for ${hex(eventId)}`));
  let event = null;
  try {
    event = parseEvent(p.eventBytes);
    checks.push(check('event bytes', true, `canonical ChargerEvent ${event.action} from charger ${JSON.stringify(event.chargerId)}, message ${JSON.stringify(event.messageId)}, received by ${event.ingress.length ? hex(event.ingress) : '(nobody)'}`));
    let ownEthBlock = null;
    try { ownEthBlock = ethBlockOf(p.header.app_header); } catch { ownEthBlock = null; }
    checks.push(await vouchCheck(event, chain, height, p.header.prev_block_hash, load, ownEthBlock));
  } catch (exc) {
    checks.push(check('event bytes', false, `not a canonical ChargerEvent: ${exc.message}`));
  }
  const leaf = keccak(concat(new Uint8Array([0]), recomputed));
  checks.push(check('leaf', hex(leaf) === p.leaf, `H(0x00 || event id) = ${hex(leaf)}`));
  let running = leaf;
  p.siblings.forEach((sibling, k) => {
    running = (p.directions >> BigInt(k)) & 1n
      ? keccak(concat(new Uint8Array([1]), sibling, running)) : keccak(concat(new Uint8Array([1]), running, sibling));
  });
  checks.push(check('merkle proof (local)', equal(running, p.batch.root), `${p.siblings.length} siblings lead to ${hex(running)}; batch ${p.batch.batch_id} claims root ${hex(p.batch.root)}`));

  if (p.claimedChain !== undefined && p.claimedChain !== null && p.claimedChain !== chain.chainId) {
    checks.push(check('chain id', false, `the node anchors on chain ${p.claimedChain}, the RPC is chain ${chain.chainId}`));
  }
  const onChain = await chain.batch(p.batch.batch_id);
  if (onChain === null) {
    const depth = chain.confirmations ? ` at least ${chain.confirmations} blocks deep` : '';
    checks.push(check('root on chain', false, `batch ${p.batch.batch_id} is not anchored${depth} at Anchor ${hex(chain.anchor)} on chain ${chain.chainId}`));
  } else {
    checks.push(check('root on chain', equal(onChain.root, running) && !equal(onChain.root, ZERO32), `Anchor.batch(${p.batch.batch_id}).root = ${hex(onChain.root)}`));
    const same = equal(onChain.root, p.batch.root) && onChain.first_height === p.batch.first_height
      && onChain.last_height === p.batch.last_height && onChain.event_count === p.batch.event_count;
    checks.push(check('batch range', same, `on chain: heights ${onChain.first_height}..${onChain.last_height}, ${onChain.event_count} events`));
    checks.push(check('contract verifyInclusion', await chain.verifyInclusion(p.batch.batch_id, recomputed, p.siblings, p.directions), "the Anchor contract's own check of the same proof"));
  }
  checks.push(check('block in batch', p.batch.first_height <= height && height <= p.batch.last_height, `block ${height} in heights ${p.batch.first_height}..${p.batch.last_height}`));
  const inBlock = p.payloadIndex >= 0 && p.payloadIndex < p.hashes.length && equal(p.hashes[p.payloadIndex], keccak(p.payload))
    && equal(p.payload, p.eventBytes) && event !== null;
  checks.push(check('event in block', inBlock, `payload #${p.payloadIndex} of block ${height} carries the event`));
  checks.push(check('block hash', hex(hash) === p.claimedHash && p.certificate.height === height, `recomputed ${hex(hash)} from the header and ${p.hashes.length} payload hashes`));
  checks.push(await certificateCheck(chain, hash, height, p.header.prev_block_hash, p.certificate, load));
  return checks;
}


