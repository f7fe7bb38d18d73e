// Storacha's own upload service on loopback, for pitr's tests.
//
// Serves the published @storacha/upload-api service (its handlers, its
// in-memory test storage and its test storage nodes / indexing service from
// `@storacha/upload-api/test/context`) over ucanto's HTTP transport, shaped
// as the live service runs it (README.md: what is the package's code, what
// this file adds, where it differs from up.storacha.network).
//
//   node harness.mjs --info FILE [--port N] [--gateway-port N]
//
// Once every server listens it writes FILE (atomically) with one JSON
// object: service_url, service_did, service_key_did, receipts_url,
// gateway_url, control_url. Until killed it serves:
//
//   POST {service_url}/                ucanto invocations (CAR or legacy CBOR)
//   GET  {service_url}/receipt/<task>  302 to the agent message holding its receipt
//   GET  {gateway_url}/ipfs/<cid>[/path][?format=car|raw]   trustless gateway
//   POST {control_url}/credentials     a provisioned space and an agent (below)
//   POST {control_url}/gateway-faults  faults for the next gateway requests
//   GET  {control_url}/stats           invocations by ability, PUTs, gateway requests
//
// Everything listens on 127.0.0.1 only.

import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'

import * as UploadAPI from '@storacha/upload-api'
import { createContext } from '@storacha/upload-api/test/context'
import { provisionProvider } from '@storacha/upload-api/test/utils'
import * as Server from '@ucanto/server'
import * as Client from '@ucanto/client'
import { CAR as TransportCAR, Legacy, Codec } from '@ucanto/transport'
import { CAR as CoreCAR, delegate } from '@ucanto/core'
import { ed25519, Absentee } from '@ucanto/principal'
import * as UploadShard from '@storacha/capabilities/upload/shard'
import * as Space from '@storacha/access/space'
import { ShardedDAGIndex, DigestMap } from '@storacha/blob-index'
import { CarWriter } from '@ipld/car'
import * as dagPB from '@ipld/dag-pb'
import * as dagCBOR from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { identity } from 'multiformats/hashes/identity'
import { sha256 } from 'multiformats/hashes/sha2'
import { base64 } from 'multiformats/bases/base64'
import * as Block from 'multiformats/block'
import { equals } from 'multiformats/bytes'
import { exporter } from 'ipfs-unixfs-exporter'

const { values: args } = parseArgs({
  options: {
    info: { type: 'string' },
    port: { type: 'string', default: '0' },
    'gateway-port': { type: 'string', default: '0' },
  },
})
if (!args.info) {
  console.error('usage: node harness.mjs --info FILE [--port N] [--gateway-port N]')
  process.exit(2)
}

// The test context's helper servers (storage nodes, indexing service, blob
// buckets) call `http.createServer(...).listen(cb)`, which binds every
// interface: make that loopback.
// What the tests may ask about (GET /control/stats): invocations by
// ability as received on the HTTP front, PUTs to the blob targets,
// requests to the gateway.
const stats = { invocations: {}, puts: 0, gateway_requests: 0 }

const loopbackHttp = {
  ...http,
  createServer: (...a) => {
    if (typeof a[0] === 'function') {
      const handler = a[0]
      a[0] = (req, res) => {
        if (req.method === 'PUT') stats.puts++
        return handler(req, res)
      }
    }
    const server = http.createServer(...a)
    const listen = server.listen.bind(server)
    server.listen = (...l) =>
      typeof l[0] === 'function' ? listen(0, '127.0.0.1', l[0]) : listen(...l)
    return server
  },
}

const context = await createContext({
  http: loopbackHttp,
  requirePaymentPlan: false,
  // The context's default error reporter throws, which would take the
  // whole harness down on one bad request: log instead.
  assert: { fail: (error) => console.error('service error:', error) },
})

// The test indexing service (and the legacy claims service) authorise the
// upload service with an `assert/*` delegation made without an expiration,
// so ucanto's default applies: 30 seconds, plenty for one mocha test, and
// after that every `space/index/add` fails. Delegate the same for good.
for (const client of [context.indexingService, context.claimsService]) {
  const { issuer, audience } = client.invocationConfig
  client.invocationConfig.proofs = [
    await delegate({
      issuer: audience,
      audience: issuer,
      capabilities: [{ can: 'assert/*', with: audience.did() }],
      expiration: Infinity,
    }),
  ]
}

// --- IPNI: which index holds a block -------------------------------------
// `space/index/add` publishes every indexed block to IPNI; the live indexing
// service answers a query for any block's multihash from there. The test
// IPNI only remembers that a multihash was published, so keep the index
// too, for the gateway.
/** @type {DigestMap<import('multiformats').MultihashDigest, any[]>} */
const ipni = new DigestMap()
const publish = context.ipniService.publish.bind(context.ipniService)
context.ipniService.publish = async (space, providers, index) => {
  for (const [, slices] of index.shards) {
    for (const [digest] of slices) {
      ipni.set(digest, [...(ipni.get(digest) ?? []), index])
    }
  }
  return publish(space, providers, index)
}

// --- The live service's shape over the package's 2.8.4 -------------------
// upload/list: the live table (w3infra upload-api/tables/upload.js) answers
// pages of 20 by default with root, insertedAt and updatedAt only.
const uploadTable = context.uploadTable
const list = uploadTable.list.bind(uploadTable)
uploadTable.list = async (space, options = {}) => {
  const res = await list(space, { ...options, size: options.size ?? 20 })
  if (res.error) return res
  const results = res.ok.results.map(({ root, insertedAt, updatedAt }) => ({
    root,
    insertedAt,
    updatedAt,
  }))
  return { ok: { ...res.ok, results } }
}
// upload/add: since upload-api 3.x the receipt carries the root only.
const upsert = uploadTable.upsert.bind(uploadTable)
uploadTable.upsert = async (item) => {
  const res = await upsert(item)
  return res.error ? res : { ok: { root: res.ok.root } }
}

/**
 * `upload/shard/list` (upload-api 3.x; the package's 2.8.4 lacks it): pages
 * of an upload's shards, `cursor` the next offset, absent on the last page.
 */
const uploadShardList = Server.provide(UploadShard.list, async ({ capability }) => {
  const { root, cursor, size } = capability.nb
  const space = Server.DID.parse(capability.with).did()
  const item = uploadTable.items.find(
    (i) => i.space === space && i.root.equals(root)
  )
  if (!item) {
    return { error: { name: 'RecordNotFound', message: 'record not found' } }
  }
  const shards = item.shards ?? []
  const start = parseInt(cursor ?? '0', 10)
  const end = start + Math.max(1, size ?? 1000)
  return {
    ok: {
      size: shards.length,
      results: shards.slice(start, end),
      ...(end < shards.length ? { cursor: `${end}` } : {}),
    },
  }
})

const service = UploadAPI.createUploadService(context)
// The live service removed `store/add` (upload-service "remove handler for
// store/add", 2026-01); the rest of the legacy store service stays.
delete service.store.add
service.upload.shard = { list: uploadShardList }

// The live router's codec (w3infra upload-api/functions/ucan-invocation-router.js):
// CAR or legacy requests; CAR answers to clients that accept them.
const codec = Codec.inbound({
  decoders: {
    [TransportCAR.contentType]: TransportCAR.request,
    [Legacy.contentType]: Legacy.request,
  },
  encoders: {
    '*/*;q=0.1': Legacy.response,
    [TransportCAR.contentType]: TransportCAR.response,
  },
})

// As `createServer` in @storacha/upload-api's lib.js, with the service above.
const server = Server.create({
  ...context,
  codec,
  service,
  catch: (error) => context.errorReporter.catch(error),
})
const agent = {
  ...server,
  id: server.id,
  context: { ...server.context, ...context },
  request: async (request) => {
    await count(request)
    return UploadAPI.handle(agent, request)
  },
}
/** Counts a request's invocations by ability (CAR requests; others are legacy). */
async function count(request) {
  const type = request.headers['content-type'] ?? ''
  if (!type.includes(TransportCAR.contentType)) return
  try {
    const message = await TransportCAR.request.decode(request)
    for (const invocation of message.invocations) {
      const can = invocation.capabilities[0]?.can ?? '?'
      stats.invocations[can] = (stats.invocations[can] ?? 0) + 1
    }
  } catch {
    // Not decodable: the service will say so in its answer.
  }
}

// The harness's own invocations (provisioning) bypass the counting front.
const connection = Client.connect({
  id: context.id,
  codec: TransportCAR.outbound,
  channel: { request: (request) => UploadAPI.handle(agent, request) },
})

// --- Credentials -----------------------------------------------------------
const account = Absentee.from({ id: 'did:mailto:test.storacha.network:pitr' })

/** A new space, provisioned with the service (`provider/add`) so that it may store. */
async function newSpace(name) {
  const space = await Space.generate({ name })
  const provisioner = await ed25519.generate()
  const res = await provisionProvider({
    service: context.id,
    agent: provisioner,
    space: space.signer,
    account,
    connection,
  })
  if (res.out.error) {
    throw new Error(`provider/add for ${space.did()}: ${res.out.error.message}`)
  }
  return space
}

/** The abilities `storacha delegation create` grants without `--can`. */
const CLI_DEFAULT_ABILITIES = [
  'assert/*',
  'space/*',
  'blob/*',
  'index/*',
  'store/*',
  'upload/*',
  'access/*',
  'filecoin/*',
  'usage/*',
]

/**
 * A space and an agent that may use it, as a user holds them: the agent's
 * key as `storacha key create` prints it (W3_PRINCIPAL) and the delegation
 * as `storacha delegation create AGENT --can ... --base64` writes it
 * (W3_PROOF): the space delegates to the CLI's own agent (`space create`),
 * which delegates the abilities to the new agent.
 *
 * @param {{can?: string[], expired?: boolean, other_space?: boolean, name?: string}} opts
 */
async function credentials(opts) {
  const space = await newSpace(opts.name ?? 'pitr')
  const proofSpace = opts.other_space ? await newSpace('other') : space
  const cliAgent = await ed25519.generate()
  const auth = await Space.createAuthorization(proofSpace, {
    audience: cliAgent,
    expiration: Infinity,
  })
  const principal = await ed25519.generate()
  const can = opts.can ?? CLI_DEFAULT_ABILITIES
  const proof = await delegate({
    issuer: cliAgent,
    audience: principal,
    capabilities: can.map((ability) => ({ can: ability, with: proofSpace.did() })),
    proofs: [auth],
    // An expired proof: it expired a minute ago.
    expiration: opts.expired ? Math.floor(Date.now() / 1000) - 60 : Infinity,
  })
  const archive = await proof.archive()
  if (archive.error) throw archive.error
  const proofCid = CID.createV1(CoreCAR.code, identity.digest(archive.ok))
  return {
    space: space.did(),
    proof_space: proofSpace.did(),
    principal: ed25519.format(principal),
    principal_did: principal.did(),
    proof: proofCid.toString(base64),
    can,
    expiration: opts.expired ? proof.expiration : null,
  }
}

// --- The gateway ------------------------------------------------------------
/**
 * Finds blocks the way Storacha's gateway (freeway, through
 * @web3-storage/blob-fetcher's indexing-service locator) does: a block is
 * readable only through a sharded-DAG index registered with
 * `space/index/add` (an `assert/index` claim for the DAG's root, or IPNI for
 * any block in it), which names the shard and byte range; the shard's URL
 * comes from its location commitment (`blob/accept`). One per request.
 */
class Resolver {
  constructor() {
    this.slices = new DigestMap()
    this.queried = new DigestMap()
    this.blobs = new DigestMap()
  }

  async claims(digest) {
    const res = await context.indexingService.queryClaims({ hashes: [digest] })
    if (res.error) throw new Error(`indexing service: ${res.error.message}`)
    return [...res.ok.claims.values()]
  }

  /** The bytes of the blob (shard or index) with this multihash, or null. */
  async blob(digest) {
    if (this.blobs.has(digest)) return this.blobs.get(digest)
    let bytes = null
    for (const claim of await this.claims(digest)) {
      if (claim.type !== 'assert/location') continue
      const res = await fetch(claim.location[0])
      if (!res.ok) continue
      const body = new Uint8Array(await res.arrayBuffer())
      if (!equals((await sha256.digest(body)).bytes, digest.bytes)) continue
      bytes = body
      break
    }
    this.blobs.set(digest, bytes)
    return bytes
  }

  learn(index) {
    for (const [shard, slices] of index.shards) {
      for (const [digest, position] of slices) {
        this.slices.set(digest, { shard, position })
      }
    }
  }

  async query(digest) {
    if (this.queried.has(digest)) return
    this.queried.set(digest, true)
    for (const claim of await this.claims(digest)) {
      if (claim.type !== 'assert/index') continue
      const bytes = await this.blob(claim.index.multihash)
      if (!bytes) continue
      const index = ShardedDAGIndex.extract(bytes)
      if (index.ok) this.learn(index.ok)
    }
    for (const index of ipni.get(digest) ?? []) this.learn(index)
  }

  /** The block's bytes, checked against its CID, or null when not found. */
  async get(cid) {
    if (cid.multihash.code === identity.code) return cid.multihash.digest
    if (cid.multihash.code !== sha256.code) return null
    if (!this.slices.has(cid.multihash)) await this.query(cid.multihash)
    const slice = this.slices.get(cid.multihash)
    if (!slice) return null
    const shard = await this.blob(slice.shard)
    if (!shard) return null
    const [offset, length] = slice.position
    const bytes = shard.subarray(offset, offset + length)
    const digest = await sha256.digest(bytes)
    return equals(digest.bytes, cid.multihash.bytes) ? bytes : null
  }
}

class NotFound extends Error {}

const codecs = { [raw.code]: raw, [dagPB.code]: dagPB, [dagCBOR.code]: dagCBOR }

/** Resolves `/ipfs/<cid>/<name>/...` through dag-pb named links. */
async function resolvePath(resolver, root, segments) {
  const blocks = []
  let cid = root
  for (const name of segments) {
    const bytes = await resolver.get(cid)
    if (!bytes) throw new NotFound(`block ${cid} not found`)
    blocks.push({ cid, bytes })
    if (cid.code !== dagPB.code) throw new NotFound(`${cid} has no named links`)
    const link = dagPB.decode(bytes).Links.find((l) => l.Name === name)
    if (!link) throw new NotFound(`${cid} has no entry ${JSON.stringify(name)}`)
    cid = link.Hash
  }
  return { cid, blocks }
}

/** Every block of the DAG under `root`, depth first (dag-scope=all). */
async function walk(resolver, root, out, seen = new Set()) {
  const key = root.toString()
  if (seen.has(key)) return
  seen.add(key)
  const bytes = await resolver.get(root)
  if (!bytes) throw new NotFound(`block ${root} not found`)
  out.push({ cid: root, bytes })
  const codec = codecs[root.code]
  if (!codec || root.code === raw.code) return
  const block = Block.createUnsafe({ bytes, cid: root, codec })
  for (const [, link] of block.links()) await walk(resolver, link, out, seen)
}

async function carBytes(root, blocks) {
  const { writer, out } = CarWriter.create([root])
  const chunks = []
  const done = (async () => {
    for await (const chunk of out) chunks.push(chunk)
  })()
  for (const block of blocks) await writer.put(block)
  await writer.close()
  await done
  return Buffer.concat(chunks)
}

/**
 * Faults for the next gateway requests (POST /control/gateway-faults, a JSON
 * array, one fault per request in order): `{"status": 503}` answers that
 * status; `{"truncate": true}` a complete HTTP answer whose body stops
 * halfway (a CAR cut inside a block); `{"abort": true}` drops the
 * connection halfway through the body; `{"tamper": true}` flips one byte in
 * the middle of the body.
 */
const gatewayFaults = []

async function gateway(req, res) {
  stats.gateway_requests++
  const fault = gatewayFaults.shift()
  if (fault?.status) return send(res, fault.status, 'injected fault')
  if (fault) res.fault = fault
  const url = new URL(req.url ?? '/', 'http://127.0.0.1')
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent)
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return send(res, 405, 'method not allowed')
  }
  if (parts[0] !== 'ipfs' || parts.length < 2) {
    return send(res, 404, 'only /ipfs/<cid> is served')
  }
  let root
  try {
    root = CID.parse(parts[1])
  } catch (e) {
    return send(res, 400, `invalid CID ${parts[1]}: ${e.message}`)
  }
  const accept = req.headers.accept ?? ''
  const format =
    url.searchParams.get('format') ??
    (accept.includes('application/vnd.ipld.car')
      ? 'car'
      : accept.includes('application/vnd.ipld.raw')
        ? 'raw'
        : null)
  const resolver = new Resolver()
  try {
    const { cid, blocks } = await resolvePath(resolver, root, parts.slice(2))
    if (format === 'raw') {
      const bytes = await resolver.get(cid)
      if (!bytes) throw new NotFound(`block ${cid} not found`)
      return send(res, 200, bytes, 'application/vnd.ipld.raw', cid)
    }
    if (format === 'car') {
      await walk(resolver, cid, blocks)
      const body = await carBytes(root, blocks)
      return send(res, 200, body, 'application/vnd.ipld.car; version=1', cid)
    }
    if (format) return send(res, 400, `unsupported format ${format}`)
    // Deserialized: a UnixFS file's bytes.
    const entry = await exporter(cid.toString(), {
      // interface-blockstore 7: a block comes as an iterable of chunks.
      async *get(c) {
        const bytes = await resolver.get(CID.parse(c.toString()))
        if (!bytes) throw new NotFound(`block ${c} not found`)
        yield bytes
      },
    })
    if (entry.type !== 'file' && entry.type !== 'raw') {
      return send(res, 501, `${cid} is a ${entry.type}; ask for ?format=car`)
    }
    const chunks = []
    for await (const chunk of entry.content()) chunks.push(chunk)
    return send(res, 200, Buffer.concat(chunks), 'application/octet-stream', cid)
  } catch (e) {
    if (e instanceof NotFound || e?.name === 'NotFoundError') {
      return send(res, 404, `not found: ${e.message}`)
    }
    console.error('gateway:', e)
    return send(res, 500, `gateway error: ${e.message}`)
  }
}

function send(res, status, body, type = 'text/plain; charset=utf-8', cid) {
  const headers = { 'content-type': type }
  if (cid) headers.etag = `"${cid}"`
  let bytes = typeof body === 'string' ? Buffer.from(body + '\n') : Buffer.from(body)
  const fault = status === 200 ? res.fault : undefined
  const half = Math.floor(bytes.length / 2)
  if (fault?.tamper && bytes.length) {
    bytes = Buffer.from(bytes)
    bytes[half] ^= 0xff
  }
  if (fault?.truncate) bytes = bytes.subarray(0, half)
  if (fault?.abort) {
    headers['content-length'] = String(bytes.length)
    res.writeHead(status, headers)
    res.write(bytes.subarray(0, half))
    return setTimeout(() => res.destroy(), 50)
  }
  res.writeHead(status, headers)
  res.end(bytes)
}

// --- The service's HTTP front ------------------------------------------------
async function readBody(req) {
  const chunks = []
  for await (const chunk of req) chunks.push(chunk)
  return new Uint8Array(Buffer.concat(chunks))
}

const serviceServer = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1')
    if (req.method === 'POST' && url.pathname === '/') {
      const body = await readBody(req)
      const answer = await agent.request({ headers: req.headers, body })
      res.writeHead(answer.status ?? 200, answer.headers)
      return res.end(Buffer.from(answer.body))
    }
    const receipt = url.pathname.match(/^\/receipt\/([^/]+)$/)
    if (req.method === 'GET' && receipt) {
      // As the live endpoint: a redirect to the stored agent message.
      const record = context.agentStore.model.index[`/${receipt[1]}/receipt/`]?.[0]
      if (!record) return send(res, 404, `No receipt for task ${receipt[1]} is found`)
      res.writeHead(302, { location: `/message/${record.at}` })
      return res.end()
    }
    const message = url.pathname.match(/^\/message\/([^/]+)$/)
    if (req.method === 'GET' && message) {
      const archive = context.agentStore.model.store[message[1]]
      if (!archive) return send(res, 404, `no agent message ${message[1]}`)
      return send(res, 200, CoreCAR.encode(archive), TransportCAR.contentType)
    }
    if (req.method === 'POST' && url.pathname === '/control/credentials') {
      const body = await readBody(req)
      const opts = body.length ? JSON.parse(new TextDecoder().decode(body)) : {}
      const made = await credentials(opts)
      return send(res, 200, JSON.stringify(made), 'application/json')
    }
    if (req.method === 'POST' && url.pathname === '/control/gateway-faults') {
      const faults = JSON.parse(new TextDecoder().decode(await readBody(req)))
      if (!Array.isArray(faults)) return send(res, 400, 'a JSON array of faults')
      gatewayFaults.push(...faults)
      return send(res, 200, JSON.stringify({ queued: gatewayFaults.length }), 'application/json')
    }
    if (req.method === 'GET' && url.pathname === '/control/stats') {
      return send(res, 200, JSON.stringify(stats), 'application/json')
    }
    if (req.method === 'GET' && url.pathname === '/') {
      return send(res, 200, `ucanto service ${context.id.did()}`)
    }
    return send(res, 404, `no route ${req.method} ${url.pathname}`)
  } catch (e) {
    console.error('service:', e)
    if (!res.headersSent) send(res, 500, `harness error: ${e.message}`)
    else res.destroy()
  }
})

const gatewayServer = http.createServer((req, res) => {
  gateway(req, res).catch((e) => {
    console.error('gateway:', e)
    if (!res.headersSent) send(res, 500, `gateway error: ${e.message}`)
    else res.destroy()
  })
})

// Node closes an idle keep-alive connection after 5 s; a client that reuses
// it at that moment (the JS client hashing a large shard between two
// invocations, on a loaded machine) gets "other side closed" and ucanto
// does not retry. The live service's front keeps connections far longer.
const listen = (srv, port) =>
  new Promise((resolve, reject) => {
    srv.keepAliveTimeout = 120_000
    srv.headersTimeout = 121_000
    srv.once('error', reject)
    srv.listen(Number(port), '127.0.0.1', () => resolve(srv.address().port))
  })

const servicePort = await listen(serviceServer, args.port)
const gatewayPort = await listen(gatewayServer, args['gateway-port'])
const serviceURL = `http://127.0.0.1:${servicePort}`
const info = {
  service_url: serviceURL,
  service_did: context.id.did(),
  service_key_did: context.id.toDIDKey(),
  receipts_url: `${serviceURL}/receipt/`,
  gateway_url: `http://127.0.0.1:${gatewayPort}`,
  control_url: `${serviceURL}/control`,
  pid: process.pid,
}
const tmp = `${args.info}.tmp`
fs.writeFileSync(tmp, JSON.stringify(info) + '\n')
fs.renameSync(tmp, path.resolve(args.info))
console.log(JSON.stringify(info))

const stop = () => process.exit(0)
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
// A test process killed outright cannot kill the harness: leave with it
// (re-parented, our parent id changes).
const parent = process.ppid
setInterval(() => {
  if (process.ppid !== parent) stop()
}, 1000).unref()
