'use strict'
// SQL over the replica: engine.query and engine.watch against both servers
// (pending writes, an identity flip), their errors and parameters, close()
// interrupting a query, the file read by queryReplica and `pylon-sync sql`.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { createSyncEngine, queryReplica } = require('../sync.js')
const { startDevserver, servers, tempDir, eventually } = require('./helpers.js')

const CLI = path.join(__dirname, '..', 'bin', 'pylon-sync.js')

/** A token storage the test can change, as a sign-in would. */
function tokens(token) {
  const map = new Map([['pylon_token', token]])
  return { get: (k) => map.get(k) ?? null, set: (k, v) => map.set(k, v), remove: (k) => map.delete(k) }
}

/** What `store.list` shows, as the view's columns show it (booleans 0/1). */
function listed(engine, entity, fields) {
  return engine.store
    .list(entity)
    .map((r) => Object.fromEntries(fields.map((f) => [f, typeof r[f] === 'boolean' ? Number(r[f]) : r[f] ?? null])))
    .sort((a, b) => (a.title ?? a.body).localeCompare(b.title ?? b.body))
}

/** Calls of a watch listener, and a way to wait for the rows it should reach. */
function recorder() {
  const calls = []
  return {
    calls,
    listener: (rows) => calls.push(rows),
    until: (what, want) => eventually(what, () => calls.length > 0 && JSON.stringify(calls.at(-1)) === JSON.stringify(want)),
  }
}

for (const server of servers()) {
  test(`query and watch against the ${server.name}: pending writes show, another identity's rows never do`, async (t) => {
    const srv = await server.start()
    if (!srv) return t.skip('pylon is not installed')
    const dir = tempDir()
    const storage = tokens(await srv.login('alice'))
    const e = createSyncEngine(srv.url, { dbPath: path.join(dir, 'replica.db'), storage, pollInterval: 50, reconnectDelay: 20 })
    try {
      await e.start()
      const tag = Math.random().toString(36).slice(2, 8)
      for (const title of ['a', 'b']) await e.mutations.settled(await e.insert('Todo', { title: `${tag}-${title}`, done: false }))
      await e.caughtUp()
      const mine = `SELECT title, done FROM Todo WHERE title LIKE ? ORDER BY title`
      const todos = () => listed(e, 'Todo', ['title', 'done']).filter((r) => r.title.startsWith(tag))
      assert.deepEqual(await e.query(mine, [`${tag}-%`]), todos())

      const open = recorder()
      const unwatch = e.watch(`SELECT title FROM Todo WHERE done = 0 AND title LIKE :tag ORDER BY title`, { tag: `${tag}-%` }, open.listener)
      await open.until('the first result', [{ title: `${tag}-a` }, { title: `${tag}-b` }])

      // stopped: writes stay queued, and show at once
      await e.stop()
      const [a] = e.store.list('Todo').filter((r) => r.title === `${tag}-a`)
      await e.update('Todo', a.id, { done: true })
      const c = await e.insert('Todo', { title: `${tag}-c`, done: false })
      assert.equal(e.mutations.list().length, 2)
      assert.deepEqual(await e.query(mine, [`${tag}-%`]), todos())
      assert.deepEqual((await e.query(mine, [`${tag}-%`])).map((r) => r.title), [`${tag}-a`, `${tag}-b`, `${tag}-c`])
      await open.until('the pending writes', [{ title: `${tag}-b` }, { title: `${tag}-c` }])
      assert.deepEqual(await e.query('SELECT id FROM Todo WHERE id = ?', [c]), [{ id: c }], 'a pending insert under its temporary id')

      // acknowledged: the rows are the same, so the listener is not called again
      const seen = open.calls.length
      await e.start()
      await e.caughtUp()
      assert.equal(e.mutations.list().length, 0)
      assert.deepEqual(await e.query(mine, [`${tag}-%`]), todos())
      await new Promise((r) => setTimeout(r, 100))
      assert.equal(open.calls.length, seen, 'no call when the rows did not change')
      unwatch()

      // alice's note, then bob signs in: bob's rows only
      await e.mutations.settled(await e.insert('Note', { body: `${tag} alice's`, userId: 'alice' }))
      await e.caughtUp()
      const notes = recorder()
      const unwatchNotes = e.watch('SELECT body FROM Note WHERE body LIKE ? ORDER BY body', [`${tag}%`], notes.listener)
      await notes.until("alice's note", [{ body: `${tag} alice's` }])
      storage.set('pylon_token', await srv.login('bob'))
      await e.notifySessionChanged()
      await notes.until("bob's notes: none of alice's", [])
      assert.deepEqual(await e.query('SELECT body FROM Note WHERE body LIKE ?', [`${tag}%`]), [])
      assert.ok(!notes.calls.some((rows, i) => i > notes.calls.findIndex((r) => r.length === 0) && rows.length > 0), 'never shown again')
      unwatchNotes()
    } finally {
      await e.close()
      await srv.stop()
    }
  })
}

test('queries are read-only, parameters bound and checked, errors typed; close() interrupts a query', async () => {
  const srv = await startDevserver()
  const dir = tempDir()
  const db = path.join(dir, 'replica.db')
  const e = createSyncEngine(srv.url, { dbPath: db, pollInterval: 50, indexes: { Todo: ['done', ['userId', 'title']] } })
  try {
    await e.start()
    await e.insert('Todo', { title: 'milk', done: false, userId: 'u1' })
    for (const sql of ['DELETE FROM rows', 'UPDATE meta SET value = 0', 'DROP VIEW Todo', 'BEGIN', 'SELECT 1; SELECT 2', "ATTACH 'x.db' AS x"]) {
      await assert.rejects(e.query(sql), { code: 'ERR_SYNC_INVALID_ARG' }, sql)
    }
    await assert.rejects(e.query('SELEC 1'), (err) => err.code === 'ERR_SYNC_QUERY' && /syntax error/.test(err.message))
    await assert.rejects(e.query('SELECT * FROM Nope'), (err) => err.code === 'ERR_SYNC_QUERY' && /no such table: Nope/.test(err.message))
    const wrong = [['SELECT ?', [undefined]], ['SELECT ?', [Symbol('x')]], ['SELECT ?', [() => 1]], ['SELECT ?', [NaN]], ['SELECT ?', 'x'], ['SELECT ?', []], ['', []], [42, []]]
    for (const [i, [sql, params]] of wrong.entries()) {
      await assert.rejects(e.query(sql, params), { code: 'ERR_SYNC_INVALID_ARG' }, `wrong arguments #${i}`)
    }
    assert.deepEqual(await e.query("SELECT title FROM Todo WHERE title = ?", ["milk' OR '1'='1"]), [])
    const at = new Date('2026-01-02T03:04:05.678Z')
    assert.deepEqual(await e.query('SELECT ? AS d, ? AS b, ? AS n, ? AS big, (SELECT sum(value) FROM json_each(?)) AS s', [at, true, 1.5, 7n, [1, 2]]), [
      { d: '2026-01-02T03:04:05.678Z', b: 1, n: 1.5, big: 7, s: 3 },
    ])
    assert.deepEqual(await e.query('SELECT title, done, userId FROM Todo WHERE done = $done', { done: false }), [{ title: 'milk', done: 0, userId: 'u1' }])
    // the indexes asked for serve the views' columns
    const plan = await e.query('EXPLAIN QUERY PLAN SELECT * FROM Todo WHERE done = 0')
    assert.ok(plan.some((p) => p.detail.includes('pylon_idx_Todo_done')), JSON.stringify(plan))
    assert.throws(() => createSyncEngine(srv.url, { persist: false, indexes: { Todo: 'done' } }), { code: 'ERR_SYNC_INVALID_ARG' })
    assert.throws(() => e.watch('SELECT 1', [], 'not a function'), { code: 'ERR_SYNC_INVALID_ARG' })
    // a watch whose statement fails reports it to onError
    const failed = await new Promise((resolve) => e.watch('SELECT * FROM Nope', null, () => {}, { onError: resolve }))
    assert.equal(failed.code, 'ERR_SYNC_QUERY')

    // many writes in one turn: the live query runs far fewer times, and ends on the last state
    let runs = 0
    const unwatch = e.watch('SELECT count(*) AS n FROM Todo', null, () => runs++)
    await Promise.all(Array.from({ length: 200 }, (_, i) => e.insert('Todo', { title: `bulk ${i}`, done: true })))
    await eventually('the count of 201', async () => (await e.query('SELECT count(*) AS n FROM Todo'))[0].n === 201)
    await new Promise((r) => setTimeout(r, 100))
    assert.ok(runs >= 1 && runs < 50, `listener calls: ${runs}`)
    unwatch()

    const endless = e.query('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c')
    const interrupted = assert.rejects(endless, { code: 'ERR_SYNC_CLOSED' })
    await new Promise((r) => setTimeout(r, 200))
    await e.close()
    await interrupted
    await assert.rejects(e.query('SELECT 1'), { code: 'ERR_SYNC_CLOSED' })

    // the file, without an engine, and through the CLI
    assert.deepEqual(await queryReplica(db, 'SELECT count(*) AS n FROM Todo WHERE done = ?', [0]), [{ n: 1 }])
    await assert.rejects(queryReplica(db, 'DELETE FROM rows'), { code: 'ERR_SYNC_INVALID_ARG' })
    await assert.rejects(queryReplica(path.join(dir, 'none.db'), 'SELECT 1'), { code: 'ERR_SYNC_NOT_FOUND' })
    const cli = (...args) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' })
    const table = cli('sql', db, "SELECT title, done, userId FROM Todo WHERE title = ?", '--param', 'milk')
    assert.equal(table.status, 0, table.stderr)
    assert.equal(table.stdout, 'title  done  userId\n-----  ----  ------\nmilk   0     u1\n(1 row)\n')
    const json = cli('sql', db, 'SELECT count(*) AS n FROM Todo', '--json')
    assert.deepEqual(JSON.parse(json.stdout), [{ n: 201 }])
    const write = cli('sql', db, 'DELETE FROM rows')
    assert.equal(write.status, 2)
    assert.match(write.stderr, /read-only/)
    const bad = cli('sql', db, 'SELEC 1')
    assert.equal(bad.status, 1)
    assert.match(bad.stderr, /syntax error.*ERR_SYNC_QUERY/)
    assert.equal(cli('sql', db).status, 2)
    assert.match(cli('sql', '--help').stdout, /read-only SQL statement/)
    assert.deepEqual(await queryReplica(db, 'SELECT count(*) AS n FROM Todo'), [{ n: 201 }], 'the CLI changed nothing')
    // another program with another SQLite (Python's, the system library) reads the same views
    const py = spawnSync('python3', ['-c', `import json, sqlite3, sys
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
print(json.dumps([sqlite3.sqlite_version, c.execute("select title, done, userId from Todo where done = 0").fetchall(), c.execute("select count(*) from Todo").fetchone()[0]]))`, db], { encoding: 'utf8' })
    assert.equal(py.status, 0, py.stderr)
    const [version, open, count] = JSON.parse(py.stdout)
    assert.deepEqual([open, count], [[['milk', 0, 'u1']], 201], `SQLite ${version}`)
  } finally {
    await e.close()
    await srv.stop()
  }
})
