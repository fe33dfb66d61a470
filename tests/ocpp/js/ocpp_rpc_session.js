// A full charger session driven by the third-party npm client `ocpp-rpc` in strict mode
// (it validates our replies and our server-initiated calls against the OCPP schemas).
// usage: node ocpp_rpc_session.js ENDPOINT IDENTITY PASSWORD|- PROTOCOL
// Prints one JSON object per line; the test drives the server side.
const { RPCClient } = require('ocpp-rpc');

const [endpoint, identity, password, protocol] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const now = () => new Date().toISOString();

function session16() {
    return [
        ['BootNotification', { chargePointVendor: 'DevsenTest', chargePointModel: 'RPC-16' }],
        ['StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available', timestamp: now() }],
        ['Authorize', { idTag: 'TAG-OK' }],
        ['StartTransaction', { connectorId: 1, idTag: 'TAG-OK', meterStart: 1000, timestamp: now() }],
        ['MeterValues', (tx) => ({ connectorId: 1, transactionId: tx, meterValue: [{ timestamp: now(), sampledValue: [{ value: '1500', measurand: 'Energy.Active.Import.Register', unit: 'Wh' }] }] })],
        ['StopTransaction', (tx) => ({ transactionId: tx, idTag: 'TAG-OK', meterStop: 2000, timestamp: now(), reason: 'Local' })],
        ['Heartbeat', {}],
    ];
}

function session201() {
    const evse = { id: 1, connectorId: 1 };
    const idToken = { idToken: 'TAG-OK', type: 'ISO14443' };
    return [
        ['BootNotification', { chargingStation: { model: 'RPC-201', vendorName: 'DevsenTest' }, reason: 'PowerUp' }],
        ['StatusNotification', { timestamp: now(), connectorStatus: 'Available', evseId: 1, connectorId: 1 }],
        ['Authorize', { idToken }],
        ['TransactionEvent', { eventType: 'Started', timestamp: now(), triggerReason: 'Authorized', seqNo: 0, transactionInfo: { transactionId: 'tx-' + identity }, idToken, evse }],
        ['MeterValues', { evseId: 1, meterValue: [{ timestamp: now(), sampledValue: [{ value: 1500.5, measurand: 'Energy.Active.Import.Register' }] }] }],
        ['TransactionEvent', { eventType: 'Ended', timestamp: now(), triggerReason: 'StopAuthorized', seqNo: 1, transactionInfo: { transactionId: 'tx-' + identity, stoppedReason: 'Local' }, idToken, evse }],
        ['Heartbeat', {}],
    ];
}

async function main() {
    const client = new RPCClient({
        endpoint, identity, protocols: [protocol], strictMode: true, reconnect: false,
        callTimeoutMs: 10000, ...(password === '-' ? {} : { password }),
    });
    let serverCallSeen;
    const serverCall = new Promise((resolve) => { serverCallSeen = resolve; });
    const answer = ({ method, params }) => { serverCallSeen({ method, params }); return { status: 'Accepted' }; };
    client.handle('RemoteStartTransaction', answer);
    client.handle('RequestStartTransaction', answer);
    try {
        await client.connect();
    } catch (err) {
        out({ connect_error: String(err && err.message), code: err && err.code });
        process.exit(0);
    }
    out({ connected: client.protocol });
    let tx = null;
    const steps = protocol === 'ocpp1.6' ? session16() : session201();
    for (const [method, make] of steps) {
        const params = typeof make === 'function' ? make(tx) : make;
        try {
            const result = await client.call(method, params);
            if (method === 'StartTransaction') tx = result.transactionId;
            out({ method, result });
        } catch (err) {
            out({ method, error: err.rpcErrorCode || String(err.message) });
        }
    }
    out({ ready_for_server_call: true });
    let timerHandle;
    const timer = new Promise((resolve) => { timerHandle = setTimeout(() => resolve(null), 10000); });
    const got = await Promise.race([serverCall, timer]);
    clearTimeout(timerHandle);
    out({ server_call: got });
    const hb = await client.call('Heartbeat', {});
    out({ method: 'Heartbeat', result: hb });
    await client.close({ code: 1000 });
    out({ closed: true });
}

main().catch((err) => { out({ fatal: String(err && err.stack) }); process.exit(1); });
