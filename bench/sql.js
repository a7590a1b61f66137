'use strict'
// SQL over the replica (release addon), each figure next to its limit in
// the same run: a selective query, a sorted page and an aggregate over a
// 100,000-row replica, with and without the `indexes` option, next to
// store.list().filter/sort in JS; a remote change reaching a watch
// listener next to the plain store notification of the same change; and
// how late the event loop runs while queries run, next to it idle.
// `node bench/sql.js [rows]`; part of `npm run bench`.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { performance, monitorEventLoopDelay } = require('node:perf_hooks')
const { createSyncEngine } = require('../sync.js')
const { startDevserver, api } = require('../__test__/helpers.js')

const rows = Number(process.argv[2] || 100000)
const USERS = 100
const percentile = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.round((xs.length - 1) * p)]
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const ms = (x) => `${x < 1 ? x.toFixed(3) : x.toFixed(1)} ms`

async function timed(n, fn) {
  for (let i = 0; i < Math.min(5, n); i++) await fn(i) // warm up
  const xs = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    await fn(i)
    xs.push(performance.now() - t)
  }
  return { p50: percentile(xs, 0.5), p99: percentile(xs, 0.99) }
}

async function main() {
  const srv = await startDevserver()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-sql-'))
  const dbPath = path.join(dir, 'replica.db')
  const out = []
  try {
    // 100 users, a tenth of each one's rows open
    const each = rows / USERS
    for (let u = 0; u < USERS; u++) {
      await srv.control('seed', { entity: 'Todo', count: each * 0.9, data: { title: `row {i} of u${u} ` + 'x'.repeat(100), done: true, userId: `u${u}` } })
      await srv.control('seed', { entity: 'Todo', count: each * 0.1, data: { title: `open {i} of u${u}`, done: false, userId: `u${u}` } })
    }
    const reader = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'reader' })).body.token
    const opts = { dbPath, token: reader, transport: 'websocket', pollInterval: 3600000 }
    const queries = [
      {
        name: `selective: one user's open rows (${each * 0.1} of ${rows})`,
        sql: 'SELECT * FROM Todo WHERE userId = ? AND done = 0',
        params: (i) => [`u${i % USERS}`],
        js: (e, i) => e.store.list('Todo').filter((r) => r.userId === `u${i % USERS}` && !r.done),
        n: 500,
      },
      {
        name: 'sorted page: the first 20 open rows by title',
        sql: 'SELECT * FROM Todo WHERE done = 0 ORDER BY title LIMIT 20',
        params: () => [],
        js: (e) => e.store.list('Todo').filter((r) => !r.done).sort((a, b) => (a.title < b.title ? -1 : a.title > b.title ? 1 : 0)).slice(0, 20),
        n: 50,
      },
      {
        name: 'aggregate: open rows per user',
        sql: 'SELECT userId, count(*) AS n FROM Todo WHERE done = 0 GROUP BY userId',
        params: () => [],
        js: (e) => {
          const n = new Map()
          for (const r of e.store.list('Todo')) if (!r.done) n.set(r.userId, (n.get(r.userId) ?? 0) + 1)
          return n
        },
        n: 20,
      },
    ]
    const measured = {}
    for (const indexes of [undefined, { Todo: [['done', 'userId'], ['done', 'title']] }]) {
      const e = createSyncEngine(srv.url, { ...opts, indexes })
      await e.start()
      if (e.store.list('Todo').length !== rows) throw new Error(`${e.store.list('Todo').length} rows`)
      for (const q of queries) {
        const got = await e.query(q.sql, q.params(0))
        const want = q.js(e, 0)
        if (got.length !== (want.size ?? want.length)) throw new Error(`${q.name}: ${got.length} rows, JS ${want.size ?? want.length}`)
        const sql = await timed(q.n, (i) => e.query(q.sql, q.params(i)))
        const js = await timed(q.n, (i) => q.js(e, i))
        measured[q.name] = { ...measured[q.name], [indexes ? 'indexed' : 'plain']: sql, js }
      }
      await e.close()
    }
    for (const q of queries) {
      const { plain, indexed, js } = measured[q.name]
      out.push([
        `${q.name}, ${rows} rows`,
        `indexed p50 ${ms(indexed.p50)} (p99 ${ms(indexed.p99)}); without the index p50 ${ms(plain.p50)}`,
        `store.list() + JS p50 ${ms(js.p50)} (p99 ${ms(js.p99)})`,
        `${(js.p50 / indexed.p50).toFixed(1)}× faster than JS${q.name.startsWith('selective') ? ' (target p50 ≤ 2 ms)' : ''}`,
      ])
    }

    // a remote change: the store notification, then the live query's listener
    const e = createSyncEngine(srv.url, { ...opts, indexes: { Todo: [['done', 'userId']] } })
    await e.start()
    while (!e.connected) await sleep(5)
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'writer' })).body.token
    let storeAt = 0
    let watchAt = 0
    e.store.subscribe(() => (storeAt = performance.now()))
    const unwatch = e.watch('SELECT id, title FROM Todo WHERE userId = ? AND done = 0', ['u0'], () => (watchAt = performance.now()))
    await sleep(200)
    const behind = []
    const fromSend = []
    for (let i = 0; i < 200; i++) {
      storeAt = watchAt = 0
      const t = performance.now()
      await api(srv.url, 'POST', '/api/entities/Todo', { title: `live ${i}`, done: false, userId: 'u0' }, token)
      while (!storeAt || !watchAt) await new Promise((r) => setImmediate(r))
      behind.push(watchAt - storeAt)
      fromSend.push(watchAt - t)
    }
    unwatch()
    out.push([
      'watch: a remote change (WebSocket) → the live query\'s listener, after the store notification of the same change',
      `p50 ${ms(percentile(behind, 0.5))}, p99 ${ms(percentile(behind, 0.99))} after the notification (from the write: p50 ${ms(percentile(fromSend, 0.5))})`,
      'the store notification itself',
      'target ≤ 2 ms after it',
    ])

    // the JS thread while queries run: event loop lateness next to idle
    const lateness = async (run) => {
      const h = monitorEventLoopDelay({ resolution: 1 })
      h.enable()
      await run()
      h.disable()
      return { worst: h.max / 1e6, p99: h.percentile(99) / 1e6 }
    }
    const idle = await lateness(() => sleep(2000))
    let ran = 0
    const busy = await lateness(async () => {
      const end = performance.now() + 2000
      while (performance.now() < end) {
        await Promise.all([
          e.query('SELECT userId, count(*) AS n, max(title) AS t FROM Todo GROUP BY userId'),
          e.query("SELECT count(*) AS n FROM Todo WHERE title LIKE '%9%'"),
        ])
        ran += 2
      }
    })
    out.push([
      `event loop while ${ran} full-scan queries run over 2 s`,
      `late at most ${ms(busy.worst)}, p99 ${ms(busy.p99)}`,
      `idle: late at most ${ms(idle.worst)}, p99 ${ms(idle.p99)}`,
      'never blocked by a query',
    ])
    await e.close()
  } finally {
    await srv.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  console.log('| what | measured | limit (same run) | ratio / target |')
  console.log('|---|---|---|---|')
  for (const r of out) console.log(`| ${r.join(' | ')} |`)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
