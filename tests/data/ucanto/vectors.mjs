// Reference bytes from the JS ucanto libraries for pitr's Rust ucanto layer.
import { ed25519 } from '@ucanto/principal'
import { Delegation, Message, Receipt, invoke, delegate } from '@ucanto/core'
import { CAR } from '@ucanto/transport'
import * as DID from '@ipld/dag-ucan/did'
import { CID } from 'multiformats/cid'
import { identity } from 'multiformats/hashes/identity'
import { sha256 } from 'multiformats/hashes/sha2'
import { base64 } from 'multiformats/bases/base64'
import * as Signer from '@ucanto/principal/ed25519'

const hex = b => Buffer.from(b).toString('hex')
const agent = await ed25519.derive(new Uint8Array(32).fill(1))
const space = await ed25519.derive(new Uint8Array(32).fill(2))
const service = DID.parse('did:web:up.storacha.network')
const out = {}
out.agent_key = ed25519.format(agent)
out.agent_did = agent.did()
out.space_did = space.did()

const caps = ['space/blob/add', 'space/blob/remove', 'space/index/add', 'upload/add', 'upload/list', 'upload/shard/list', 'upload/remove']
const proof = await delegate({
  issuer: space, audience: agent,
  capabilities: caps.map(can => ({ with: space.did(), can })),
  expiration: Infinity,
})
const archive = await proof.archive()
out.proof_car = hex(archive.ok)
out.proof_cid = proof.cid.toString()
out.proof_b64 = CID.createV1(0x0202, identity.digest(archive.ok)).toString(base64)

const expiring = await delegate({
  issuer: space, audience: agent,
  capabilities: [{ with: space.did(), can: 'upload/list' }],
  expiration: 1000, nonce: 'n',
})
out.expiring_car = hex((await expiring.archive()).ok)

// A proof granting less than pitr needs.
const partial = await delegate({
  issuer: space, audience: agent,
  capabilities: [{ with: space.did(), can: 'upload/list' }, { with: space.did(), can: 'space/blob/*' }],
  expiration: Infinity,
})
out.partial_b64 = CID.createV1(0x0202, identity.digest((await partial.archive()).ok)).toString(base64)

const digest = await sha256.digest(new TextEncoder().encode('hello'))
const inv = invoke({
  issuer: agent, audience: service,
  capability: { can: 'space/blob/add', with: space.did(), nb: { blob: { digest: digest.bytes, size: 5 } } },
  proofs: [proof], expiration: 2000000000, nonce: 'abc',
})
const view = await inv.buildIPLDView()
out.invocation_cid = view.cid.toString()
out.invocation_block = hex(view.root.bytes)
const msg = await Message.build({ invocations: [inv] })
const req = CAR.request.encode(msg)
out.request_car = hex(req.body)
out.request_root = msg.root.cid.toString()

// A receipt the service could give, with an fx fork, and its message.
const fork = await invoke({ issuer: agent, audience: service,
  capability: { can: 'http/put', with: space.did(), nb: { body: { digest: digest.bytes, size: 5 }, url: 'http://x/y', headers: { a: 'b' } } },
  expiration: 2000000000, nonce: 'f' }).delegate()
const rcpt = await Receipt.issue({ issuer: agent, ran: view, result: { ok: { site: view.cid } }, fx: { fork: [fork] } })
const rmsg = await Message.build({ receipts: [rcpt] })
out.response_car = hex(CAR.response.encode(rmsg).body)
out.receipt_cid = rcpt.root.cid.toString()
out.fork_cid = fork.cid.toString()

// The http/put receipt pitr issues with a derived key (no `iss`), and the conclude invocation.
const putReceipt = await Receipt.issue({ issuer: space, ran: fork.cid, result: { ok: {} } })
out.put_receipt_cid = putReceipt.root.cid.toString()
out.put_receipt_block = hex(putReceipt.root.bytes)
const errReceipt = await Receipt.issue({ issuer: agent, ran: view, result: { error: { name: 'Unauthorized', message: 'nope' } } })
out.error_response_car = hex(CAR.response.encode(await Message.build({ receipts: [errReceipt] })).body)
out.space_archive_keys = hex(space.toArchive().keys[space.did()])
console.log(JSON.stringify(out, null, 1))
