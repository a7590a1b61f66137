'use strict'
// Secrets and hostile input: tokens never reach the database file, errors or
// events; the files are private; garbage arguments give typed errors; a Rust
// panic becomes an exception instead of ending the process.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const sync = require('../sync.js')
const native = require('../index.js')
const { startDevserver, api, eventually, tempDir } = require('./helpers.js')

const { createSyncEngine, SyncError } = sync

test('a token never reaches the database file, its WAL, errors or events', async () => {
  const srv = await startDevserver()
  const dir = tempDir()
  const dbPath = path.join(dir, 'replica.db')
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const e = createSyncEngine(srv.url, { dbPath, token, pingInterval: 200, pingTimeout: 200 })
    const seen = []
    for (const type of ['status', 'error', 'session', 'resync', 'mutation', 'connection', 'presence', 'topic']) {
      e.on(type, (x) => seen.push(JSON.stringify(x, Object.getOwnPropertyNames(x ?? {}).concat(['message', 'stack']))))
    }
    await e.start()
    await e.insert('Todo', { title: 'fine', done: false })
    await e.insert('Todo', { done: false }) // refused by the server
    await e.insert('Note', { body: 'mine', userId: 'alice' })
    e.setPresence({ here: true })
    await eventually('the queue to settle', () => e.mutations.list().every((m) => m.status === 'failed'))
    // errors of every kind, with the token in play
    await srv.control('faults', { rules: [{ path: '', status: 401 }] })
    await e.sync().catch((err) => seen.push(err.message + err.stack))
    await srv.control('faults', {})
    for (const f of ['replica.db', 'replica.db-wal', 'replica.db-shm']) {
      const p = path.join(dir, f)
      if (!fs.existsSync(p)) continue
      assert.ok(!fs.readFileSync(p).includes(token), `the token is in ${f}`)
      // private files, WAL and shared memory included
      assert.equal(fs.statSync(p).mode & 0o777, 0o600, `${f} is not 0600`)
    }
    assert.ok(seen.length > 5)
    for (const s of seen) assert.ok(!s.includes(token), `the token leaked: ${s.slice(0, 200)}`)
    await e.close()
    assert.ok(!fs.readFileSync(dbPath).includes(token), 'the token is in the checkpointed database')
  } finally {
    await srv.stop()
  }
})

test('a Rust panic becomes an exception; the process lives on', () => {
  assert.throws(() => native.panicForTests(), /deliberate panic/)
  assert.equal(typeof native.panicForTests, 'function')
})

/** Values a careless or hostile caller might pass. */
const garbage = [
  undefined, null, NaN, Infinity, -1, 2 ** 64, '', 'x'.repeat(1 << 20), 'a/../b', '\u0000', true, {}, [],
  [1, 2], () => 1, 10n, new Date(0), Buffer.from('hi'), JSON.parse('{"__proto__": {"polluted": true}}'),
  { constructor: { prototype: { polluted: true } } }, { toString: () => { throw new Error('boom') } },
]

function isTyped(err) {
  return err instanceof SyncError && typeof err.code === 'string' && err.code.startsWith('ERR_SYNC_')
}

test('garbage arguments to every call give typed errors and queue nothing', async () => {
  const e = createSyncEngine('http://127.0.0.1:1', { persist: false })
  const calls = {
    insert: (a, b) => e.insert(a, b),
    update: (a, b, c) => e.update(a, b, c),
    delete: (a, b) => e.delete(a, b),
    list: (a) => e.store.list(a),
    get: (a, b) => e.store.get(a, b),
    remove: (a) => e.mutations.remove(a),
    retry: (a) => e.mutations.retry(a),
    hydrate: (a) => e.hydrate(a),
    infinite: (a, b) => e.createInfiniteQuery(a, b),
    presence: (a) => e.setPresence(a),
    publish: (a, b) => e.publishTopic(a, b),
    onTopic: (a, b) => e.onTopic(a, b),
    onBinary: (a) => e.onBinaryFrame(a),
    subscribeCrdt: (a, b) => e.subscribeCrdt(a, b),
    unsubscribeCrdt: (a, b) => e.unsubscribeCrdt(a, b),
    on: (a, b) => e.on(a, b),
    subscribe: (a) => e.store.subscribe(a),
    create: (a, b) => createSyncEngine(a, b),
    fetchList: (a, b) => sync.fetchList(a, b),
    insertDirect: (a, b, c) => sync.insert(a, b, c),
    callFn: (a, b, c) => sync.callFn(a, b, c),
  }
  let typed = 0
  for (const [name, call] of Object.entries(calls)) {
    for (let i = 0; i < garbage.length; i++) {
      const args = [garbage[i], garbage[(i * 7 + 3) % garbage.length], garbage[(i * 5 + 1) % garbage.length]]
      let outcome
      try {
        outcome = call(...args)
        if (outcome && typeof outcome.then === 'function') await outcome
      } catch (err) {
        if (!isTyped(err)) assert.fail(`${name}(${args.map((a) => typeof a).join(', ')}) threw an untyped ${err && err.name}: ${err && err.message}`)
        typed++
        continue
      }
      if (name === 'create' && outcome) await outcome.close()
    }
  }
  assert.ok(typed > 100, `only ${typed} typed errors`)
  assert.equal({}.polluted, undefined, 'Object.prototype was polluted')
  assert.deepEqual(e.mutations.list(), [])
  await e.close()
})
