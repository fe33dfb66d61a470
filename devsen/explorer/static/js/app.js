// The explorer's pages (hash routes): #/ network, #/chargers, #/charger/ID, #/session/ID,
// #/block/H, #/verify/EVENT_ID. Data from this node's JSON API; proofs checked in verify.js.
import { hex, keccak, unhex } from './bytes.js';
import { dl, h, kwh, s, short, table, when } from './dom.js';
import { Rpc } from './eth.js';
import { decodeCanonical, toPlain } from './msgpack.js';
import { ChainReader, blockHash, blockLoader, certificateCheck, parseEvent, parseHeader, verifyEvent } from './verify.js';

const NODE_TIMEOUT_MS = 15000;
const MAX_NODE_BYTES = 32 * 1024 * 1024;
const REFRESH_MS = 5000;
const TOKEN = { symbol: 'DCT', decimals: 6 }; // ChargeToken (devsen/fmt.py)
const main = document.getElementById('main');
let refreshTimer = null;
let statusCache = null;

export class NodeError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** GET a JSON document from this node (bounded in time and size). */
async function api(path) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), NODE_TIMEOUT_MS);
  try {
    const response = await fetch(path, { signal: controller.signal, headers: { Accept: 'application/json' } });
    const text = await response.text();
    if (text.length > MAX_NODE_BYTES) throw new NodeError(0, `GET ${path}: answer over ${MAX_NODE_BYTES} bytes`);
    let body;
    try { body = JSON.parse(text); } catch { throw new NodeError(response.status, `GET ${path}: not JSON`); }
    if (!response.ok) throw new NodeError(response.status, `GET ${path}: HTTP ${response.status}: ${body && body.error}`);
    return body;
  } catch (exc) {
    if (exc instanceof NodeError) throw exc;
    throw new NodeError(0, `GET ${path}: ${exc.name}: ${exc.message}`);
  } finally {
    clearTimeout(timer);
  }
}

let nodeName = '';
const statusName = () => nodeName || 'this node';

async function status() {
  if (!statusCache) statusCache = api('/v1/status').catch((exc) => { statusCache = null; throw exc; });
  return statusCache;
}

export function tokens(units) {
  if (units === null || units === undefined || !/^-?\d+$/.test(String(units))) return '—';
  const v = BigInt(units);
  const base = 10n ** BigInt(TOKEN.decimals);
  const abs = v < 0n ? -v : v;
  return `${v < 0n ? '-' : ''}${(abs / base).toString()}.${(abs % base).toString().padStart(TOKEN.decimals, '0')} ${TOKEN.symbol}`;
}

const link = (href, text, attrs = {}) => h('a', { href, ...attrs }, text);
const statusBadge = (st) => h('span', { class: `badge status-${String(st).replace(/[^A-Za-z]/g, '')}` }, st ?? 'unknown');
const section = (title, ...content) => h('section', { class: 'card' }, h('h2', null, title), ...content);
const errorBox = (exc) => h('p', { class: 'error' }, String(exc.message || exc));

function hashParams() {
  const [path, query] = location.hash.replace(/^#/, '').split('?');
  return { parts: (path || '/').split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || '') };
}

function render(...nodes) { main.replaceChildren(...nodes); }

// ------------------------------------------------------------------ network
async function networkPage() {
  const [st, validators, blocks, anchors] = await Promise.all([
    status(), api('/v1/validators'), api('/v1/blocks?limit=20'), api('/v1/anchors?limit=10')]);
  const items = blocks.items;
  let rate = '—';
  if (items.length >= 2) {
    const span = (items[0].timestamp_ms - items[items.length - 1].timestamp_ms) / 1000;
    if (span > 0) rate = `${((items.length - 1) / span).toFixed(2)} blocks/s (last ${items.length} blocks)`;
  }
  const seen = new Set(st.validators_seen || []);
  render(
    h('h1', null, 'Network'),
    section('This node', dl([
      ['Node', `${st.node} (validator ${st.validator})`],
      ['Committed height', h('span', { id: 'height' }, String(blocks.height))],
      ['Block rate', h('span', { id: 'block-rate' }, rate)],
      ['Validator epoch', `${validators.epoch} (${validators.total} validators)`],
      ['Chain', `agreed Ethereum block ${st.chain?.agreed_block ?? '—'}, head ${st.chain?.head ?? '—'}`],
      ['Pending', `${st.pending?.anchors ?? 0} anchors, ${st.pending?.settlements ?? 0} settlements`],
    ])),
    section('Validators', table(['Address', 'Peer id', 'Endpoint', 'Linked to this node'],
      validators.items.map((v) => [h('code', null, v.address), h('code', null, short(v.peer_id, 8)), v.endpoint ?? '—',
        seen.has(v.address) ? 'yes' : 'no']), { id: 'validators' })),
    section('Latest blocks', table(['Height', 'Time', 'Proposer', 'Payloads', 'Hash'],
      items.map((b) => [link(`#/block/${b.height}`, String(b.height)), when(b.timestamp_ms), h('code', null, short(b.proposer, 6)),
        String(b.payloads), h('code', null, short(b.hash, 8))]), { id: 'blocks' })),
    section('Anchored batches', anchors.items.length ? table(['Batch', 'Heights', 'Events', 'Merkle root'],
      anchors.items.map((a) => [String(a.batch_id), `${a.first_height}..${a.last_height}`, String(a.event_count),
        h('code', null, short(a.root, 10))]), { id: 'anchors' }) : h('p', { class: 'muted' }, 'No batch has closed yet.')),
  );
  return true;
}

// ------------------------------------------------------------------ chargers and the map
function connectorSummary(c) {
  const real = (c.connectors || []).filter((x) => x.connector !== '0');
  return real.length ? real.map((x) => h('span', { class: 'connector' }, `#${x.connector} `, statusBadge(x.status))) : h('span', { class: 'muted' }, 'no status yet');
}

function availability(c) {
  const statuses = (c.connectors || []).filter((x) => x.connector !== '0').map((x) => x.status);
  if (statuses.includes('Available')) return 'Available';
  if (statuses.some((x) => x === 'Charging' || x === 'Occupied' || x === 'Preparing' || x === 'SuspendedEV')) return 'Charging';
  if (statuses.includes('Faulted')) return 'Faulted';
  return statuses[0] || 'Unknown';
}

function niceDistance(metres) {
  const p = 10 ** Math.floor(Math.log10(metres));
  const n = metres / p >= 5 ? 5 : metres / p >= 2 ? 2 : 1;
  return n * p;
}

/** An SVG map of charger coordinates (equirectangular around their centre), with a scale bar. */
export function chargerMap(chargers) {
  const W = 800; const H = 420; const pad = 40;
  const placed = chargers.filter((c) => c.location && typeof c.location.lat === 'number');
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'map', role: 'img', 'aria-label': 'map of chargers' });
  svg.append(s('rect', { x: 0, y: 0, width: W, height: H, class: 'map-bg' }));
  if (!placed.length) {
    svg.append(s('text', { x: W / 2, y: H / 2, class: 'map-note', 'text-anchor': 'middle' }, 'No charger has coordinates in its on-chain location.'));
    return svg;
  }
  const lats = placed.map((c) => c.location.lat); const lons = placed.map((c) => c.location.lon);
  const lat0 = (Math.min(...lats) + Math.max(...lats)) / 2;
  const k = Math.cos((lat0 * Math.PI) / 180) || 1e-6;
  let spanX = (Math.max(...lons) - Math.min(...lons)) * k; let spanY = Math.max(...lats) - Math.min(...lats);
  const span = Math.max(spanX, spanY * (W - 2 * pad) / (H - 2 * pad), 0.01);
  spanX = span; spanY = span * (H - 2 * pad) / (W - 2 * pad);
  const cx = (Math.min(...lons) + Math.max(...lons)) / 2 * k; const cy = lat0;
  const x = (lon) => pad + ((lon * k - cx) / spanX + 0.5) * (W - 2 * pad);
  const y = (lat) => H - pad - ((lat - cy) / spanY + 0.5) * (H - 2 * pad);
  for (let i = 0; i <= 4; i++) { // graticule with degree labels
    const gx = pad + (i / 4) * (W - 2 * pad); const gy = pad + (i / 4) * (H - 2 * pad);
    svg.append(s('line', { x1: gx, y1: pad, x2: gx, y2: H - pad, class: 'grid' }));
    svg.append(s('line', { x1: pad, y1: gy, x2: W - pad, y2: gy, class: 'grid' }));
    svg.append(s('text', { x: gx, y: H - pad + 14, class: 'axis', 'text-anchor': 'middle' }, `${((cx + (i / 4 - 0.5) * spanX) / k).toFixed(3)}°`));
    svg.append(s('text', { x: pad - 4, y: gy + 4, class: 'axis', 'text-anchor': 'end' }, `${(cy + (0.5 - i / 4) * spanY).toFixed(3)}°`));
  }
  const metresPerPx = (spanX * 111320) / (W - 2 * pad);
  const barMetres = niceDistance(metresPerPx * (W - 2 * pad) / 4);
  const barPx = barMetres / metresPerPx;
  svg.append(s('g', { class: 'scale', id: 'map-scale' },
    s('line', { x1: W - pad - barPx, y1: pad - 14, x2: W - pad, y2: pad - 14 }),
    s('line', { x1: W - pad - barPx, y1: pad - 19, x2: W - pad - barPx, y2: pad - 9 }),
    s('line', { x1: W - pad, y1: pad - 19, x2: W - pad, y2: pad - 9 }),
    s('text', { x: W - pad - barPx / 2, y: pad - 20, 'text-anchor': 'middle' }, barMetres >= 1000 ? `${barMetres / 1000} km` : `${barMetres} m`)));
  for (const c of placed) {
    const state = availability(c);
    const px = x(c.location.lon); const py = y(c.location.lat);
    svg.append(s('a', { href: `#/charger/${encodeURIComponent(c.charger_id)}`, class: 'pin' },
      s('circle', { cx: px, cy: py, r: 9, class: `dot status-${state}` }, s('title', null, `${c.charger_id}: ${state}`)),
      s('text', { x: px + 13, y: py + 4, class: 'pin-label' }, c.location.name || c.charger_id)));
  }
  svg.append(s('text', { x: pad, y: pad - 14, class: 'axis' }, `${placed.length} of ${chargers.length} chargers have coordinates`));
  return svg;
}

async function chargersPage() {
  const list = await api('/v1/chargers?limit=100');
  render(
    h('h1', null, 'Chargers'),
    h('p', { class: 'muted' }, `${list.total} chargers at height ${list.height}; live connector status from the ledger, refreshed every ${REFRESH_MS / 1000} s.`),
    h('div', { class: 'legend' }, ['Available', 'Charging', 'Faulted', 'Unknown'].map((x) => h('span', null, statusBadge(x)))),
    section('Map', chargerMap(list.items)),
    section('List', table(['Charger', 'Name / location', 'Connectors', 'Tariff', 'Max power', 'Last heartbeat'],
      list.items.map((c) => [link(`#/charger/${encodeURIComponent(c.charger_id)}`, c.charger_id),
        c.location ? (c.location.name || c.location.text) : 'not registered', connectorSummary(c),
        c.tariff ? `${tokens(c.tariff.price_per_kwh)} / kWh` : '—',
        c.max_power_w ? `${(c.max_power_w / 1000).toFixed(1)} kW` : '—', when(c.last_heartbeat_ms)]), { id: 'chargers' })),
  );
  return true;
}

async function chargerPage(id) {
  const [{ charger: c, height }, sessions] = await Promise.all([
    api(`/v1/chargers/${encodeURIComponent(id)}`), api(`/v1/chargers/${encodeURIComponent(id)}/sessions?limit=50`)]);
  const loc = c.location;
  render(
    h('h1', null, `Charger ${c.charger_id}`),
    section('Registry (on chain) and live state (ledger)', dl([
      ['Availability', statusBadge(availability(c))],
      ['Location', loc ? `${loc.name ? loc.name + ' — ' : ''}${loc.lat !== null ? `${loc.lat}, ${loc.lon}` : loc.text}` : 'not registered'],
      ['Connector types', loc && loc.connector_types.length ? loc.connector_types.join(', ') : '—'],
      ['Tariff', c.tariff ? `${tokens(c.tariff.price_per_kwh)} per kWh, ${tokens(c.tariff.per_minute_fee)} per minute` : '—'],
      ['Max power', c.max_power_w ? `${(c.max_power_w / 1000).toFixed(1)} kW` : '—'],
      ['Device id', h('code', null, c.device_id ?? '—')],
      ['Connectors', connectorSummary(c)],
      ['Firmware', `${c.firmware.vendor ?? '—'} ${c.firmware.model ?? ''} ${c.firmware.version ?? ''}`],
      ['Last boot / heartbeat', `${when(c.last_boot_ms)} / ${when(c.last_heartbeat_ms)}`],
      ['Open sessions, anomalies', `${c.open_sessions}, ${c.anomalies}`],
      ['Read at', `height ${height}`],
    ], { id: 'charger' })),
    section('Sessions', sessions.items.length ? table(['State', 'Transaction', 'Energy', 'Amount', 'Escrow session'],
      sessions.items.map((x) => [x.state + (x.outcome ? ` (${x.outcome})` : ''), x.tx_ref ?? '—', kwh(x.energy_wh), tokens(x.amount),
        x.escrow_session_id ? link(`#/session/${x.escrow_session_id}`, short(x.escrow_session_id, 8)) : '—']), { id: 'sessions' })
      : h('p', { class: 'muted' }, 'No session remembered.')),
  );
  return true;
}

// ------------------------------------------------------------------ sessions and receipts
function eventSummary(bytes) {
  try {
    const e = parseEvent(bytes);
    return { event: e, payload: toPlain(e.payload) };
  } catch (exc) {
    return { error: exc.message };
  }
}

function meterLines(payload) {
  const out = [];
  if (typeof payload.meterStart === 'number') out.push(`meterStart ${payload.meterStart} Wh`);
  if (typeof payload.meterStop === 'number') out.push(`meterStop ${payload.meterStop} Wh`);
  for (const key of ['meterValue', 'transactionData']) {
    for (const mv of Array.isArray(payload[key]) ? payload[key] : []) {
      for (const sv of Array.isArray(mv.sampledValue) ? mv.sampledValue : []) {
        const signed = sv.format === 'SignedData' ? ' (signed OCMF)' : '';
        const value = signed ? String(sv.value).slice(0, 60) + '…' : `${sv.value} ${sv.unit ?? 'Wh'}`;
        out.push(`${mv.timestamp ?? ''} ${sv.context ?? ''} ${value}${signed}`);
      }
    }
  }
  return out;
}

async function sessionPage(id) {
  const { session: x, height } = await api(`/v1/sessions/${id}`);
  let readings = null; let readingsError = null;
  try { readings = await api(`/v1/sessions/${id}/readings`); } catch (exc) { readingsError = exc; }
  let charger = null;
  if (x.charger_id) { try { charger = (await api(`/v1/chargers/${encodeURIComponent(x.charger_id)}`)).charger; } catch { charger = null; } }
  const events = [];
  for (const [eventId, doc] of Object.entries(readings ? readings.proofs : {})) {
    const info = doc && doc.event_bytes ? eventSummary(unhex(doc.event_bytes)) : { error: doc ? 'unknown event' : 'its batch is not closed yet' };
    events.push({ eventId, doc, ...info });
  }
  const times = events.filter((e) => e.event).map((e) => e.event.receivedAtMs).sort((a, b) => a - b);
  const start = times.length ? times[0] : (x.opened_at_s ? x.opened_at_s * 1000 : x.opened_block_ms);
  const stop = times.length > 1 ? times[times.length - 1] : null;
  const loc = charger && charger.location;
  const energy = readings ? readings.energy_wh : x.energy_wh;
  const amount = readings ? readings.amount : x.amount;
  const receipt = h('section', { class: 'card receipt', id: 'receipt' },
    h('h2', null, 'Charging receipt'),
    dl([
      ['Charger', x.charger_id ?? (x.device_id ? `device ${x.device_id}` : '—')],
      ['Location', loc ? `${loc.name ? loc.name + ', ' : ''}${loc.lat !== null ? `${loc.lat}, ${loc.lon}` : loc.text}` : '—'],
      ['Connector', String(x.connector_id ?? '—')],
      ['Start', when(start)],
      ['Stop', when(stop)],
      ['Energy', kwh(energy)],
      ['Tariff', charger && charger.tariff ? `${tokens(charger.tariff.price_per_kwh)} per kWh, ${tokens(charger.tariff.per_minute_fee)} per minute (registry at height ${height})` : (x.price_per_kwh ? `${tokens(x.price_per_kwh)} per kWh` : '—')],
      ['Amount charged', h('strong', null, tokens(amount))],
      ['Deposit', tokens(x.deposit)],
      ['Refunded', /^\d+$/.test(String(x.deposit)) && /^\d+$/.test(String(amount)) ? tokens(BigInt(x.deposit) - BigInt(amount)) : '—'],
      ['Settlement transaction', h('code', null, x.settlement_tx ?? (x.state === 'settled' ? 'settled (transaction older than the node looks back)' : `not settled yet (${x.state})`))],
      ['Escrow session id', h('code', null, id)],
      ['Outcome', x.outcome && x.outcome !== x.state ? `${x.state} (${x.outcome})` : x.state],
      events.length ? ['Signed readings (event ids)', h('span', null, events.map((e) => [h('code', null, e.eventId), h('br')]))] : null,
    ], { id: 'receipt-fields' }),
    h('p', { class: 'muted' }, `Issued from the DEVSEN network's record, read from node ${statusName()} at height ${height}. `, 'Amounts in ChargeToken (DCT, 6 decimals). The settlement is the Escrow contract\'s record; each signed reading can be verified against its anchored Merkle root at /explorer/#/verify/EVENT_ID.'));
  render(
    h('h1', { class: 'no-print' }, `Session ${short(id, 8)}`),
    h('p', { class: 'no-print' }, h('button', { id: 'print', type: 'button', onclick: () => window.print() }, 'Print receipt'),
      x.charger_id ? [' ', link(`#/charger/${encodeURIComponent(x.charger_id)}`, `Charger ${x.charger_id}`)] : null),
    receipt,
    h('section', { class: 'card no-print' }, h('h2', null, 'Signed readings'),
      readingsError ? h('p', { class: 'muted' }, readingsError.status === 404 ? 'This node\'s ledger does not remember readings for this session.' : readingsError.message)
        : table(['Event', 'Action', 'Received', 'Readings', 'Audit'], events.map((e) => [
          h('code', null, short(e.eventId, 8)), e.event ? e.event.action : '—', e.event ? when(e.event.receivedAtMs) : '—',
          e.error ? e.error : h('ul', { class: 'readings' }, meterLines(e.payload).map((l) => h('li', null, l))),
          link(`#/verify/${e.eventId}`, 'verify this event')]), { id: 'readings' })),
  );
  return !x.settlement_tx && x.state !== 'settled'; // refresh until the settlement is on chain
}

// ------------------------------------------------------------------ blocks
const PAYLOAD_KINDS = { 0x9a: 'charger event', 0xa1: 'anchor attestation', 0xa2: 'settlement attestation' };

async function blockPage(heightText) {
  const doc = await api(`/v1/blocks/${encodeURIComponent(heightText)}`);
  const b = doc.block; const c = doc.certificate;
  const payloads = b.payloads.map((p) => unhex(p));
  const recomputed = hex(blockHash(parseHeader(b), payloads.map(keccak)));
  const certificateBox = h('pre', { class: 'checks', id: 'certificate' }, 'Checking the certificate against the chain…');
  let ethBlock = '—';
  try { ethBlock = String(decodeCanonical(unhex(b.app_header)).value[1]); } catch { ethBlock = 'unreadable'; }
  render(
    h('h1', null, `Block ${b.height}`),
    h('p', null, b.height > 1 ? link(`#/block/${b.height - 1}`, '← previous') : null, ' ', link(`#/block/${b.height + 1}`, 'next →')),
    section('Header', dl([
      ['Hash (node)', h('code', null, b.hash)],
      ['Hash (recomputed here)', h('code', { id: 'recomputed-hash', class: recomputed === b.hash ? 'pass' : 'fail' }, `${recomputed} ${recomputed === b.hash ? '(matches)' : '(DIFFERS)'}`)],
      ['Time', when(b.timestamp_ms)], ['Proposer', h('code', null, b.proposer)],
      ['Previous block', b.height > 1 ? link(`#/block/${b.height - 1}`, b.prev_block_hash) : h('code', null, b.prev_block_hash)],
      ['App state hash', h('code', null, b.app_state_hash)], ['Agreed Ethereum block', ethBlock],
      ['Anchor batch', doc.batch_id === null ? 'not closed yet' : String(doc.batch_id)],
    ])),
    section('Commit certificate', dl([
      ['Height / round', `${c.height} / ${c.round}`], ['Block hash', h('code', null, c.block_hash)],
      ['Precommit signatures', String(c.signatures.length)],
    ]), h('ol', { class: 'sigs' }, c.signatures.map((x) => h('li', null, h('code', null, short(x, 16))))), certificateBox),
    section(`Payloads (${payloads.length})`, table(['#', 'Kind', 'Bytes', 'Id', ''], payloads.map((p, i) => {
      const kind = PAYLOAD_KINDS[p[0]] || 'other';
      const id = hex(keccak(p));
      const info = kind === 'charger event' ? eventSummary(p) : null;
      return [String(i), info && info.event ? `${kind}: ${info.event.action} from ${info.event.chargerId}` : kind, String(p.length),
        h('code', null, short(id, 8)), kind === 'charger event' ? link(`#/verify/${id}`, 'verify this event') : ''];
    }), { id: 'payloads' })),
  );
  await checkBlockCertificate(b, c, doc.batch_id, certificateBox);
  return false;
}

/** The block's commit certificate checked here against the validators in force on chain. */
async function checkBlockCertificate(b, c, batchId, box) {
  try {
    const st = await status().catch(() => null);
    const rpcUrl = setting('rpc', st && st.chain ? st.chain.rpc : '');
    let anchorText = setting('anchor', '');
    if (!anchorText && batchId !== null) anchorText = (await api(`/v1/batches/${batchId}`)).anchor.contract;
    if (!anchorText) throw new Error('no Anchor contract to read the validator set from (pin one on the verify page)');
    const chain = await new ChainReader(new Rpc(rpcUrl), unhex(anchorText.toLowerCase(), 20, 'Anchor address'), 0).open();
    const header = parseHeader(b);
    const hash = blockHash(header, b.payloads.map((p) => keccak(unhex(p))));
    const cert = { height: c.height, round: c.round, blockHash: unhex(c.block_hash, 32, 'certificate.block_hash'),
      signatures: c.signatures.map((x, i) => unhex(x, 65, `signatures[${i}]`)) };
    const result = await certificateCheck(chain, hash, header.height, header.prev_block_hash, cert, blockLoader(api));
    box.replaceChildren(h('span', { class: result.ok ? 'pass' : 'fail' }, `${result.ok ? 'PASS' : 'FAIL'}  ${result.name}: ${result.detail}`),
      `\n(chain ${chain.chainId} at ${rpcUrl}, Anchor ${hex(chain.anchor)})`);
  } catch (exc) {
    box.replaceChildren(h('span', { class: 'fail' }, `NO VERDICT: cannot check the certificate: ${exc.message}`));
  }
}

// ------------------------------------------------------------------ verify this event
function setting(name, fallback) { return hashParams().query.get(name) || localStorage.getItem(`devsen.${name}`) || fallback; }

async function verifyPage(eventIdText) {
  const st = await status().catch(() => null);
  const rpcDefault = setting('rpc', st && st.chain ? st.chain.rpc : '');
  const anchorPinned = setting('anchor', '');
  const form = h('form', { id: 'verify-form', class: 'settings' },
    h('label', null, 'Event id ', h('input', { name: 'event', size: 70, value: eventIdText || '', placeholder: '0x…32 bytes' })),
    h('label', null, 'Chain RPC ', h('input', { name: 'rpc', size: 40, value: rpcDefault })),
    h('label', null, 'Anchor contract (pin it; empty: the address the node names) ', h('input', { name: 'anchor', size: 44, value: anchorPinned })),
    h('label', null, 'Confirmations ', h('input', { name: 'confirmations', size: 4, value: setting('confirmations', '0') })),
    h('button', { type: 'submit' }, 'Verify'));
  const out = h('div', { id: 'verify-output' });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    for (const k of ['rpc', 'anchor', 'confirmations']) localStorage.setItem(`devsen.${k}`, String(data.get(k)));
    const q = new URLSearchParams({ rpc: data.get('rpc'), anchor: data.get('anchor'), confirmations: data.get('confirmations') });
    location.hash = `#/verify/${String(data.get('event')).trim()}?${q}`;
  });
  render(h('h1', null, 'Verify this event'),
    h('p', { class: 'muted' }, 'Your browser fetches the proof from this node, then checks it itself: event id, vouch, leaf, Merkle path, the root anchored on chain (read from the chain RPC above, not from the node), the block hash and the commit certificate signed by the validators in force at that height — the checks of devsen audit verify.'),
    st && st.chain && rpcDefault === st.chain.rpc ? h('p', { class: 'warn' }, 'The chain RPC above is the one this node uses; for an independent audit, enter your own.') : null,
    form, out);
  if (!eventIdText) return false;
  const lines = h('pre', { class: 'checks', id: 'checks' });
  const verdict = h('p', { id: 'verdict', class: 'verdict pending' }, 'Checking…');
  out.replaceChildren(verdict, lines);
  const say = (text) => lines.append(text + '\n');
  try {
    const eventId = unhex(eventIdText.startsWith('0x') ? eventIdText : '0x' + eventIdText, 32, 'event id');
    const doc = await api(`/v1/events/${hex(eventId)}/proof`).catch((exc) => {
      if (exc.status === 409) throw new Error('the event is committed, but its batch has not closed yet: retry after the next batch');
      throw exc;
    });
    const named = doc && doc.anchor && typeof doc.anchor.contract === 'string' ? doc.anchor.contract.toLowerCase() : null;
    const anchorText = anchorPinned || named;
    if (!anchorText) throw new Error('the node did not name an Anchor contract; pin one above');
    const anchor = unhex(anchorText.toLowerCase(), 20, 'Anchor address');
    const confirmations = Math.max(0, parseInt(setting('confirmations', '0'), 10) || 0);
    const chain = await new ChainReader(new Rpc(rpcDefault), anchor, confirmations).open();
    say(`event ${hex(eventId)}; chain ${chain.chainId} at ${rpcDefault}, read at block ${chain.block} (${confirmations} confirmations); Anchor ${hex(anchor)} from ${anchorPinned ? 'your pin' : 'the node (pin it to audit independently)'}`);
    if (anchorPinned && named && named !== hex(anchor)) say(`note: the node names Anchor ${named}, not the pinned ${hex(anchor)}`);
    const checks = await verifyEvent(doc, eventId, chain, blockLoader(api));
    for (const c of checks) {
      lines.append(h('span', { class: c.ok ? 'pass' : 'fail' }, `${c.ok ? 'PASS' : 'FAIL'}  ${c.name}: ${c.detail}`), '\n');
    }
    const failed = checks.filter((c) => !c.ok);
    if (failed.length === 0) {
      verdict.className = 'verdict valid';
      verdict.textContent = `VERDICT: VALID. Event ${hex(eventId)} is in batch ${doc.batch.batch_id} (root ${doc.batch.root}), anchored on chain ${chain.chainId}.`;
    } else {
      verdict.className = 'verdict invalid';
      verdict.textContent = `VERDICT: INVALID. Failed: ${failed.map((c) => c.name).join(', ')}. Reason: ${failed[0].detail}`;
    }
  } catch (exc) {
    verdict.className = 'verdict unavailable';
    verdict.textContent = `NO VERDICT: cannot audit: ${exc.message}`;
  }
  return false;
}

// ------------------------------------------------------------------ routing
const ROUTES = { '': networkPage, chargers: chargersPage, charger: chargerPage, session: sessionPage, block: blockPage, verify: verifyPage };

async function route() {
  clearTimeout(refreshTimer);
  const { parts } = hashParams();
  const page = ROUTES[parts[0] || ''];
  document.body.dataset.page = parts[0] || 'network';
  if (!page) { render(h('h1', null, 'Not found'), h('p', null, `No page ${location.hash}.`)); return; }
  const hash = location.hash;
  try {
    const live = await page(...parts.slice(1));
    if (live && hash === location.hash) refreshTimer = setTimeout(() => { if (hash === location.hash) route(); }, REFRESH_MS);
  } catch (exc) {
    render(h('h1', null, 'Error'), errorBox(exc));
  }
  document.body.dataset.ready = hash;
}

window.addEventListener('hashchange', route);
status().then((st) => { nodeName = st.node; document.getElementById('node-label').textContent = `node ${st.node} · height ${st.committed_height}`; }).catch(() => {});
route();
