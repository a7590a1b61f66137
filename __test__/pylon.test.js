'use strict'
// The engine against the real Pylon server (`pylon`, crate pylon-cli 0.3.23).
// `.ci/run` installs it; without it on PATH these tests are reported as skipped.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { createSyncEngine, createWriteThroughStorage } = require('../sync.js')
const { startPylon, api, eventually } = require('./helpers.js')

async function withPylon(t, fn) {
  const srv = await startPylon()
  if (!srv) return t.skip('pylon is not installed (bash .ci/run installs it)')
  try {
    await fn(srv)
  } finally {
    await srv.stop()
  }
}

test('real server: 25,000 rows, more than its 10,000-event log, all arrive', { timeout: 180000 }, (t) =>
  withPylon(t, async (srv) => {
    for (let b = 0; b < 25; b++) {
      const operations = Array.from({ length: 1000 }, (_, i) => ({ op: 'insert', entity: 'Todo', data: { title: `t${b * 1000 + i}`, done: false } }))
      const r = await api(srv.url, 'POST', '/api/batch', { operations }, srv.adminToken)
      assert.equal(r.status, 200)
    }
    const e = createSyncEngine(srv.url, { persist: false, pollInterval: 100 })
    await e.start()
    assert.equal(e.store.list('Todo').length, 25000)
    assert.equal(e.cursor, 25000)
    await e.close()
  }),
)

test('real server: optimistic insert becomes the server row; a rejection is kept failed', { timeout: 60000 }, (t) =>
  withPylon(t, async (srv) => {
    const e = createSyncEngine(srv.url, { persist: false, pollInterval: 50 })
    await e.start()
    const temp = await e.insert('Todo', { title: 'real', done: false })
    await e.insert('Todo', { done: false })
    await eventually('the insert to land and the bad one to fail', () => {
      const rows = e.store.list('Todo')
      return rows.length === 1 && rows[0].id.length === 40 && e.mutations.list()[0]?.status === 'failed'
    })
    assert.equal(e.store.get('Todo', temp), null)
    assert.equal(e.mutations.list()[0].errorCode, 'INSERT_FAILED')
    const id = e.store.list('Todo')[0].id
    await e.update('Todo', id, { done: true })
    await e.delete('Todo', id)
    await eventually('update and delete on the server', async () => (await api(srv.url, 'GET', `/api/entities/Todo/${id}`)).status === 404)
    assert.equal(e.mutations.list().length, 1)
    await e.close()
  }),
)

test('real server: identity flip under a row-level read policy', { timeout: 60000 }, (t) =>
  withPylon(t, async (srv) => {
    const alice = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const bob = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'bob' })).body.token
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
  }),
)
