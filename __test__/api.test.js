'use strict'
// The JS surface: typed errors for bad input, direct calls, ESM, process
// lifetime and worker threads.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const sync = require('../sync.js')
const { startDevserver, tempDir, eventually } = require('./helpers.js')

const { createSyncEngine, fetchList, fetchById, insert, update, remove, callFn, getServerData, defaultStorage, createWriteThroughStorage, SyncError } = sync

test('wrong config gives ERR_SYNC_INVALID_ARG naming the option', () => {
  const cases = [
    [['not a url'], /baseUrl/],
    [[42], /baseUrl/],
    [['http://127.0.0.1:1', { pollInterval: 'fast' }], /pollInterval/],
    [['http://127.0.0.1:1', { pollInterval: NaN }], /pollInterval/],
    [['http://127.0.0.1:1', { pollInterval: -5 }], /pollInterval/],
    [['http://127.0.0.1:1', { persist: 'yes' }], /persist/],
    [['http://127.0.0.1:1', { transport: 'carrier-pigeon' }], /transport/],
    [['http://127.0.0.1:1', { wsUrl: 'http://127.0.0.1:2' }], /wsUrl/],
    [['http://127.0.0.1:1', { sseUrl: 'ws://127.0.0.1:3' }], /sseUrl/],
    [['http://127.0.0.1:1', { pingInterval: Infinity }], /pingInterval/],
    [['http://127.0.0.1:1', { pingTimeout: 0 }], /pingTimeout/],
    [['http://127.0.0.1:1', { timeout: -1 }], /timeout/],
    [['http://127.0.0.1:1', { timeout: 'soon' }], /timeout/],
    [['http://127.0.0.1:1', { timeout: { connect: 'x' } }], /timeout\.connect/],
    [['http://127.0.0.1:1', { timeout: { total: 5 } }], /timeout.*total/],
    [['http://127.0.0.1:1', { probeInterval: '1s' }], /probeInterval/],
    [['http://127.0.0.1:1', { tokn: 'x' }], /unknown option/],
    [['http://127.0.0.1:1', { storage: {} }], /storage\.get/],
    [['http://127.0.0.1:1', null], /options/],
  ]
  for (const [args, message] of cases) {
    assert.throws(() => createSyncEngine(...args), (e) => e.code === 'ERR_SYNC_INVALID_ARG' && message.test(e.message), JSON.stringify(args))
  }
})

test('bad write arguments reject with typed errors and queue nothing', async () => {
  const e = createSyncEngine('http://127.0.0.1:1', { persist: false })
  await assert.rejects(e.insert('Todo', 'not an object'), { code: 'ERR_SYNC_INVALID_ARG' })
  await assert.rejects(e.insert('Todo', JSON.parse('{"__proto__": {"polluted": true}}')), { code: 'ERR_SYNC_INVALID_ARG' })
  await assert.rejects(e.insert('no spaces', {}), { code: 'ERR_SYNC_INVALID_ARG' })
  await assert.rejects(e.update('Todo', 'a/b', { x: 1 }), { code: 'ERR_SYNC_INVALID_ARG' })
  await assert.rejects(e.update('Todo', 'abc', {}), { code: 'ERR_SYNC_INVALID_ARG' })
  assert.deepEqual(e.mutations.list(), [])
  assert.throws(() => e.store.list(5), { code: 'ERR_SYNC_INVALID_ARG' })
  assert.throws(() => e.on('nope', () => {}), { code: 'ERR_SYNC_INVALID_ARG' })
  // realtime calls: bad arguments throw; without a socket nothing is sent and nothing queues
  assert.throws(() => e.subscribeCrdt('Doc', 42), { code: 'ERR_SYNC_INVALID_ARG' })
  assert.throws(() => e.subscribeCrdt('bad name', 'x'), { code: 'ERR_SYNC_INVALID_ARG' })
  assert.throws(() => e.publishTopic('', {}), { code: 'ERR_SYNC_INVALID_ARG' })
  assert.throws(() => e.onTopic('t', 'not a function'), { code: 'ERR_SYNC_INVALID_ARG' })
  assert.throws(() => e.onBinaryFrame(null), { code: 'ERR_SYNC_INVALID_ARG' })
  assert.equal(e.publishTopic('t', { a: 1 }), false)
  e.setPresence({ here: true })
  assert.deepEqual(e.presence, [])
  assert.equal(e.connection.state, 'offline')
  assert.equal(e.connected, false)
  await e.close()
  await assert.rejects(e.insert('Todo', {}), { code: 'ERR_SYNC_CLOSED' })
  await assert.rejects(e.start(), { code: 'ERR_SYNC_CLOSED' })
})

test('arguments are checked where they can be named: NaN, a numeric id, null data, an empty dbPath', async () => {
  const e = createSyncEngine('http://127.0.0.1:1', { persist: false })
  const refused = [
    [() => e.insert('Todo', { title: NaN }), /data\.title must be a finite number, got NaN/],
    [() => e.insert('Todo', { tags: [1, Infinity] }), /data\.tags\[1\] must be a finite number/],
    [() => e.insert('Todo', { n: 10n }), /data\.n must be JSON, got bigint/],
    [() => e.insert('Todo', null), /data must be an object, got null/],
    [() => e.update('Todo', 5, { title: 'x' }), /id must be a string, got number/],
    [() => e.update('Todo', 'a', null), /patch must be an object, got null/],
    [() => e.delete(7, 'a'), /entity must be a string, got number/],
    [() => insert('http://127.0.0.1:1', 'Todo', null), /data must be an object, got null/],
    [() => fetchById('http://127.0.0.1:1', 'Todo', 5), /id must be a string, got number/],
  ]
  for (const [call, message] of refused) {
    await assert.rejects(call(), (err) => err.code === 'ERR_SYNC_INVALID_ARG' && message.test(err.message), String(message))
  }
  assert.deepEqual(e.mutations.list(), [], 'nothing refused was queued')
  assert.throws(() => createSyncEngine('http://127.0.0.1:1', { dbPath: '' }), { code: 'ERR_SYNC_INVALID_ARG', message: /dbPath/ })
  await e.close()
})

test('a Date is written as its ISO-8601 string, as JSON.stringify writes it', async () => {
  const srv = await startDevserver()
  try {
    const at = new Date(Date.UTC(2026, 0, 2, 3, 4, 5))
    const e = createSyncEngine(srv.url, { persist: false })
    await e.start()
    const id = await e.insert('Todo', { title: at, done: false })
    assert.equal(e.store.get('Todo', id).title, '2026-01-02T03:04:05.000Z')
    await e.close()
    const direct = await insert(srv.url, 'Todo', { title: at, done: true })
    const rows = await fetchList(srv.url, 'Todo')
    assert.deepEqual(rows.map((r) => r.title), ['2026-01-02T03:04:05.000Z', '2026-01-02T03:04:05.000Z'])
    assert.equal((await fetchById(srv.url, 'Todo', direct.id)).title, '2026-01-02T03:04:05.000Z')
  } finally {
    await srv.stop()
  }
})

test('a file that is not ours is refused with ERR_SYNC_CORRUPT', async () => {
  const dbPath = path.join(tempDir(), 'foreign.db')
  require('node:fs').writeFileSync(dbPath, 'not a database at all, but long enough to have a header of some kind '.repeat(3))
  const e = createSyncEngine('http://127.0.0.1:1', { dbPath })
  await assert.rejects(e.start(), { code: 'ERR_SYNC_CORRUPT' })
  await e.close()
})

test('direct calls hit the server and throw typed errors', async () => {
  const srv = await startDevserver()
  try {
    const { id } = await insert(srv.url, 'Todo', { title: 'direct', done: false })
    assert.equal(id.length, 40)
    await update(srv.url, 'Todo', id, { done: true })
    assert.equal((await fetchById(srv.url, 'Todo', id)).done, 1)
    assert.equal((await fetchList(srv.url, 'Todo')).length, 1)
    assert.deepEqual(await callFn(srv.url, 'echo', { a: 1 }), { a: 1 })
    await remove(srv.url, 'Todo', id)
    assert.equal(await fetchById(srv.url, 'Todo', id), null)
    await assert.rejects(insert(srv.url, 'Todo', { done: false }), (e) => e.code === 'ERR_SYNC_REJECTED' && e.status === 400 && e.serverCode === 'INSERT_FAILED')
    await assert.rejects(remove(srv.url, 'Todo', id), { code: 'ERR_SYNC_NOT_FOUND' })
    await assert.rejects(callFn(srv.url, 'missing'), { code: 'ERR_SYNC_NOT_FOUND' })
    await assert.rejects(fetchList('http://127.0.0.1:1', 'Todo'), { code: 'ERR_SYNC_NETWORK' })
    await assert.rejects(fetchList(srv.url, 'Todo', { token: 7 }), { code: 'ERR_SYNC_INVALID_ARG' })
  } finally {
    await srv.stop()
  }
})

/** A server that accepts connections and never answers. */
async function silentServer() {
  const sockets = new Set()
  const server = net.createServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const url = `http://127.0.0.1:${server.address().port}`
  const stop = () => {
    for (const s of sockets) s.destroy()
    return new Promise((r) => server.close(r))
  }
  return { url, stop }
}

test('a server that never answers is given up on within the timeout, and a signal abandons a call', { timeout: 30000 }, async () => {
  const srv = await silentServer()
  try {
    const timedOut = (err) => err instanceof SyncError && err.code === 'ERR_SYNC_NETWORK' && /no answer within 0\.3 s/.test(err.message)
    await assert.rejects(fetchList(srv.url, 'Todo', { timeout: 300 }), timedOut)
    await assert.rejects(getServerData(srv.url, ['Todo'], { timeout: { connect: 1000, request: 300 } }), timedOut)
    // start() resolves offline, and says why
    const e = createSyncEngine(srv.url, { persist: false, transport: 'poll', timeout: 300 })
    const errors = []
    e.on('error', (err) => errors.push(err))
    await e.start()
    await eventually('the timeout reported', () => errors.some(timedOut)) // events reach JS a turn after the state they tell of
    assert.equal(e.status.lastError.code, 'ERR_SYNC_NETWORK')
    await e.close({ flush: false })
    // a signal: its reason, as fetch gives it
    const controller = new AbortController()
    const call = getServerData(srv.url, ['Todo'], { signal: controller.signal })
    controller.abort()
    await assert.rejects(call, { name: 'AbortError' })
    await assert.rejects(fetchList(srv.url, 'Todo', { signal: AbortSignal.abort() }), { name: 'AbortError' })
    await assert.rejects(fetchList(srv.url, 'Todo', { signal: 5 }), { code: 'ERR_SYNC_INVALID_ARG', message: /signal/ })
  } finally {
    await srv.stop()
  }
})

test('tokens never appear in errors', async () => {
  const token = 'pylon_secret_token_value_0123456789'
  const e = createSyncEngine('http://127.0.0.1:1', { persist: false, token })
  const errors = []
  e.on('error', (err) => errors.push(err))
  await e.start()
  await e.sync().catch((err) => errors.push(err))
  assert.ok(errors.length > 0)
  for (const err of errors) assert.ok(!String(err.message).includes(token) && !String(err.stack).includes(token))
  assert.ok(!e.status.lastError.message.includes(token))
  await e.close()
})

test('storage adapters: default, write-through, token key per app', () => {
  const s = defaultStorage()
  s.set('k', 'v')
  assert.equal(s.get('k'), 'v')
  s.remove('k')
  assert.equal(s.get('k'), null)
  const writes = []
  const w = createWriteThroughStorage({ a: '1' }, (k, v) => writes.push([k, v]))
  assert.equal(w.get('a'), '1')
  w.set('pylon:app:token', 't')
  w.remove('a')
  assert.deepEqual(writes, [['pylon:app:token', 't'], ['a', null]])
  assert.throws(() => createWriteThroughStorage({}, 'nope'), { code: 'ERR_SYNC_INVALID_ARG' })
})

test('ESM import exposes the same API', async () => {
  const esm = await import('../sync.mjs')
  assert.equal(esm.createSyncEngine, sync.createSyncEngine)
  assert.equal(esm.default, sync)
})

test('an unref’d engine that is never closed does not keep the process alive (lifetime.test.js: the rest)', () => {
  const script = `
    const { createSyncEngine } = require(${JSON.stringify(path.join(__dirname, '..', 'sync.js'))})
    const e = createSyncEngine('http://127.0.0.1:1', { persist: false, pollInterval: 50 }).unref()
    e.store.subscribe(() => {})
    e.start().then(() => console.log('started'))
  `
  const r = spawnSync(process.execPath, ['-e', script], { timeout: 20000, encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  assert.match(r.stdout, /started/)
})

test('works in worker threads that are terminated mid-sync', async () => {
  const { Worker } = require('node:worker_threads')
  const srv = await startDevserver()
  try {
    await srv.control('seed', { entity: 'Todo', count: 500, data: { title: 't{i}', done: false } })
    const code = `
      const { parentPort, workerData } = require('node:worker_threads')
      const { createSyncEngine } = require(workerData.sync)
      const e = createSyncEngine(workerData.url, { persist: false, pollInterval: 10 })
      e.start().then(() => parentPort.postMessage(e.store.list('Todo').length))
    `
    const counts = await Promise.all(
      [0, 1, 2].map(
        () =>
          new Promise((resolve, reject) => {
            const w = new Worker(code, { eval: true, workerData: { url: srv.url, sync: path.join(__dirname, '..', 'sync.js') } })
            w.once('message', (n) => {
              w.terminate().then(() => resolve(n))
            })
            w.once('error', reject)
          }),
      ),
    )
    assert.deepEqual(counts, [500, 500, 500])
  } finally {
    await srv.stop()
  }
})
