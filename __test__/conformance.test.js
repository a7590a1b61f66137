'use strict'
// Protocol conformance: the same raw requests go to the dev server and to the
// real `pylon`, and the answers must agree in status, JSON shape and error
// code, so the dev server cannot drift from the server our users run.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')
const crypto = require('node:crypto')
const { servers, api } = require('./helpers.js')

/** The type skeleton of a JSON value: keys and value kinds, not values. */
function shape(v) {
  if (v === null) return 'null'
  if (Array.isArray(v)) return v.length === 0 ? [] : [shape(v[0])]
  if (typeof v === 'object') {
    const out = {}
    for (const k of Object.keys(v).sort()) out[k] = shape(v[k])
    return out
  }
  return typeof v
}

/** Status, shape and (for errors) the error code of an answer. */
function summary(r) {
  const s = { status: r.status, shape: shape(r.body) }
  if (r.body && r.body.error && typeof r.body.error === 'object') s.code = r.body.error.code
  return s
}

/** A raw WebSocket upgrade: the status line, the echoed protocol, and the first frame if it is a close. */
function wsHandshake(url, protocol) {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port) + 1, hostname)
    let buf = Buffer.alloc(0)
    const timer = setTimeout(() => done(), 3000)
    const done = () => {
      clearTimeout(timer)
      sock.destroy()
      const text = buf.toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      if (end < 0) return reject(new Error(`no handshake answer: ${JSON.stringify(text)}`))
      const head = text.slice(0, end).split('\r\n')
      const header = (name) => head.find((l) => l.toLowerCase().startsWith(name + ':'))?.split(':').slice(1).join(':').trim() ?? null
      const frame = buf.subarray(end + 4)
      let close = null
      if (frame.length >= 4 && frame[0] === 0x88) {
        const len = frame[1] & 0x7f
        close = { code: frame.readUInt16BE(2), reason: frame.subarray(4, 2 + len).toString() }
      }
      resolve({ status: head[0].split(' ')[1], protocol: header('sec-websocket-protocol'), close })
    }
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d])
    })
    sock.on('close', done)
    sock.on('error', () => {})
    sock.on('connect', () => {
      const key = crypto.randomBytes(16).toString('base64')
      const lines = [
        'GET / HTTP/1.1', `Host: ${hostname}`, 'Upgrade: websocket', 'Connection: Upgrade',
        `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13',
      ]
      if (protocol) lines.push(`Sec-WebSocket-Protocol: ${protocol}`)
      sock.write(lines.join('\r\n') + '\r\n\r\n')
    })
  })
}

/** The raw bytes of an SSE answer up to and including `: connected\n\n`. */
function sseHead(url) {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port) + 2, hostname, () => sock.write(`GET /events HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`))
    let text = ''
    const timer = setTimeout(() => reject(new Error(`no SSE head: ${JSON.stringify(text)}`)), 3000)
    sock.on('data', (d) => {
      text += d.toString('latin1')
      const end = text.indexOf(': connected\n\n')
      if (end >= 0) {
        clearTimeout(timer)
        sock.destroy()
        resolve(text.slice(0, end + ': connected\n\n'.length))
      }
    })
    sock.on('error', reject)
  })
}

/** Runs the same requests against one server; returns name → summary. */
async function transcript(srv) {
  const out = {}
  const call = async (name, method, path, body, token) => {
    const r = await api(srv.url, method, path, body, token)
    out[name] = summary(r)
    return r
  }
  await call('health', 'GET', '/health')
  await call('me anonymous', 'GET', '/api/auth/me')
  const alice = (await call('session', 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
  await call('guest', 'POST', '/api/auth/guest')
  await call('me alice', 'GET', '/api/auth/me', undefined, alice)
  await call('session without user', 'POST', '/api/auth/session', {})
  const id = (await call('insert', 'POST', '/api/entities/Todo', { title: 'a', done: false })).body.id
  await call('insert missing field', 'POST', '/api/entities/Todo', { done: false })
  await call('insert unknown column', 'POST', '/api/entities/Todo', { title: 'x', done: false, nope: 1 })
  await call('get', 'GET', `/api/entities/Todo/${id}`)
  await call('get missing', 'GET', '/api/entities/Todo/0000000000000000000000000000000000000000')
  await call('update', 'PATCH', `/api/entities/Todo/${id}`, { done: true })
  await call('update missing', 'PATCH', '/api/entities/Todo/0000000000000000000000000000000000000000', { done: true })
  await call('list', 'GET', '/api/entities/Todo')
  await call('cursor page', 'GET', '/api/entities/Todo/cursor?limit=1')
  await call('query', 'POST', '/api/query/Todo', { $limit: 1, $order: { id: 'asc' } })
  await call('query unknown column', 'POST', '/api/query/Todo', { nope: 1 })
  await call('query under a row policy', 'POST', '/api/query/Note', {}, alice)
  await call('list under a row policy', 'GET', '/api/entities/Note', undefined, alice)
  await call('pull', 'GET', '/api/sync/pull?since=0')
  await call('pull past the head', 'GET', '/api/sync/pull?since=999999')
  await call('push as a user', 'POST', '/api/sync/push', { changes: [] }, alice)
  await call('batch as a user', 'POST', '/api/batch', { operations: [] }, alice)
  await call('batch without operations', 'POST', '/api/batch', {}, srv.adminToken)
  await call('batch', 'POST', '/api/batch', { operations: [{ op: 'insert', entity: 'Todo', data: { title: 'b', done: false } }] }, srv.adminToken)
  await call('me admin', 'GET', '/api/auth/me', undefined, srv.adminToken)
  await call('delete', 'DELETE', `/api/entities/Todo/${id}`)
  await call('delete again', 'DELETE', `/api/entities/Todo/${id}`)
  out['ws with a session'] = await wsHandshake(srv.url, `bearer.${encodeURIComponent(alice)}`)
  out['ws with a session'].protocol = out['ws with a session'].protocol === `bearer.${encodeURIComponent(alice)}` ? 'echoed' : out['ws with a session'].protocol
  out['ws unknown token'] = await wsHandshake(srv.url, 'bearer.pylon_unknown')
  out['ws unknown token'].protocol = out['ws unknown token'].protocol === 'bearer.pylon_unknown' ? 'echoed' : null
  out['ws admin token'] = await wsHandshake(srv.url, `bearer.${srv.adminToken}`)
  out['ws admin token'].protocol = out['ws admin token'].protocol ? 'echoed' : null
  out['ws no token'] = await wsHandshake(srv.url, null)
  out['sse head'] = await sseHead(srv.url)
  return out
}

test('the dev server answers like the real pylon', { timeout: 120000 }, async (t) => {
  const [dev, real] = servers()
  const r = await real.start()
  if (!r) return t.skip('pylon is not installed (bash .ci/run installs it)')
  const d = await dev.start()
  try {
    const want = await transcript(r)
    const got = await transcript(d)
    const differences = Object.keys(want).filter((k) => JSON.stringify(want[k]) !== JSON.stringify(got[k]))
    for (const k of differences) t.diagnostic(`${k}: real ${JSON.stringify(want[k])} dev ${JSON.stringify(got[k])}`)
    assert.deepEqual(differences, [], 'answers differ (see the diagnostics)')
  } finally {
    await d.stop()
    await r.stop()
  }
})
