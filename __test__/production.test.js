'use strict'
// The engine against the real `pylon` started as in production: its request
// limits apply (PROTOCOL §2.5: 600 a minute per IP, and 100 a minute per
// user, or per IP when anonymous, from a limiter whose 429 says nothing of
// when to come back), and only the admin token mints sessions. Every request
// goes through a counting proxy, so what the engine spends is seen, and any
// 429 with it. Skipped without `pylon`; required under PYLON_REQUIRED.
//
// PROD_POLL_SECONDS sets how long the polling engine runs: 70 by default,
// more than one limiter window; the five-minute run (300) is recorded in
// RELIABILITY.md.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { createSyncEngine } = require('../sync.js')
const { startPylon, startFaultProxy, api, eventually } = require('./helpers.js')

const POLL_SECONDS = Number(process.env.PROD_POLL_SECONDS || 70)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
/** Engines a test started, closed whatever its outcome (a started engine keeps the process alive). */
const engines = []

/** Production pylon behind a counting proxy; sessions minted by the admin. */
async function production() {
  const srv = await startPylon({ production: true })
  if (!srv) return null
  const proxy = await startFaultProxy(srv.url)
  const port = Number(new URL(srv.url).port)
  const login = async (user) => {
    const res = await api(srv.url, 'POST', '/api/auth/session', { user_id: user }, srv.adminToken)
    assert.equal(res.status, 201, `minting a session: ${JSON.stringify(res.body)}`)
    return res.body.token
  }
  const stop = async () => {
    await proxy.close()
    await srv.stop()
  }
  return { srv, proxy, login, stop, wsUrl: `ws://127.0.0.1:${port + 1}`, sseUrl: `http://127.0.0.1:${port + 2}` }
}

/** Requests the proxy passed on since `from`, by route, and the 429s among them. */
function spent(proxy, from = 0) {
  const seen = proxy.log.slice(from)
  const byRoute = {}
  for (const r of seen) {
    const route = `${r.method} ${r.path.replace(/\/[0-9a-f]{40}$/, '/:id')}`
    byRoute[route] = (byRoute[route] ?? 0) + 1
  }
  return { total: seen.length, limited: seen.filter((r) => r.status === 429).length, byRoute }
}

/** The requests since `from` in order, runs of one route and status folded: `GET /health 200 ×2, …`. */
function sequence(proxy, from = 0) {
  const runs = []
  for (const r of proxy.log.slice(from)) {
    const what = `${r.method} ${r.path.replace(/\?.*$/, '')} ${r.status}`
    const last = runs[runs.length - 1]
    if (last && last.what === what) last.n++
    else runs.push({ what, n: 1 })
  }
  return runs.map((r) => (r.n > 1 ? `${r.what} ×${r.n}` : r.what)).join(', ')
}

test('production pylon: this process is refused a session without the admin token', { timeout: 90000 }, async (t) => {
  const p = await production()
  if (!p) return t.skip('pylon is not installed')
  try {
    const res = await api(p.srv.url, 'POST', '/api/auth/session', { user_id: 'mallory' })
    assert.equal(res.status, 403, 'the server is not in production mode')
  } finally {
    await p.stop()
  }
})

test('production pylon: a fresh bootstrap of 25,000 rows waits out the request limit it meets, then another user’s write arrives live', { timeout: 240000 }, async (t) => {
  const p = await production()
  if (!p) return t.skip('pylon is not installed')
  try {
    // 25 admin batches of 1,000
    for (let i = 0; i < 25; i++) {
      const operations = Array.from({ length: 1000 }, (_, j) => ({ op: 'insert', entity: 'Todo', data: { title: `row${i * 1000 + j}`, done: j % 2 === 0 } }))
      const res = await api(p.srv.url, 'POST', '/api/batch', { operations }, p.srv.adminToken)
      assert.equal(res.body.succeeded, 1000, JSON.stringify(res.body).slice(0, 300))
    }
    const [alice, bob] = [await p.login('alice'), await p.login('bob')]
    const errors = []
    const e = createSyncEngine(p.proxy.url, { persist: false, token: alice, wsUrl: p.wsUrl, sseUrl: p.sseUrl })
    engines.push(e)
    e.on('error', (err) => errors.push(`${err.code}: ${err.message}`))
    await e.start()
    // the limit met by the bootstrap is waited out inside start()
    await eventually('the bootstrap to complete', () => e.status.cursor > 0 && e.status.lastError === null, 90000)
    const bootstrap = spent(p.proxy)
    t.diagnostic(`bootstrap: ${bootstrap.total} requests ${JSON.stringify(bootstrap.byRoute)}`)
    t.diagnostic(`in order: ${sequence(p.proxy)}; errors: ${JSON.stringify(errors)}`)
    assert.equal(e.store.list('Todo').length, 25000)
    assert.equal(e.store.list('Todo').filter((r) => r.done === true).length, 12500)
    // 13 pages of 2,000 rows and one request per other entity; `Note` is
    // under a row policy, which the server will not list: only the log
    // fills it, read from 0 in pages of 100 (10,000 events retained at most).
    // That crosses the 100 a minute of one user: the limiter's 429 carries no
    // Retry-After, and the engine waits for its window, then asks for the
    // refused request again, wherever it was met: nothing is read twice
    assert.ok(bootstrap.byRoute['POST /api/query/Todo'] <= 14, JSON.stringify(bootstrap.byRoute))
    assert.ok(bootstrap.total <= 130, `the bootstrap spent ${bootstrap.total} requests`)
    assert.ok(bootstrap.limited <= 1, `${bootstrap.limited} requests were refused with 429`)
    const refused = p.proxy.log.findIndex((r) => r.status === 429)
    if (refused >= 0 && refused + 1 < p.proxy.log.length) {
      const waited = p.proxy.log[refused + 1].at - p.proxy.log[refused].at
      assert.ok(waited >= 55000, `asked again ${waited} ms after a 429`)
    }

    await eventually('the stream to open', () => e.connection.state === 'open' && e.connection.transport === 'websocket')
    const from = p.proxy.log.length
    const sent = Date.now()
    const res = await api(p.srv.url, 'POST', '/api/entities/Todo', { title: 'from bob', done: false }, bob)
    assert.equal(res.status, 201)
    // live: by the stream, not by the pull every 30 s that backs it up
    await eventually('bob’s write to arrive', () => e.store.get('Todo', res.body.id)?.title === 'from bob', 10000)
    t.diagnostic(`bob's write arrived after ${Date.now() - sent} ms, with ${spent(p.proxy, from).total} requests of ours`)
    // a limit waited out is no error
    assert.deepEqual(errors, [])
  } finally {
    for (const e of engines.splice(0)) await e.close({ flush: false })
    await p.stop()
  }
})

test(`production pylon: a polling engine runs ${POLL_SECONDS} s without a 429 and keeps up`, { timeout: (POLL_SECONDS + 120) * 1000 }, async (t) => {
  const p = await production()
  if (!p) return t.skip('pylon is not installed')
  try {
    const [carol, dave] = [await p.login('carol'), await p.login('dave')]
    const errors = []
    const e = createSyncEngine(p.proxy.url, { persist: false, token: carol, transport: 'poll' })
    engines.push(e)
    e.on('error', (err) => errors.push(err.code))
    await e.start()
    const started = Date.now()
    let writes = 0
    while (Date.now() - started < POLL_SECONDS * 1000) {
      // another user writes every 10 s, and this engine writes too
      const res = await api(p.srv.url, 'POST', '/api/entities/Todo', { title: `dave${writes}`, done: false }, dave)
      assert.equal(res.status, 201)
      await e.insert('Todo', { title: `carol${writes}`, done: false })
      writes++
      await eventually(`dave's write ${writes} to arrive`, () => e.store.get('Todo', res.body.id) !== null, 10000)
      assert.equal(e.status.rateLimitedUntil, null)
      await sleep(10000)
    }
    await eventually('carol’s writes acknowledged', () => e.mutations.list().length === 0)
    const used = spent(p.proxy)
    const minutes = (Date.now() - started) / 60000
    t.diagnostic(`${used.total} requests in ${minutes.toFixed(1)} min (${(used.total / minutes).toFixed(0)}/min): ${JSON.stringify(used.byRoute)}`)
    assert.equal(used.limited, 0, `429s: ${JSON.stringify(used.byRoute)}`)
    assert.deepEqual(errors.filter((c) => c !== 'ERR_SYNC_NETWORK'), [])
    assert.equal(e.store.list('Todo').length, 2 * writes)
  } finally {
    for (const e of engines.splice(0)) await e.close({ flush: false })
    await p.stop()
  }
})
