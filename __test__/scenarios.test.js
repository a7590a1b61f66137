'use strict'
// Integration scenarios shared by the dev server and the real `pylon`
// (crate pylon-cli 0.3.23): what users rely on is proven against the real
// server, not only against our own. `.ci/run` installs pylon and requires it;
// elsewhere the real-server runs are reported as skipped.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { createSyncEngine, createWriteThroughStorage, fetchList, getServerData, SyncError } = require('../sync.js')
const { servers, api, eventually, tempDir, startFaultProxy } = require('./helpers.js')

const KILLS = Number(process.env.CRASH_KILLS || 100)
const BULK_KILLS = Number(process.env.CRASH_KILLS || 100) / 5
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function serverRows(srv, entity) {
  const r = await api(srv.url, 'GET', `/api/entities/${entity}`, undefined, srv.adminToken)
  assert.equal(r.status, 200)
  return r.body.data
}

const serverTodos = (srv) => serverRows(srv, 'Todo')
const isAuthError = (err) => err instanceof SyncError && err.code === 'ERR_SYNC_AUTH'

for (const server of servers()) {
  const scenario = (name, timeout, fn) =>
    test(`${server.name}: ${name}`, { timeout }, async (t) => {
      const srv = await server.start()
      if (!srv) return t.skip('pylon is not installed (bash .ci/run installs it)')
      try {
        await fn(srv)
      } finally {
        await srv.stop()
      }
    })

  scenario('25,000 rows, more than the 10,000-event log, all arrive', 180000, async (srv) => {
    for (let b = 0; b < 25; b++) {
      const operations = Array.from({ length: 1000 }, (_, i) => ({ op: 'insert', entity: 'Todo', data: { title: `t${b * 1000 + i}`, done: false } }))
      const r = await api(srv.url, 'POST', '/api/batch', { operations }, srv.adminToken)
      assert.equal(r.status, 200)
    }
    const e = createSyncEngine(srv.url, { persist: false, transport: 'poll' })
    await e.start()
    assert.equal(e.store.list('Todo').length, 25000)
    assert.equal(e.cursor, 25000)
    await e.close()
  })

  scenario('an optimistic insert becomes the server row; a rejection is kept failed', 60000, async (srv) => {
    const e = createSyncEngine(srv.url, { persist: false, pollInterval: 50 })
    await e.start()
    const temp = await e.insert('Todo', { title: 'real', done: false })
    // a label already taken: only the server can refuse it (unique)
    const label = `taken-${Math.random()}`
    await api(srv.url, 'POST', '/api/entities/Tag', { label })
    await e.insert('Tag', { label })
    await eventually('the insert to land and the bad one to fail', () => {
      const rows = e.store.list('Todo')
      return rows.length === 1 && rows[0].id.length === 40 && e.mutations.list()[0]?.status === 'failed'
    })
    const id = e.store.list('Todo')[0].id
    assert.equal(e.store.get('Todo', temp).id, id, 'the temporary id still finds its row')
    assert.equal(e.mutations.list()[0].errorCode, 'INSERT_FAILED')
    await e.update('Todo', id, { done: true })
    await e.delete('Todo', id)
    await eventually('update and delete on the server', async () => (await api(srv.url, 'GET', `/api/entities/Todo/${id}`)).status === 404)
    // the server applies the delete before its answer reaches the engine
    await eventually('both acknowledged, the refused insert kept', () => e.mutations.list().length === 1)
    assert.equal(e.mutations.list()[0].status, 'failed')
    await e.close()
  })

  scenario('identity flip under a row-level read policy', 60000, async (srv) => {
    const [alice, bob] = [await srv.login('alice'), await srv.login('bob')]
    await api(srv.url, 'POST', '/api/entities/Note', { body: 'alice secret', userId: 'alice' }, alice)
    await api(srv.url, 'POST', '/api/entities/Note', { body: 'bob note', userId: 'bob' }, bob)
    const storage = createWriteThroughStorage({ pylon_token: alice }, () => {})
    const e = createSyncEngine(srv.url, { persist: false, storage, pollInterval: 50 })
    await e.start()
    assert.deepEqual(e.store.list('Note').map((n) => n.body), ['alice secret'])
    storage.set('pylon_token', bob)
    assert.equal((await e.notifySessionChanged()).userId, 'bob')
    await eventually("bob's notes only", () => {
      const notes = e.store.list('Note')
      return notes.length === 1 && notes[0].body === 'bob note'
    })
    await e.close()
  })

  scenario('an admin engine sends its queued writes through /api/batch, with per-write outcomes', 120000, async (srv) => {
    const e = createSyncEngine(srv.url, { persist: false, token: srv.adminToken, transport: 'poll', pollInterval: 50 })
    const temps = []
    // queued before the manifest is known: one write the server refuses (a
    // label already taken), one the manifest rules out once it arrives
    const label = `taken-${Math.random()}`
    await api(srv.url, 'POST', '/api/entities/Tag', { label }, srv.adminToken)
    for (let i = 0; i < 3000; i++) {
      const [entity, data] = i === 1500 ? ['Tag', { label }] : i === 2000 ? ['Todo', { done: false }] : ['Todo', { title: `bulk${i}`, done: false }]
      temps.push(await e.insert(entity, data))
    }
    await e.update('Todo', temps[7], { title: 'renamed' })
    await e.start()
    await eventually('the queue to drain', () => e.mutations.list().every((m) => m.status === 'failed'), 60000)
    const failed = e.mutations.list()
    assert.equal(failed.length, 2)
    assert.equal(failed[0].change.row_id, temps[1500])
    assert.equal(failed[0].errorCode, 'INSERT_FAILED')
    assert.match(failed[0].error, /UNIQUE/)
    assert.equal(failed[1].change.row_id, temps[2000])
    assert.equal(failed[1].errorCode, 'ERR_SYNC_INVALID_ARG')
    assert.match(failed[1].error, /Todo\.title is required/)
    const rows = await serverTodos(srv)
    assert.equal(rows.length, 2998)
    assert.ok(rows.some((r) => r.title === 'renamed'))
    await e.close()
  })

  scenario('a restarted server is noticed even when its new log is not behind our cursor', 120000, async (srv) => {
    const dbPath = path.join(tempDir(), 'replica.db')
    for (let i = 0; i < 3; i++) await api(srv.url, 'POST', '/api/entities/Todo', { title: `t${i}`, done: false })
    const e = createSyncEngine(srv.url, { dbPath, transport: 'poll', pollInterval: 50 })
    await e.start()
    assert.equal(e.store.list('Todo').length, 3)
    const id = e.store.list('Todo')[0].id
    await e.close()
    // while the engine is away: a change, then a restart renumbering the log
    // to one insert per row: head 3, our cursor 3, no 410, nothing to pull
    await api(srv.url, 'PATCH', `/api/entities/Todo/${id}`, { title: 'changed' })
    await sleep(3000) // so the new boot is told apart from the old one
    await srv.restart()
    const again = createSyncEngine(srv.url, { dbPath, transport: 'poll', pollInterval: 50 })
    const resyncs = []
    again.on('resync', (r) => resyncs.push(r.reason))
    await again.start()
    assert.equal(again.store.get('Todo', id)?.title, 'changed', 'the change made before the restart was missed')
    assert.deepEqual(resyncs, ['server'])
    const server = (await serverTodos(srv)).map((r) => `${r.id}:${r.title}`).sort()
    assert.deepEqual(again.store.list('Todo').map((r) => `${r.id}:${r.title}`).sort(), server)
    await again.close()
  })

  scenario('a restart right after the previous boot, with deletes and inserts between, is noticed', 180000, async (srv) => {
    const dbPath = path.join(tempDir(), 'replica.db')
    for (let i = 0; i < 10; i++) await api(srv.url, 'POST', '/api/entities/Todo', { title: `t${i}`, done: false })
    // boot B: the engine follows it and goes away
    await srv.restart()
    const e = createSyncEngine(srv.url, { dbPath, transport: 'poll', pollInterval: 50 })
    await e.start()
    assert.equal(e.store.list('Todo').length, 10)
    await e.close()
    // meanwhile: 5 deletes and 20 inserts, then boot C, well within a second
    // of boot B for the dev server (`/health` uptime cannot tell them apart)
    const ids = (await serverTodos(srv)).map((r) => r.id)
    for (const id of ids.slice(0, 5)) await api(srv.url, 'DELETE', `/api/entities/Todo/${id}`)
    for (let i = 0; i < 20; i++) await api(srv.url, 'POST', '/api/entities/Todo', { title: `n${i}`, done: false })
    await srv.restart()
        const again = createSyncEngine(srv.url, { dbPath, transport: 'poll', pollInterval: 50 })
    await again.start()
    const server = (await serverTodos(srv)).map((r) => `${r.id}:${r.title}`).sort()
    assert.equal(server.length, 25)
    assert.deepEqual(again.store.list('Todo').map((r) => `${r.id}:${r.title}`).sort(), server)
    await again.close()
  })

  scenario('a replay of the log from 0 with a slow page and a failed page is shown whole or not at all', 120000, async (srv) => {
    // Note is under a row policy: a non-admin replica can fill it only from the log
    const token = await srv.login('erin')
    for (let i = 0; i < 250; i++) await api(srv.url, 'POST', '/api/entities/Note', { body: `n${i}`, userId: 'erin' }, token)
    const proxy = await startFaultProxy(srv.url)
    try {
      proxy.rules.push({ path: '/api/sync/pull?since=', nth: 3, delayMs: 1000 })
      proxy.rules.push({ path: '/api/sync/pull?since=', nth: 5, status: 503 })
      const e = createSyncEngine(proxy.url, { token, persist: false, transport: 'poll', pollInterval: 50, reconnectDelay: 50 })
      const counts = new Set()
      e.store.subscribe(() => counts.add(e.store.list('Note').length))
      await e.start()
      await eventually('every note', () => e.store.list('Note').length === 250, 30000)
      assert.ok(proxy.rules.every((r) => r.count === 0), 'both faults were met')
      assert.deepEqual([...counts].filter((n) => n !== 0 && n !== 250), [], 'a partial replay was shown')
      await e.close()
    } finally {
      await proxy.close()
    }
  })

  scenario("rows have the manifest's types whether they came by bootstrap, pull or getServerData", 60000, async (srv) => {
    // the server reads rows back through SQLite (a bool as 0/1); its change events carry what was written
    assert.equal((await api(srv.url, 'POST', '/api/entities/Todo', { title: 'from the bootstrap', done: true }, srv.adminToken)).status, 201)
    const e = createSyncEngine(srv.url, { persist: false, transport: 'poll', pollInterval: 200 })
    try {
      await e.start()
      assert.equal((await api(srv.url, 'POST', '/api/entities/Todo', { title: 'from the log', done: false }, srv.adminToken)).status, 201)
      await eventually('both rows', () => e.store.list('Todo').length === 2)
      const shown = e.store.list('Todo').map((r) => [r.title, r.done]).sort()
      assert.deepEqual(shown, [['from the bootstrap', true], ['from the log', false]])
      const data = await getServerData(srv.url, ['Todo'], { token: srv.adminToken })
      assert.deepEqual(data.entities.Todo.map((r) => typeof r.done), ['boolean', 'boolean'])
    } finally {
      await e.close({ flush: false })
    }
  })

  scenario('https:// pointed at the plain-HTTP server says so, within the connect timeout', 30000, async (srv) => {
    const https = srv.url.replace('http://', 'https://')
    await assert.rejects(fetchList(https, 'Todo', { timeout: { connect: 500 } }), (err) => {
      assert.ok(err instanceof SyncError)
      assert.match(err.message, /the URL says https:\/\/ — if the server speaks plain HTTP, use http:\/\//)
      return true
    })
  })

  scenario('a token the server does not recognise is an auth error, and its writes are held, not sent as anonymous', 60000, async (srv) => {
    const token = 'pylon_unrecognised_session_token'
    const e = createSyncEngine(srv.url, { persist: false, token, pollInterval: 200, transport: 'poll' })
    const errors = []
    e.on('error', (err) => errors.push(err))
    try {
      await e.start()
      await eventually('an auth error', () => errors.some((err) => isAuthError(err) && err.context === 'session'))
      assert.equal(e.status.lastError.code, 'ERR_SYNC_AUTH')
      assert.equal(e.resolvedSession(), null)
      await e.insert('Todo', { title: 'held while unrecognised', done: false })
      await assert.rejects(e.sync(), isAuthError)
      await assert.rejects(e.notifySessionChanged(), isAuthError)
      assert.deepEqual(e.mutations.list().map((m) => m.status), ['pending'])
      assert.ok(!(await serverTodos(srv)).some((r) => r.title === 'held while unrecognised'), 'sent as anonymous')
      for (const err of errors) assert.ok(!err.message.includes(token), 'the token leaked into an error')
    } finally {
      await e.close({ flush: false })
    }
  })

  scenario("a token revoked while running is noticed when a write is refused; the user's writes wait for a new token of the same user", 60000, async (srv) => {
    const token = await srv.login('erin')
    const storage = createWriteThroughStorage({ pylon_token: token }, () => {})
    const e = createSyncEngine(srv.url, { persist: false, storage, pollInterval: 200, transport: 'poll' })
    const sessions = []
    e.on('session', (s) => sessions.push(s))
    try {
      await e.start()
      await e.insert('Note', { body: 'before', userId: 'erin' })
      await e.sync()
      assert.equal(e.resolvedSession().userId, 'erin')
      const revoked = await api(srv.url, 'DELETE', '/api/auth/session', undefined, token)
      assert.equal(revoked.status, 200)
      await e.insert('Note', { body: 'after', userId: 'erin' })
      await assert.rejects(e.sync(), isAuthError)
      assert.equal(e.resolvedSession(), null)
      await eventually('a session event saying so', () => sessions.length > 0 && sessions.at(-1) === null)
      await eventually('the status to show it', () => e.status.lastError?.code === 'ERR_SYNC_AUTH')
      assert.deepEqual(e.mutations.list().map((m) => m.status), ['pending'], 'the refused write is held, not failed')
      // a new token of the same user sends it, once
      storage.set('pylon_token', await srv.login('erin'))
      await e.sync()
      assert.equal(e.resolvedSession().userId, 'erin')
      assert.deepEqual(e.mutations.list(), [])
      const bodies = (await serverRows(srv, 'Note')).filter((r) => r.userId === 'erin').map((r) => r.body).sort()
      assert.deepEqual(bodies, ['after', 'before'])
      assert.equal(e.status.lastError, null)
    } finally {
      await e.close({ flush: false })
    }
  })

  // Starts a writer (fixtures/writer.js) `kills` times on one replica and
  // kills it at a random moment each time; then a last engine drains what
  // they queued. Every write that resolved is on the server once, none twice.
  async function killWriters(srv, kills, token) {
    const dbPath = path.join(tempDir(), 'replica.db')
    const writer = path.join(__dirname, 'fixtures', 'writer.js')
    const resolved = []
    // another client changes rows meanwhile, so kills also land in pulls
    let remote = 0
    let others = Promise.resolve()
    const churn = setInterval(() => {
      others = others.then(async () => {
        const n = remote++
        const created = await api(srv.url, 'POST', '/api/entities/Todo', { title: `remote${n}`, done: false })
        if (n % 3 === 1 && created.body?.id) await api(srv.url, 'PATCH', `/api/entities/Todo/${created.body.id}`, { done: true })
        if (n % 3 === 2 && created.body?.id) await api(srv.url, 'DELETE', `/api/entities/Todo/${created.body.id}`)
      }).catch(() => {})
    }, 25)
    for (let k = 0; k < kills; k++) {
      const args = [writer, srv.url, dbPath, `k${k}_`, ...(token ? [token] : [])]
      const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
      child.stdout.on('data', (d) => resolved.push(...String(d).split('\n').filter(Boolean)))
      // a bulk writer's every other run is killed after its first burst
      // resolved (while the next is queued or sent), whatever the machine's speed
      if (token && k % 2 === 0) await Promise.race([new Promise((r) => child.stdout.once('data', r)), sleep(120000)])
      // some kills land while the engine starts (loading, reconciling), most mid-write
      await sleep(80 + Math.random() * 400)
      child.kill('SIGKILL')
      await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', r)))
    }
    clearInterval(churn)
    await others
    const e = createSyncEngine(srv.url, { dbPath, token, transport: 'poll', pollInterval: 50 })
    await e.start()
    await eventually('the queue to drain', () => e.mutations.list().length === 0, 60000)
    const rows = await serverTodos(srv)
    const titles = rows.map((r) => r.title)
    // the replica the killed processes left behind converges to the server
    // (a cursor ever ahead of its rows would leave changes out for good)
    await e.sync()
    const key = (r) => `${r.id}:${r.title}:${Number(r.done)}`
    assert.deepEqual(e.store.list('Todo').map(key).sort(), rows.map(key).sort())
    const counts = new Map()
    for (const t of titles) counts.set(t, (counts.get(t) || 0) + 1)
    const lost = resolved.filter((t) => !counts.has(t))
    const twice = [...counts].filter(([, n]) => n > 1).map(([t]) => t)
    assert.deepEqual(lost, [], 'resolved writes missing on the server')
    assert.deepEqual(twice, [], 'writes applied twice')
    await e.close()
    return resolved.length
  }

  scenario(`kill -9 at ${KILLS} random moments of writes, pulls, id swaps and resets: nothing lost, nothing twice, replica equal to the server`, 900000, async (srv) => {
    const resolved = await killWriters(srv, KILLS)
    assert.ok(resolved >= KILLS, `too few writes resolved (${resolved}) to mean anything`)
  })

  scenario(`kill -9 at ${BULK_KILLS} random moments of an admin's bulk writes (/api/batch runs, one on the server while the last one's answers are stored): nothing lost, nothing twice`, 600000, async (srv) => {
    const resolved = await killWriters(srv, BULK_KILLS, srv.adminToken)
    assert.ok(resolved >= 1500 * (BULK_KILLS / 2), `too few writes resolved (${resolved}) to mean anything`)
  })
}
