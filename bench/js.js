'use strict'
// JS-side benchmarks (release addon): reading from the store next to a plain
// Map read in the same run; cold start to the first store.list next to
// JSON.parse of the same rows; a local write reaching 1, 10 and 100
// listeners; the JS thread while a burst of remote changes is applied; and
// an import script's bulk inserts next to a bare client posting them.
// `node bench/js.js [rows] [cold-start rows]`; part of `npm run bench`.
const { performance, monitorEventLoopDelay } = require('node:perf_hooks')
const { createSyncEngine } = require('../sync.js')
const { startDevserver, startPylon, api } = require('../__test__/helpers.js')

const rows = Number(process.argv[2] || 10000)
const coldRows = Number(process.argv[3] || 100000)
const tmp = (name) => require('node:path').join(require('node:os').tmpdir(), `bench-${process.pid}-${name}.db`)
const percentile = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.round((xs.length - 1) * p)]
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function perCall(n, fn) {
  for (let i = 0; i < Math.min(n, 10000); i++) fn(i) // warm up
  const t = performance.now()
  for (let i = 0; i < n; i++) fn(i)
  return ((performance.now() - t) * 1000) / n // µs
}

async function main() {
  const srv = await startDevserver()
  const out = []
  try {
    await srv.control('seed', { entity: 'Todo', count: rows, data: { title: 'row {i} ' + 'x'.repeat(150), done: false } })
    const e = createSyncEngine(srv.url, { persist: false, transport: 'poll', pollInterval: 3600000 })
    await e.start()
    const list = e.store.list('Todo')
    const ids = list.map((r) => r.id)
    const map = new Map(list.map((r) => [r.id, r]))
    const mapGet = perCall(1e6, (i) => map.get(ids[i % ids.length]))
    const get = perCall(1e6, (i) => e.store.get('Todo', ids[i % ids.length]))
    const listUs = perCall(1e5, () => e.store.list('Todo'))
    out.push(['6 store.get, unchanged entity', `${get.toFixed(3)} µs`, `Map.get ${mapGet.toFixed(3)} µs`, `${(get / mapGet).toFixed(1)}× the Map (target ≤ 0.5 µs)`])
    out.push([`6 store.list, unchanged ${rows}-row entity`, `${listUs.toFixed(3)} µs`, '—', 'target ≤ 5 µs'])
    await e.close()

    // 8: remote changes over WebSocket, applied and persisted, with a
    // listener that reads the store; how late the event loop runs is watched
    // (and, as the limit, how late it runs driving the same stream with no
    // engine). First a steady stream, then one burst larger than the
    // dev server's 10,000-event log (the engine must resync and swap in a
    // fresh snapshot).
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'bench' })).body.token
    const f = createSyncEngine(srv.url, { persist: true, dbPath: tmp('burst'), token, transport: 'websocket', pollInterval: 3600000 })
    await f.start()
    while (!f.connected) await sleep(5)
    let notified = 0
    let slowestRead = 0
    f.store.subscribe(() => {
      notified++
      const t = performance.now()
      f.store.list('Todo')
      slowestRead = Math.max(slowestRead, performance.now() - t)
    })
    // how late the event loop runs, as a histogram (ms)
    const lateness = async (run) => {
      const h = monitorEventLoopDelay({ resolution: 1 })
      h.enable()
      const r = await run()
      h.disable()
      return { ...r, worst: h.max / 1e6, p99: h.percentile(99) / 1e6 }
    }
    const seed = (size) => srv.control('seed', { entity: 'Todo', count: size, data: { title: 'change {i}', done: false } })
    const drive = async (batches, size, every) => {
      const t = performance.now()
      for (let i = 0; i < batches; i++) {
        const due = t + i * every
        if (performance.now() < due) await sleep(due - performance.now())
        await seed(size)
      }
      return t
    }
    const stream = (batches, size, every) =>
      lateness(async () => {
        notified = 0
        slowestRead = 0
        const before = f.store.list('Todo').length
        const t = await drive(batches, size, every)
        while (f.store.list('Todo').length < before + batches * size) await sleep(1)
        return { rate: Math.round((batches * size) / ((performance.now() - t) / 1000)), notified, slowestRead }
      })
    const late = (r) => `event loop late at most ${r.worst.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms`
    // the limit: the same steady stream driven with no engine attached
    await f.stop()
    const bare = await lateness(async () => {
      await drive(100, 100, 10)
      return {}
    })
    await f.start()
    while (!f.connected) await sleep(5)
    await sleep(200)
    const steady = await stream(100, 100, 10)
    out.push(['8 sustained apply: 10,000 remote changes sent at 10,000/s (100 every 10 ms), persisted, a listener reading the store', `${steady.rate} changes/s applied (${steady.notified} notifications); longest store.list ${steady.slowestRead.toFixed(1)} ms`, `same stream, no engine: ${late(bare)}`, `${late(steady)} (target < 16 ms)`])
    const fast = await stream(40, 500, 0)
    out.push(['8 sustained apply: 20,000 remote changes sent as fast as the server takes them', `${fast.rate} changes/s applied (${fast.notified} notifications); longest store.list ${fast.slowestRead.toFixed(1)} ms`, '—', `${late(fast)} (target < 16 ms)`])
    const burst = await stream(1, 20000, 0)
    out.push(['8 one burst of 20,000 changes, beyond the 10,000-event log (resync: fresh snapshot swapped in)', `${burst.rate} changes/s applied (${burst.notified} notifications); longest store.list ${burst.slowestRead.toFixed(1)} ms`, '—', late(burst)])
    await f.close()

    // 5: reopen a persisted replica, time to the first store.list
    const have = (await (await fetch(`${srv.url}/__control/state`)).json()).rows.Todo
    await srv.control('seed', { entity: 'Todo', count: Math.max(0, coldRows - have), data: { title: 'row {i} ' + 'x'.repeat(150), done: false } })
    const dbPath = tmp('cold')
    const b = createSyncEngine(srv.url, { dbPath, transport: 'poll', pollInterval: 3600000 })
    await b.start()
    const text = b._native.listJson('Todo')
    await b.close()
    const p0 = performance.now()
    JSON.parse(text)
    const parse = performance.now() - p0
    // as it is, and with the rows parsed while the replica loads (`preload`), taking turns
    const colds = { plain: [], preload: [] }
    for (let i = 0; i < 3; i++) {
      for (const mode of ['plain', 'preload']) {
        const t0 = performance.now()
        const c = createSyncEngine(srv.url, { dbPath, transport: 'poll', pollInterval: 3600000, preload: mode === 'preload' && ['Todo'] })
        await c.start()
        const coldList = c.store.list('Todo')
        colds[mode].push(performance.now() - t0)
        if (coldList.length !== coldRows) throw new Error(`cold start listed ${coldList.length} rows`)
        await c.close()
      }
    }
    for (const [mode, times] of Object.entries(colds)) {
      const cold = percentile(times, 0.5)
      const how = mode === 'preload' ? ", preload: ['Todo']" : ''
      out.push([`5 cold start, ${coldRows}-row replica, to the first store.list${how}`, `${cold.toFixed(0)} ms (median of 3; ${Math.min(...times).toFixed(0)}–${Math.max(...times).toFixed(0)})`, `JSON.parse of the same rows ${parse.toFixed(0)} ms`, `${(cold / parse).toFixed(1)}× the parse (target ≤ 150 ms)`])
    }

    // a local write reaching every listener, with 1, 10 and 100 listeners
    for (const n of [1, 10, 100]) {
      const l = createSyncEngine(srv.url, { dbPath: tmp(`listeners-${n}`), transport: 'poll', pollInterval: 3600000 })
      let heard = 0
      let last = 0
      for (let i = 0; i < n; i++) {
        l.store.subscribe(() => {
          l.store.get('Todo', 'x')
          heard++
          last = performance.now()
        })
      }
      const lat = []
      for (let i = 0; i < 1000; i++) {
        heard = 0
        const t = performance.now()
        await l.insert('Todo', { title: 'l' + i, done: false })
        while (heard < n) await new Promise((r) => setImmediate(r))
        lat.push(last - t)
      }
      await l.close()
      out.push([`3 local insert → all of ${n} listener(s) called`, `p50 ${percentile(lat, 0.5).toFixed(3)} ms, p99 ${percentile(lat, 0.99).toFixed(3)} ms`, '—', 'growth with listeners'])
    }

    out.push(await durableWrites())
    out.push(await bulkWrites(100000))
  } finally {
    await srv.stop()
    for (const name of ['cold', 'burst', 'listeners-1', 'listeners-10', 'listeners-100', 'writes', 'bulk']) {
      for (const ext of ['', '-wal', '-shm']) require('node:fs').rmSync(tmp(name) + ext, { force: true })
    }
  }
  console.log('| # what | measured | limit (same run) | ratio / target |')
  console.log('|---|---|---|---|')
  for (const r of out) console.log(`| ${r.join(' | ')} |`)
}

/**
 * 3 as a new user meets it: awaited inserts on an engine syncing with the
 * real pylon over WebSocket (each write sent, acknowledged and echoed while
 * the next is made). The limit, in the same run: one-row commits of a raw
 * SQLite file in WAL mode with synchronous=FULL (Python's sqlite3).
 */
async function durableWrites() {
  const what = '3 awaited insert as JS sees it, 2,000 on an engine syncing with the real pylon'
  const srv = await startPylon()
  if (!srv) return [what, 'skipped: pylon is not installed', '—', '—']
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'writer' })).body.token
    const e = createSyncEngine(srv.url, { dbPath: tmp('writes'), token, transport: 'websocket' })
    await e.start()
    while (!e.connected) await sleep(5)
    const lat = []
    for (let i = 0; i < 2000; i++) {
      const t = performance.now()
      await e.insert('Todo', { title: 'w' + i, done: false })
      lat.push(performance.now() - t)
    }
    await e.caughtUp()
    await e.close()
    const raw = rawCommits(2000)
    const p99 = percentile(lat, 0.99)
    return [
      what,
      `p50 ${percentile(lat, 0.5).toFixed(3)} ms, p99 ${p99.toFixed(3)} ms`,
      `raw SQLite WAL synchronous=FULL one-row commit: p50 ${raw.p50.toFixed(3)} ms, p99 ${raw.p99.toFixed(3)} ms`,
      `p99 ${(p99 / raw.p99).toFixed(1)}× the raw commit's (target ≤ 2×)`,
    ]
  } finally {
    await srv.stop()
  }
}

/**
 * 9 from JavaScript: an import script's `await Promise.all(rows.map(insert))`
 * of `n` rows on a started admin engine (each on a fresh dev server), timed
 * to every promise made, every write durable and every write acknowledged,
 * with how late the event loop ran meanwhile. The limit, in the same run: a
 * bare client posting the same rows to `/api/batch`, 1,000 at a time.
 */
async function bulkWrites(n) {
  const admin = 'bench-admin'
  const made = Array.from({ length: n }, (_, i) => ({ title: 'b' + i, done: false }))
  let srv = await startDevserver(['--admin-token', admin])
  let bare
  try {
    const t = performance.now()
    for (let i = 0; i < n; i += 1000) {
      const operations = made.slice(i, i + 1000).map((data) => ({ op: 'insert', entity: 'Todo', data }))
      const res = await fetch(`${srv.url}/api/batch`, {
        method: 'POST',
        headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
        body: JSON.stringify({ operations }),
      })
      if (!res.ok) throw new Error(`batch: ${res.status}`)
      await res.json()
    }
    bare = performance.now() - t
  } finally {
    await srv.stop()
  }
  srv = await startDevserver(['--admin-token', admin])
  try {
    const e = createSyncEngine(srv.url, { dbPath: tmp('bulk'), token: admin, transport: 'poll', pollInterval: 20 })
    await e.start()
    const delay = monitorEventLoopDelay({ resolution: 1 })
    delay.enable()
    const t = performance.now()
    const writes = made.map((data) => e.insert('Todo', data))
    const calls = performance.now() - t
    await Promise.all(writes)
    const durable = performance.now() - t
    while (e.status.pending > 0) await sleep(5)
    const acked = performance.now() - t
    delay.disable()
    await e.close()
    const rate = (ms) => Math.round(n / (ms / 1000))
    return [
      `9 admin bulk inserts from JavaScript, ${n} made at once (Promise.all) on a started engine`,
      `${rate(acked)} rows/s made → acknowledged; made in ${calls.toFixed(0)} ms, all durable after ${durable.toFixed(0)} ms; event loop late at most ${(delay.max / 1e6).toFixed(0)} ms`,
      `bare client posting the same rows to /api/batch, 1,000 a request: ${rate(bare)} rows/s`,
      `${Math.round((100 * bare) / acked)} % of the bare client`,
    ]
  } finally {
    await srv.stop()
  }
}

/** `n` one-row commits of a raw SQLite file (WAL, synchronous=FULL), timed one by one. */
function rawCommits(n) {
  const script = `
import sqlite3, sys, time, tempfile, os, json
d = tempfile.mkdtemp()
c = sqlite3.connect(os.path.join(d, 'raw.db'), isolation_level=None)
c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=FULL')
c.execute('CREATE TABLE t (id TEXT PRIMARY KEY, data TEXT)')
lat = []
for i in range(${n}):
    t = time.perf_counter()
    c.execute('BEGIN'); c.execute('INSERT INTO t VALUES (?, ?)', ('id%d' % i, '{"title":"w%d","done":false}' % i)); c.execute('COMMIT')
    lat.append((time.perf_counter() - t) * 1000)
c.close()
for f in os.listdir(d): os.remove(os.path.join(d, f))
os.rmdir(d)
print(json.dumps(lat))`
  const lat = JSON.parse(require('node:child_process').execFileSync('python3', ['-c', script], { encoding: 'utf8' }))
  return { p50: percentile(lat, 0.5), p99: percentile(lat, 0.99) }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
