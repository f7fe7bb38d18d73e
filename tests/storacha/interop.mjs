// Storacha's JS client (@storacha/client) against the harness, with the
// same W3_PRINCIPAL and W3_PROOF a pitr destination holds: what a user's own
// tooling would see of pitr's uploads, and what pitr must read of theirs.
// One command per run; the answer is one JSON object on stdout.
//
//   node interop.mjs upload FILE [--name NAME]
//       uploads FILE's bytes with client.uploadFile (or, with --name, as a
//       directory holding one file NAME, as `storacha up` wraps a file):
//       {"root", "shards": [...], "size"}
//   node interop.mjs list [--page-size N]
//       every upload, paging upload/list to its end, and each one's shards
//       from upload/shard/list: {"uploads": [{"root", "shards"}], "pages"}
//   node interop.mjs fetch ROOT [--path P] [--out FILE]
//       GET {gateway}/ipfs/ROOT[/P]?format=car, every block checked against
//       its CID, the UnixFS file read out of it: {"root", "size", "sha256",
//       "blocks"}; the bytes go to FILE
//   node interop.mjs blob FILE
//       stores FILE's bytes with space/blob/add alone (no index, no upload):
//       {"cid"} (raw, the bytes' SHA-256), which no gateway can find
//   node interop.mjs remove ROOT
//       client.remove(ROOT, {shards: true}): the upload and its blobs
//
// Environment: STORACHA_SERVICE_URL, STORACHA_SERVICE_DID,
// STORACHA_GATEWAY_URL (the harness's info file), W3_PRINCIPAL, W3_PROOF.

import fs from 'node:fs'
import { parseArgs } from 'node:util'
import { createHash } from 'node:crypto'
import { inspect } from 'node:util'

import * as Client from '@storacha/client'
import { StoreMemory } from '@storacha/client/stores/memory'
import * as Proof from '@storacha/client/proof'
import * as Ed25519 from '@storacha/client/principal/ed25519'
import { connect } from '@ucanto/client'
import { CAR, HTTP } from '@ucanto/transport'
import * as DID from '@ipld/dag-ucan/did'
import { CarBlockIterator } from '@ipld/car'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { identity } from 'multiformats/hashes/identity'
import { equals } from 'multiformats/bytes'
import { exporter } from 'ipfs-unixfs-exporter'

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    name: { type: 'string' },
    'page-size': { type: 'string' },
    path: { type: 'string' },
    out: { type: 'string' },
  },
})

function need(name) {
  const v = process.env[name]
  if (!v) fail(`${name} is not set (see the header of interop.mjs)`)
  return v
}

function fail(message) {
  console.error(`interop: ${message}`)
  process.exit(1)
}

const serviceURL = new URL(need('STORACHA_SERVICE_URL'))
const serviceDID = DID.parse(need('STORACHA_SERVICE_DID'))
const gatewayURL = need('STORACHA_GATEWAY_URL')

async function client() {
  const conn = connect({
    id: serviceDID,
    codec: CAR.outbound,
    channel: HTTP.open({ url: serviceURL, method: 'POST' }),
  })
  const c = await Client.create({
    principal: Ed25519.parse(need('W3_PRINCIPAL')),
    store: new StoreMemory(),
    serviceConf: { access: conn, upload: conn, filecoin: conn },
    receiptsEndpoint: new URL('/receipt/', serviceURL),
  })
  const space = await c.addSpace(await Proof.parse(need('W3_PROOF')))
  await c.setCurrentSpace(space.did())
  return c
}

async function upload(file) {
  const bytes = fs.readFileSync(file)
  const c = await client()
  const shards = []
  const options = { onShardStored: (meta) => shards.push(meta.cid.toString()) }
  const root = opts.name
    ? await c.uploadDirectory([new File([bytes], opts.name)], options)
    : await c.uploadFile(new Blob([bytes]), options)
  return { root: root.toString(), shards, size: bytes.length }
}

async function list() {
  const c = await client()
  const size = opts['page-size'] ? Number(opts['page-size']) : undefined
  const uploads = []
  let cursor
  let pages = 0
  // The end is a page without a cursor (a short page may still carry one).
  do {
    const page = await c.capability.upload.list({ cursor, size })
    pages++
    for (const item of page.results) {
      const shards = []
      let shardCursor
      do {
        const sp = await c.capability.upload.shard.list(item.root, {
          cursor: shardCursor,
        })
        shards.push(...sp.results.map((s) => s.toString()))
        shardCursor = sp.cursor
      } while (shardCursor)
      uploads.push({ root: item.root.toString(), shards })
    }
    cursor = page.cursor
  } while (cursor)
  return { uploads, pages }
}

async function fetchUpload(root) {
  const rootCID = CID.parse(root)
  const path = opts.path ? `/${opts.path.split('/').map(encodeURIComponent).join('/')}` : ''
  const url = `${gatewayURL}/ipfs/${root}${path}?format=car`
  const res = await fetch(url, { headers: { accept: 'application/vnd.ipld.car' } })
  if (!res.ok) fail(`GET ${url}: ${res.status} ${await res.text()}`)
  const car = new Uint8Array(await res.arrayBuffer())
  const blocks = new Map()
  for await (const { cid, bytes } of await CarBlockIterator.fromBytes(car)) {
    const want = cid.multihash
    if (want.code === sha256.code) {
      const got = await sha256.digest(bytes)
      if (!equals(got.bytes, want.bytes)) fail(`block ${cid}: bytes do not hash to it`)
    } else if (want.code !== identity.code) {
      fail(`block ${cid}: unexpected hash 0x${want.code.toString(16)}`)
    }
    blocks.set(cid.toString(), bytes)
  }
  const entry = await exporter(`${rootCID}${opts.path ? `/${opts.path}` : ''}`, {
    // interface-blockstore 7: a block comes as an iterable of chunks.
    async *get(cid) {
      const bytes = blocks.get(cid.toString())
      if (!bytes) fail(`the CAR lacks block ${cid}`)
      yield bytes
    },
  })
  if (entry.type !== 'file' && entry.type !== 'raw') {
    fail(`${root}${path} is a ${entry.type}, not a file`)
  }
  const chunks = []
  for await (const chunk of entry.content()) chunks.push(chunk)
  const bytes = Buffer.concat(chunks)
  if (opts.out) fs.writeFileSync(opts.out, bytes)
  return {
    root,
    size: bytes.length,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    blocks: blocks.size,
  }
}

async function blob(file) {
  const bytes = fs.readFileSync(file)
  const c = await client()
  const { digest } = await c.capability.blob.add(new Blob([bytes]))
  return { cid: CID.createV1(0x55, digest).toString(), size: bytes.length }
}

async function remove(root) {
  const c = await client()
  await c.remove(CID.parse(root), { shards: true })
  return { removed: root }
}

const [command, arg] = positionals
let out
try {
  switch (command) {
    case 'upload':
      out = await upload(arg ?? fail('upload: which FILE?'))
      break
    case 'list':
      out = await list()
      break
    case 'fetch':
      out = await fetchUpload(arg ?? fail('fetch: which ROOT?'))
      break
    case 'blob':
      out = await blob(arg ?? fail('blob: which FILE?'))
      break
    case 'remove':
      out = await remove(arg ?? fail('remove: which ROOT?'))
      break
    default:
      fail(`unknown command ${JSON.stringify(command)}: upload, list, fetch, blob or remove`)
  }
} catch (e) {
  fail(`${command}: ${inspect(e, { depth: 6 }).slice(0, 4000)}`)
}
process.stdout.write(JSON.stringify(out) + '\n')
