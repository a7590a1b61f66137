'use strict'
// Realtime scenarios, each run against the dev server and the real `pylon`:
// live propagation over WebSocket and SSE, presence and topics between two
// engines, CRDT frames, 1008 on a bad token, and the fallback for anonymous
// clients. Engines here poll once an hour, so only a stream can bring changes.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { createSyncEngine, SyncError } = require('../sync.js')
const { api, eventually, servers, startFaultProxy } = require('./helpers.js')

const HOUR = 3600 * 1000

function engine(url, options) {
  return createSyncEngine(url, { persist: false, pollInterval: HOUR, pingInterval: 1000, pingTimeout: 1000, ...options })
}

async function open(e, transport) {
  await eventually(`a ${transport} connection`, () => e.connection.state === 'open' && e.connection.transport === transport)
}

/** Alice and Bob, each started and following over `transport`. */
async function aliceAndBob(srv, make, transport) {
  const [alice, bob] = [await srv.login('alice'), await srv.login('bob')]
  const a = make({ token: alice, transport })
  const b = make({ token: bob, transport })
  await a.start()
  await b.start()
  await open(a, transport)
  await open(b, transport)
  return [a, b]
}

for (const server of servers()) {
  const scenario = (name, fn) =>
    test(`${server.name}: ${name}`, { timeout: 90000 }, async (t) => {
      const srv = await server.start()
      if (!srv) return t.skip('pylon is not installed (bash .ci/run installs it)')
      const engines = []
      const make = (options, url = srv.url) => {
        const e = engine(url, options)
        engines.push(e)
        return e
      }
      try {
        await fn(srv, make)
      } finally {
        for (const e of engines) await e.close()
        await srv.stop()
      }
    })

  scenario('an insert whose answer is cut after it was applied, with a delete queued behind it, is never shown twice', async (srv, make) => {
    const token = await srv.login('dora')
    const proxy = await startFaultProxy(srv.url)
    try {
      const port = Number(new URL(srv.url).port)
      // writes and pulls go through the proxy; the WebSocket to the server itself
      const e = make({ token, transport: 'websocket', wsUrl: `ws://127.0.0.1:${port + 1}` }, proxy.url)
      const shown = []
      let deleted = false
      e.store.subscribe(() => {
        const copies = e.store.list('Todo').filter((r) => r.title === 'cut').length
        shown.push(copies)
        if (copies > 1 || (deleted && copies > 0)) shown.bad = `${copies} copies (delete resolved: ${deleted})`
      })
      await e.start()
      await open(e, 'websocket')
      proxy.rules.push({ method: 'POST', path: '/api/entities/Todo', cutAfterMs: 800 })
      const temp = await e.insert('Todo', { title: 'cut', done: false })
      await e.delete('Todo', temp)
      deleted = true
      await eventually('the queue to drain', () => e.mutations.list().length === 0, 20000)
      const server = await api(srv.url, 'GET', '/api/entities/Todo', undefined, srv.adminToken)
      assert.deepEqual(server.body.data.filter((r) => r.title === 'cut'), [], 'the delete reached the row the insert made')
      assert.equal(e.store.list('Todo').filter((r) => r.title === 'cut').length, 0)
      assert.equal(shown.bad, undefined, `a notification showed ${shown.bad}`)
      assert.ok(proxy.rules[0].count === 0, 'the answer was cut')
    } finally {
      await proxy.close()
    }
  })

  for (const transport of ['websocket', 'sse']) {
    scenario(`a write reaches the other engine over ${transport}`, async (srv, make) => {
      const [a, b] = await aliceAndBob(srv, make, transport)
      const seen = []
      b.store.subscribe(() => seen.push(b.store.list('Todo').length))
      await a.insert('Todo', { title: `over ${transport}`, done: false })
      await eventually('b to see the row', () => b.store.list('Todo').some((r) => r.title === `over ${transport}`))
      // listeners hear of it asynchronously, possibly just after the row is readable
      await eventually('store listeners to be called', () => seen.length > 0)
      const id = b.store.list('Todo')[0].id
      await b.update('Todo', id, { title: 'edited' })
      await eventually('a to see the edit', () => a.store.get('Todo', id)?.title === 'edited')
      assert.equal(a.connection.transport, transport)
    })
  }

  scenario("another user's policy-protected rows never reach the store over the unfiltered stream", async (srv, make) => {
    const [a, b] = await aliceAndBob(srv, make, 'websocket')
    let bobHeard = 0
    b.store.subscribe(() => bobHeard++)
    await a.insert('Note', { body: "alice's secret", userId: 'alice' })
    await eventually("alice's note on the server", () => a.mutations.list().length === 0)
    // a later public change proves bob's stream delivered everything before it
    await a.insert('Todo', { title: 'public', done: false })
    await eventually('bob to see the public row', () => b.store.list('Todo').length === 1)
    assert.deepEqual(b.store.list('Note'), [])
    assert.equal(b.store.get('Note', a.store.list('Note')[0].id), null)
    await eventually('bob to be notified', () => bobHeard >= 1)
    // and alice, who may read it, has it under its server id
    assert.equal(a.store.list('Note')[0].body, "alice's secret")
  })

  scenario('presence and topics travel between two engines', async (srv, make) => {
    const [a, b] = await aliceAndBob(srv, make, 'websocket')
    assert.ok(a.connected)
    let notified = 0
    b.store.subscribe(() => notified++)
    const presenceEvents = []
    b.on('presence', (peers) => presenceEvents.push(peers))
    a.setPresence({ cursor: { x: 3, y: 4 } })
    await eventually("b to see a's presence", () => b.presence.length === 1)
    assert.deepEqual(b.presence[0], { from: 'alice', clientId: a.clientId, data: { cursor: { x: 3, y: 4 } } })
    await eventually('store subscribers and presence listeners to be notified', () => notified > 0 && presenceEvents.length > 0)
    assert.deepEqual(a.presence, [])

    const got = []
    const off = b.onTopic('chat:room_42', (data, meta) => got.push({ data, meta }))
    b.onTopic('other', () => assert.fail('a handler of another topic was called'))
    assert.equal(a.publishTopic('chat:room_42', { text: 'hi' }), true)
    await eventually('the topic message', () => got.length === 1)
    assert.deepEqual(got[0], { data: { text: 'hi' }, meta: { topic: 'chat:room_42', from: 'alice' } })
    off()
    a.publishTopic('chat:room_42', { text: 'again' })
    await new Promise((r) => setTimeout(r, 200))
    assert.equal(got.length, 1, 'an unsubscribed handler is not called')

    a.setPresence(null)
    await eventually('a to withdraw its presence', () => b.presence.length === 0)
  })

  scenario('a CRDT subscription delivers binary frames with entity and row id', async (srv, make) => {
    const token = await srv.login('carol')
    const created = await api(srv.url, 'POST', '/api/entities/Doc', { title: 'v1' }, token)
    assert.equal(created.status, 201)
    const id = created.body.id
    const e = make({ token, transport: 'websocket' })
    const frames = []
    const unregister = e.onBinaryFrame((bytes, frame) => frames.push({ bytes, frame }))
    await e.start()
    await open(e, 'websocket')
    e.subscribeCrdt('Doc', id)
    e.subscribeCrdt('Doc', id)
    await eventually('the snapshot frame', () => frames.length >= 1)
    const { bytes, frame } = frames[0]
    assert.ok(bytes instanceof Uint8Array)
    assert.equal(bytes[0], 0x10)
    assert.deepEqual({ type: frame.type, entity: frame.entity, rowId: frame.rowId }, { type: 0x10, entity: 'Doc', rowId: id })
    assert.equal(frame.payload.length, bytes.length - (5 + 3 + id.length))
    e.unsubscribeCrdt('Doc', id) // one subscriber remains
    await api(srv.url, 'PATCH', `/api/entities/Doc/${id}`, { title: 'v2' }, token)
    await eventually('a frame for the update', () => frames.length >= 2)
    unregister()
    e.unsubscribeCrdt('Doc', id)
    e.unsubscribeCrdt('Doc', id) // extra: a no-op
  })

  scenario('an unknown token is refused with 1008 and reported as ERR_SYNC_AUTH', async (srv, make) => {
    const e = make({ token: 'pylon_0000000000000000000000000000000000000000000000000000000000000000', transport: 'websocket' })
    const errors = []
    e.on('error', (err) => errors.push(err))
    await e.start()
    await eventually('an auth error on the connection', () => errors.some((err) => err.context === 'connection'))
    const err = errors.find((x) => x.context === 'connection')
    assert.ok(err instanceof SyncError)
    assert.equal(err.code, 'ERR_SYNC_AUTH')
    assert.equal(e.connection.lastError.code, 'ERR_SYNC_AUTH')
    assert.ok(!err.message.includes('pylon_0000'), 'the token leaked into the error')
  })

  scenario('without a user session the automatic mode follows over SSE', async (srv, make) => {
    const e = make({})
    const transports = []
    e.on('connection', (c) => transports.push(`${c.state}:${c.transport}`))
    await e.start()
    await open(e, 'sse')
    assert.ok(!transports.includes('connecting:websocket'), 'a WebSocket needs a user session; it was not tried')
    await api(srv.url, 'POST', '/api/entities/Todo', { title: 'anonymous sees it', done: false })
    await eventually('the change over SSE', () => e.store.list('Todo').length === 1)
  })
}
