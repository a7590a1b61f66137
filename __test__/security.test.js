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
    await api(srv.url, 'POST', '/api/entities/Tag', { label: 'taken' })
    await e.insert('Tag', { label: 'taken' }) // refused by the server: unique
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

/** A private CA and a certificate it signed for 127.0.0.1 (openssl), as PEM. */
function privateCa(dir) {
  const { execFileSync } = require('node:child_process')
  const f = (name) => path.join(dir, name)
  const run = (...args) => execFileSync('openssl', args, { stdio: 'ignore' })
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=test CA')
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('key.pem'), '-out', f('leaf.csr'), '-subj', '/CN=127.0.0.1')
  fs.writeFileSync(f('ext'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n')
  run('x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('cert.pem'), '-days', '1', '-extfile', f('ext'))
  const read = (name) => fs.readFileSync(f(name), 'utf8')
  return { key: read('key.pem'), cert: read('cert.pem'), ca: read('ca.pem') }
}

test('https and wss verify certificates: a server signed by a private CA is ERR_SYNC_TLS unless that CA is passed', async () => {
  const tls = require('node:tls')
  const net = require('node:net')
  const { freePortTriple } = require('./helpers.js')
  const srv = await startDevserver()
  const { key, cert, ca } = privateCa(tempDir())
  // TLS in front of the dev server's three ports
  const base = await freePortTriple()
  const devPort = Number(new URL(srv.url).port)
  const terminators = [0, 1, 2].map((i) =>
    tls.createServer({ key, cert }, (s) => {
      const up = net.connect(devPort + i, '127.0.0.1')
      s.pipe(up).pipe(s)
      s.on('error', () => up.destroy())
      up.on('error', () => s.destroy())
    }).listen(base + i, '127.0.0.1'))
  const url = `https://127.0.0.1:${base}`
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const untrusting = createSyncEngine(url, { persist: false, token })
    await assert.rejects(untrusting.start(), (e) => e instanceof SyncError && e.code === 'ERR_SYNC_TLS')
    await untrusting.close()
    await assert.rejects(sync.fetchList(url, 'Todo'), { code: 'ERR_SYNC_TLS' })
    assert.throws(() => createSyncEngine(url, { ca: 'not a pem' }), { code: 'ERR_SYNC_INVALID_ARG' })
    assert.deepEqual(await sync.fetchList(url, 'Todo', { ca }), [])
    for (const transport of ['websocket', 'sse']) {
      const e = createSyncEngine(url, { persist: false, token, ca, transport, pollInterval: 3600000 })
      await e.start()
      await eventually(`a ${transport} over TLS`, () => e.connection.state === 'open' && e.connection.transport === transport)
      await api(srv.url, 'POST', '/api/entities/Todo', { title: `over ${transport}`, done: false })
      await eventually('the change', () => e.store.list('Todo').some((r) => r.title === `over ${transport}`))
      await e.close()
    }
  } finally {
    for (const t of terminators) t.close()
    await srv.stop()
  }
})
