#!/usr/bin/env node
// `make bench` helper: the same signed, verified APIv3 request through the Node SDK
// wechatpay-axios-plugin, against a running wxpay-sandbox, for a CPU-per-request figure.
//
//   node bench/node/bench.js <config.json> <N>
//
// <config.json> is the sandbox's `config` object (mchid, serial_no, private_key_file,
// platform_certificate_files, base_url, ca_file; optional control_url, default
// base_url + "/_sandbox"). Prints ONE JSON line on stdout; diagnostics go to stderr and
// any failure exits non-zero.
//
// The request: GET /v3/marketing/partnerships?authorized_data={"business_type":
// "BUSIFAVOR_STOCK","stock_id":"BENCH"}&limit=1&offset=0 after seeding 10 relations for
// that stock (a read that is cheap for the server and returns a small signed body).
//
// Before measuring, it proves the plugin really verifies responses: a sandbox `tamper`
// fault (body changed after signing) and an `unsigned` fault must both make it throw.
// During the measured loop every Rsa.verify call the plugin makes is counted, and the
// run fails unless there was exactly one successful verification per request.
'use strict';

const fs = require('fs');
const https = require('https');
const path = require('path');
const { X509Certificate } = require('crypto');

const WARMUP = 50;
const STOCK_ID = 'BENCH';
const AUTHORIZED_DATA = JSON.stringify({ business_type: 'BUSIFAVOR_STOCK', stock_id: STOCK_ID });

function fail(msg) {
  process.stderr.write(`bench.js: ${msg}\n`);
  process.exit(1);
}

const [configPath, nArg] = process.argv.slice(2);
if (!configPath) fail('usage: node bench.js <config.json> <N>');
const N = nArg === undefined ? 500 : Number(nArg);
if (!Number.isInteger(N) || N < 1) fail(`N must be a positive integer, got ${nArg}`);

let plugin;
let pluginVersion;
try {
  plugin = require('wechatpay-axios-plugin');
  pluginVersion = require('wechatpay-axios-plugin/package.json').version;
} catch (e) {
  fail(`wechatpay-axios-plugin is not installed (npm install --prefix ${path.dirname(__filename)}): ${e.message}`);
}
const { Wechatpay, Rsa } = plugin;

const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
for (const k of ['mchid', 'serial_no', 'private_key_file', 'platform_certificate_files', 'base_url', 'ca_file']) {
  if (config[k] === undefined) fail(`config has no ${k}`);
}
const ca = fs.readFileSync(config.ca_file);
const baseURL = config.base_url.replace(/\/+$/, '');
const controlURL = (config.control_url || `${baseURL}/_sandbox`).replace(/\/+$/, '');

// Platform certificates keyed by serial, as the plugin wants ({serial: cert PEM}); the
// plugin turns each into a public KeyObject. X509Certificate gives upper-case hex, which
// is what Wechatpay-Serial carries.
const certs = {};
for (const file of config.platform_certificate_files) {
  const pem = fs.readFileSync(file, 'utf8');
  certs[new X509Certificate(pem).serialNumber.toUpperCase()] = pem;
}

// One kept-alive connection for the API calls; the plugin passes axios config through.
const agent = new https.Agent({ ca, keepAlive: true, maxSockets: 1 });
const wxpay = new Wechatpay({
  mchid: String(config.mchid),
  serial: config.serial_no,
  privateKey: fs.readFileSync(config.private_key_file),
  certs,
  baseURL,
  httpsAgent: agent,
});

// Count the plugin's response verifications (decorator.js calls Rsa.verify once per
// signed 2xx response). The wrapper costs a counter increment.
let verifiedOk = 0;
let verifiedBad = 0;
const realVerify = Rsa.verify;
Rsa.verify = function countingVerify(...args) {
  const ok = realVerify.apply(this, args);
  if (ok) verifiedOk += 1; else verifiedBad += 1;
  return ok;
};

// Control API: plain node https, separate connection, not measured.
const controlAgent = new https.Agent({ ca, keepAlive: false });
function control(method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = https.request(`${controlURL}${p}`, {
      method,
      agent: controlAgent,
      headers: data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {},
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) {
          reject(new Error(`control ${method} ${p}: ${res.statusCode} ${text}`));
          return;
        }
        try { resolve(JSON.parse(text)); } catch (e) { reject(e); }
      });
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

function list() {
  return wxpay.v3.marketing.partnerships.get({
    params: { authorized_data: AUTHORIZED_DATA, limit: 1, offset: 0 },
  });
}

function check(res, i) {
  if (!res || res.status !== 200 || !res.data || typeof res.data !== 'object' || !Array.isArray(res.data.data)
      || res.data.data.length !== 1) {
    throw new Error(`request ${i}: unexpected response ${res && res.status} ${JSON.stringify(res && res.data)}`);
  }
}

// A queued fault must make the plugin reject with the given error code.
async function expectRejected(fault, code) {
  await control('POST', '/faults', { fault, count: 1 });
  let res;
  try {
    res = await list();
  } catch (e) {
    if (e.code !== code) throw new Error(`${fault} fault: plugin threw ${e.code} (${e.message}), wanted ${code}`);
    return;
  }
  throw new Error(`${fault} fault: the plugin accepted the response (status ${res.status}): it does not verify`);
}

async function main() {
  await control('DELETE', '/faults');
  await control('POST', '/seed', { count: 10, business_type: 'BUSIFAVOR_STOCK', stock_id: STOCK_ID });

  check(await list(), 'first');
  const v0 = verifiedOk;
  await expectRejected('tamper', 'EV3_RES_HEADER_SIGNATURE_DIGEST');
  await expectRejected('unsigned', 'EV3_RES_HEADERS_INCOMPLATE');
  if (verifiedOk !== v0 || verifiedBad !== 1) {
    throw new Error(`fault checks: ${verifiedOk - v0} good / ${verifiedBad} bad verifications, wanted 0 / 1`);
  }

  for (let i = 0; i < WARMUP; i += 1) check(await list(), `warm-up ${i}`);

  const before = await control('GET', '/stats');
  verifiedOk = 0;
  verifiedBad = 0;

  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  for (let i = 0; i < N; i += 1) check(await list(), i);
  const cpu = process.cpuUsage(c0);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;

  const after = await control('GET', '/stats');
  if (verifiedOk !== N || verifiedBad !== 0) {
    throw new Error(`measured loop: ${verifiedOk} good / ${verifiedBad} bad verifications for ${N} requests`);
  }
  const served = after.requests - before.requests;
  const newConnections = after.api_connections - before.api_connections;
  if (served !== N) throw new Error(`sandbox served ${served} API requests during the loop, wanted ${N}`);

  const user = cpu.user / 1e6;
  const system = cpu.system / 1e6;
  process.stdout.write(`${JSON.stringify({
    requests: N,
    cpu_user_s: Number(user.toFixed(6)),
    cpu_system_s: Number(system.toFixed(6)),
    cpu_per_request_ms: Number((((user + system) * 1000) / N).toFixed(4)),
    wall_s: Number(wall.toFixed(6)),
    verified: verifiedOk,
    new_connections: newConnections,
    request: 'GET /v3/marketing/partnerships?authorized_data={BUSIFAVOR_STOCK,BENCH}&limit=1&offset=0',
    sdk: `wechatpay-axios-plugin@${pluginVersion}`,
    node: process.version,
  })}\n`);
  agent.destroy();
  controlAgent.destroy();
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
