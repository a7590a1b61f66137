'use strict'
// Seeing the engine and driving it: logs (stderr and the logger option),
// diagnostics, bootstrap progress, and the barriers (waitForFirstSync,
// mutations.settled, caughtUp). Against the dev server.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { createSyncEngine } = require('../sync.js')
const { startDevserver, api, eventually } = require('./helpers.js')

const SYNC = JSON.stringify(path.join(__dirname, '..', 'sync.js'))

function engine(url, opts = {}) {
  return createSyncEngine(url, { persist: false, pollInterval: 30, reconnectDelay: 20, ...opts })
}

/** Runs `script` in a fresh Node with `env` added; returns { status, stdout, stderr }. */
function run(script, env = {}) {
  return spawnSync(process.execPath, ['-e', script], { timeout: 60000, encoding: 'utf8', env: { ...process.env, ...env } })
}

test('no token reaches a log line, at any level, on stderr or through the logger', async () => {
  const srv = await startDevserver(['--admin-token', 'admin-secret-token'])
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const script = `
      const { createSyncEngine } = require(${SYNC})
      const { url, token } = ${JSON.stringify({ url: srv.url, token })}
      const records = []
      ;(async () => {
        for (const transport of ['websocket', 'sse', 'poll']) {
          const e = createSyncEngine(url, { persist: false, token, transport, pollInterval: 50, logLevel: 'trace',
            logger: (level, message, fields) => records.push([level, message, fields]) })
          e.on('error', () => {})
          await e.start()
          const id = await e.insert('Todo', { title: 'logged ' + transport, done: false })
          await e.mutations.settled(id)
          await e.insert('Tag', { label: 'same' }).catch(() => {})
          await e.caughtUp().catch(() => {})
          await new Promise((r) => setTimeout(r, 200))
          await e.close()
        }
        // a token the server does not know, and one that goes to no server
        for (const base of [url, 'http://127.0.0.1:1']) {
          const e = createSyncEngine(base, { persist: false, token: token + 'x', transport: 'poll', logLevel: 'trace',
            logger: (level, message, fields) => records.push([level, message, fields]) })
          await e.start().catch(() => {})
          await new Promise((r) => setTimeout(r, 200))
          await e.close()
        }
        await new Promise((r) => setImmediate(r))
        console.log(JSON.stringify(records))
      })()
    `
    const r = run(script, { PYLON_SYNC_LOG: 'trace' })
    assert.equal(r.status, 0, r.stderr.slice(-2000))
    const records = JSON.parse(r.stdout.trim().split('\n').pop())
    const messages = records.map(([, m]) => m)
    // the logger saw what the engine did, at every level asked for
    for (const m of ['starting', 'session resolved', 'request', 'send', 'write acknowledged', 'connection', 'closed']) {
      assert.ok(messages.includes(m), `no "${m}" record`)
    }
    assert.ok(records.some(([level]) => level === 'trace'))
    assert.ok(r.stderr.split('\n').length > 100, 'PYLON_SYNC_LOG=trace wrote little to stderr')
    const encoded = encodeURIComponent(token)
    for (const [name, text] of [['stderr', r.stderr], ['the logger', r.stdout]]) {
      for (const secret of [token, encoded, 'admin-secret-token']) {
        assert.ok(!text.includes(secret), `a token reached ${name}`)
      }
    }
  } finally {
    await srv.stop()
  }
})

test('stderr is quiet by default, PYLON_SYNC_LOG selects by EnvFilter, and a bad filter is said once', async () => {
  const srv = await startDevserver()
  try {
    const script = `
      const { createSyncEngine } = require(${SYNC})
      ;(async () => {
        const e = createSyncEngine(${JSON.stringify(srv.url)}, { persist: false, transport: 'poll' })
        await e.start()
        await e.caughtUp()
        await e.close()
      })()
    `
    const quiet = run(script)
    assert.equal(quiet.status, 0, quiet.stderr)
    assert.equal(quiet.stderr, '')
    const chosen = run(script, { PYLON_SYNC_LOG: 'warn,pylon_sync_engine::engine::lifecycle=info' })
    assert.match(chosen.stderr, /INFO engine\{id=1 replica=":memory:"\}: pylon_sync_engine::engine::lifecycle: starting/)
    assert.doesNotMatch(chosen.stderr, /pylon_sync_engine::api/)
    const bad = run(script, { PYLON_SYNC_LOG: 'pylon_sync_engine=loud' })
    assert.equal(bad.status, 0, bad.stderr)
    assert.equal(bad.stderr.split('\n').filter((l) => l.includes('PYLON_SYNC_LOG')).length, 1, bad.stderr)
  } finally {
    await srv.stop()
  }
})

test('a logger never keeps the process alive; logger and logLevel are checked', () => {
  const script = `
    const { createSyncEngine } = require(${SYNC})
    const e = createSyncEngine('http://127.0.0.1:1', { persist: false, logLevel: 'debug', logger: () => {} })
    e.unref()
    e.start()
  `
  const r = run(script)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.error, undefined)
  for (const [opts, pattern] of [
    [{ logger: 'console' }, /logger must be a function/],
    [{ logger: () => {}, logLevel: 'loud' }, /logLevel must be one of error, warn, info, debug, trace/],
  ]) {
    assert.throws(() => createSyncEngine('http://127.0.0.1:1', { persist: false, ...opts }), (e) => {
      assert.equal(e.code, 'ERR_SYNC_INVALID_ARG')
      assert.match(e.message, pattern)
      return true
    })
  }
})

test('an error event nobody listens for reaches the logger at warn, once', async () => {
  const records = []
  const e = engine('http://127.0.0.1:1', { transport: 'poll', reconnectDelay: 1, logLevel: 'warn', logger: (...r) => records.push(r) })
  await e.start()
  await eventually('three failed rounds', () => e.status.attempts >= 3)
  await e.close()
  await new Promise((r) => setImmediate(r))
  assert.deepEqual(records.map(([level]) => level), ['warn'])
  assert.match(records[0][1], /sync failed with ERR_SYNC_NETWORK/)
})

test('diagnostics count requests, bytes, connections, events, writes and errors, and only grow', async () => {
  const srv = await startDevserver()
  try {
    await srv.control('seed', { entity: 'Todo', count: 50, data: { title: 't{i}', done: false } })
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const e = engine(srv.url, { transport: 'websocket', token })
    const before = e.diagnostics()
    assert.equal(before.requests, 0)
    assert.deepEqual(before.lastErrors, [])
    await e.start()
    await eventually('the socket open', () => e.connection.state === 'open')
    e.on('error', () => {})
    // the server holds the write a while, so it is still queued when the insert resolves
    await srv.control('faults', { rules: [{ path: '/api/entities/Todo', method: 'POST', holdMs: 1000, count: 1 }] })
    const id = await e.insert('Todo', { title: 'mine', done: false })
    const queued = e.diagnostics()
    assert.equal(queued.pending, 1)
    assert.ok(queued.oldestPendingAt <= Date.now() && queued.oldestPendingAt > Date.now() - 60000)
    await e.mutations.settled(id)
    await api(srv.url, 'POST', '/api/entities/Todo', { title: 'theirs', done: false })
    await eventually('their row', () => e.store.list('Todo').some((t) => t.title === 'theirs'))
    await srv.control('drop', {})
    await eventually('a reconnect', () => (e.diagnostics().reconnects.websocket ?? 0) >= 1)
    const d = e.diagnostics()
    assert.ok(d.requests > 3 && d.bytesReceived > 1000 && d.bytesSent > 0 && d.serverWaitMs > 0, JSON.stringify(d))
    assert.equal(d.connects.websocket, d.reconnects.websocket + 1)
    assert.ok(d.eventsApplied >= 1)
    assert.equal(d.writesSent, 1)
    assert.equal(d.writesAcknowledged, 1)
    assert.equal(d.pending, 0)
    assert.equal(d.oldestPendingAt, null)
    assert.equal(d.cursor, e.cursor)
    for (const k of Object.keys(before)) {
      if (typeof before[k] === 'number') assert.ok(d[k] >= before[k], k)
    }
    await e.close()
  } finally {
    await srv.stop()
  }
})

test('progress carries totals: a snapshot once read, a log replay as a share of the log', async () => {
  const srv = await startDevserver()
  try {
    await srv.control('seed', { entity: 'Todo', count: 2500, data: { title: 't{i}', done: false } })
    const alice = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    for (let i = 0; i < 30; i++) await api(srv.url, 'POST', '/api/entities/Note', { body: `n${i}`, userId: 'alice' }, alice)
    const e = engine(srv.url, { token: alice })
    const seen = []
    e.on('progress', (p) => seen.push(p))
    await e.start()
    await new Promise((r) => setImmediate(r))
    const todo = seen.filter((p) => p.entity === 'Todo')
    assert.ok(todo.length >= 2, 'one event per page')
    assert.ok(todo.slice(0, -1).every((p) => p.total === null && p.fraction === null && !p.done))
    assert.deepEqual(todo.at(-1), { type: 'progress', entity: 'Todo', rows: 2500, total: 2500, fraction: 1, done: true })
    const notes = seen.filter((p) => p.entity === 'Note')
    assert.deepEqual(notes.at(-1), { type: 'progress', entity: 'Note', rows: 30, total: 30, fraction: 1, done: true })
    assert.ok(notes.every((p) => p.fraction === null || (p.fraction >= 0 && p.fraction <= 1)))
    assert.equal(e.store.list('Note').length, 30)
    await e.close()
  } finally {
    await srv.stop()
  }
})

test('hasSynced and waitForFirstSync: false until a round reaches the head, then true', async () => {
  const srv = await startDevserver()
  try {
    const e = engine(srv.url)
    assert.equal(e.status.hasSynced, false)
    const first = e.waitForFirstSync()
    const flips = []
    e.on('status', (s) => flips.push(s.hasSynced))
    await e.start()
    await first
    assert.equal(e.status.hasSynced, true)
    await e.waitForFirstSync() // at once now
    await e.stop() // no round of the loop between the reset and the check
    await e.resetReplica()
    assert.equal(e.status.hasSynced, false)
    await e.sync()
    assert.equal(e.status.hasSynced, true)
    await e.close()
    assert.ok(flips.includes(true))
  } finally {
    await srv.stop()
  }
  const offline = engine('http://127.0.0.1:1', { transport: 'poll' })
  offline.on('error', () => {})
  await offline.start()
  await assert.rejects(offline.waitForFirstSync({ signal: AbortSignal.timeout(100) }), { name: 'TimeoutError' })
  const waiting = assert.rejects(offline.waitForFirstSync(), { code: 'ERR_SYNC_CLOSED' })
  await offline.close()
  await waiting
  await assert.rejects(offline.waitForFirstSync(), { code: 'ERR_SYNC_CLOSED' })
  await assert.rejects(offline.waitForFirstSync({ signal: 'soon' }), { code: 'ERR_SYNC_INVALID_ARG' })
})

test('mutations.settled resolves when the write is acknowledged, rejects when it is refused or removed', async () => {
  const srv = await startDevserver()
  try {
    const e = engine(srv.url)
    e.on('error', () => {})
    // not started: the write waits in the queue
    const id = await e.insert('Todo', { title: 'later', done: false })
    const [m] = e.mutations.list()
    let settled = false
    const byRow = e.mutations.settled(id).then(() => (settled = true))
    const byMutation = e.mutations.settled(m.id)
    await new Promise((r) => setTimeout(r, 100))
    assert.equal(settled, false)
    await e.start()
    await Promise.all([byRow, byMutation])
    assert.deepEqual(e.mutations.list(), [])
    assert.ok(e.store.list('Todo').some((t) => t.title === 'later' && !t.id.startsWith('tmp_')))
    // a write no longer queued was acknowledged already
    await e.mutations.settled(id)
    await e.mutations.settled('mut_unknown')

    await api(srv.url, 'POST', '/api/entities/Tag', { label: 'taken' })
    const tag = await e.insert('Tag', { label: 'taken' })
    await assert.rejects(e.mutations.settled(tag), (err) => {
      assert.equal(err.code, 'ERR_SYNC_REJECTED')
      assert.equal(err.serverCode, 'INSERT_FAILED')
      assert.match(err.message, /UNIQUE/)
      return true
    })
    // a refused write rejects at once, as long as it is kept
    await assert.rejects(e.mutations.settled(tag), { code: 'ERR_SYNC_REJECTED' })

    await e.stop()
    const doomed = await e.insert('Todo', { title: 'removed', done: false })
    const gone = assert.rejects(e.mutations.settled(doomed), { code: 'ERR_SYNC_NOT_FOUND' })
    await e.mutations.remove(e.mutations.list().find((x) => x.change.row_id === doomed).id)
    await gone

    const orphan = assert.rejects(e.mutations.settled(await e.insert('Todo', { title: 'at close', done: false })), { code: 'ERR_SYNC_CLOSED' })
    await e.close({ flush: false })
    await orphan
    await assert.rejects(e.mutations.settled(42), { code: 'ERR_SYNC_INVALID_ARG' })
  } finally {
    await srv.stop()
  }
})

test('settled: a write parked by an identity flip is told so; before start the queue is read from disk', async () => {
  const srv = await startDevserver()
  try {
    const alice = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const bob = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'bob' })).body.token
    const dbPath = require('node:path').join(require('./helpers.js').tempDir(), 'flip.db')
    const e = engine(srv.url, { token: alice, dbPath, persist: true })
    await e.start()
    await e.stop()
    const id = await e.insert('Todo', { title: 'alice offline', done: false })
    await e.close()
    // a new engine on the same file, not started: the write is on disk, still pending
    const again = engine(srv.url, { token: bob, dbPath, persist: true })
    let done = false
    const parked = again.mutations.settled(id).then(() => (done = 'resolved'), (err) => (done = err.code))
    await new Promise((r) => setTimeout(r, 100))
    assert.equal(done, false, 'a write still pending on disk is not settled')
    await again.start() // bob: alice's write is parked for alice
    await parked
    assert.equal(done, 'ERR_SYNC_AUTH')
    await again.close()
  } finally {
    await srv.stop()
  }
})

test('caughtUp: every write made before it is acknowledged and the replica has pulled past it', async () => {
  const srv = await startDevserver()
  try {
    // an hour between polls and no stream: only caughtUp brings the changes
    const e = engine(srv.url, { transport: 'poll', pollInterval: 3600000 })
    await e.start()
    await api(srv.url, 'POST', '/api/entities/Todo', { title: 'theirs', done: false })
    await e.insert('Todo', { title: 'mine 1', done: false })
    await e.insert('Todo', { title: 'mine 2', done: false })
    await e.caughtUp()
    const titles = e.store.list('Todo').map((t) => t.title).sort()
    assert.deepEqual(titles, ['mine 1', 'mine 2', 'theirs'])
    assert.deepEqual(e.mutations.list(), [])
    assert.ok(e.store.list('Todo').every((t) => !t.id.startsWith('tmp_')))
    // a write the server refuses is the barrier's error
    await api(srv.url, 'POST', '/api/entities/Tag', { label: 'taken' })
    await e.insert('Tag', { label: 'taken' })
    await assert.rejects(e.caughtUp(), { code: 'ERR_SYNC_REJECTED', serverCode: 'INSERT_FAILED' })
    // a write kept failed will never be acknowledged as it is: until it is removed
    await assert.rejects(e.caughtUp(), { code: 'ERR_SYNC_REJECTED' })
    await e.mutations.remove(e.mutations.list()[0].id)
    await e.caughtUp()
    await e.close()
    await assert.rejects(e.caughtUp(), { code: 'ERR_SYNC_CLOSED' })
  } finally {
    await srv.stop()
  }
  // no server: the round's error
  const offline = engine('http://127.0.0.1:1', { transport: 'poll' })
  await assert.rejects(offline.caughtUp(), { code: 'ERR_SYNC_NETWORK' })
  await offline.close()
})
