'use strict'
// Soak: several engines over every transport, thousands of local and remote
// writes per minute (inserts, updates, deletes: the data stays the same
// size), every connection dropped every few seconds. Memory, descriptors and
// runtime tasks must stay flat once warm, and every engine must converge.
// `SOAK_SECONDS=600 node --test __test__/soak.test.js` for a long run.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const { createSyncEngine } = require('../sync.js')
const native = require('../index.js')
const { startDevserver, api, eventually } = require('./helpers.js')

const SECONDS = Number(process.env.SOAK_SECONDS || 20)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const fds = () => fs.readdirSync('/proc/self/fd').length
const rssMb = () => process.memoryUsage().rss / 2 ** 20

/** The monotonic counts of a diagnostics() reading, flattened. */
function counts(d) {
  const out = {}
  for (const k of ['requests', 'requestFailures', 'bytesSent', 'bytesReceived', 'serverWaitMs', 'eventsApplied', 'resyncs', 'writesSent', 'writesRetried', 'writesAcknowledged', 'writesFailed']) out[k] = d[k]
  for (const [t, n] of Object.entries(d.connects)) out[`connects.${t}`] = n
  for (const [t, n] of Object.entries(d.reconnects)) out[`reconnects.${t}`] = n
  return out
}

test(`soak for ${SECONDS} s: flat memory and descriptors, every engine converges`, { timeout: (SECONDS + 120) * 1000 }, async (t) => {
  const srv = await startDevserver()
  const token = async (u) => (await api(srv.url, 'POST', '/api/auth/session', { user_id: u })).body.token
  const engines = []
  for (const [i, transport] of ['websocket', 'sse', 'poll', 'auto'].entries()) {
    const e = createSyncEngine(srv.url, { persist: false, token: await token(`u${i}`), transport, pollInterval: 200, reconnectDelay: 50, pingInterval: 1000, pingTimeout: 1000 })
    await e.start()
    engines.push(e)
  }
  let stop = false
  let writes = 0
  // every writer deletes what it wrote 50 writes ago, so the data stays the
  // same size and any growth of memory is a leak, not data
  const writers = engines.map(async (e, i) => {
    const mine = []
    for (let n = 0; !stop; n++) {
      const id = await e.insert('Todo', { title: `e${i}_${n}`, done: false })
      mine.push(id)
      if (n % 4 === 3) await e.update('Todo', id, { done: true })
      // by now the server has named it: the temporary id still reaches it
      if (mine.length > 50) await e.delete('Todo', mine.shift())
      writes++
      await sleep(30)
    }
  })
  const remote = (async () => {
    const theirs = []
    for (let n = 0; !stop; n++) {
      const r = await api(srv.url, 'POST', '/api/entities/Todo', { title: `remote${n}`, done: false })
      theirs.push(r.body.id)
      if (theirs.length > 50) await api(srv.url, 'DELETE', `/api/entities/Todo/${theirs.shift()}`)
      writes++
      await sleep(20)
    }
  })()
  const dropper = (async () => {
    while (!stop) {
      await sleep(3000)
      await srv.control('drop', {})
    }
  })()
  const samples = []
  const last = engines.map(() => ({}))
  const countsFell = []
  const started = Date.now()
  while (Date.now() - started < SECONDS * 1000) {
    await sleep(1000)
    global.gc?.()
    samples.push({ at: Math.round((Date.now() - started) / 1000), rss: rssMb(), fds: fds(), tasks: await native.runtimeTasks() })
    // every count diagnostics() reports only grows
    engines.forEach((e, i) => {
      const now = counts(e.diagnostics())
      for (const [k, v] of Object.entries(now)) {
        if (v < (last[i][k] ?? 0)) countsFell.push(`engine ${i}: ${k} ${last[i][k]} → ${v}`)
      }
      last[i] = now
    })
  }
  stop = true
  await Promise.all([...writers, remote, dropper])
  try {
    for (const e of engines) {
      await eventually(`engine on ${e.connection.transport} to converge`, async () => {
        await e.sync().catch(() => {})
        const server = (await api(srv.url, 'GET', '/api/entities/Todo')).body.data.map((r) => r.id).sort()
        const ids = e.store.list('Todo').map((r) => r.id).sort()
        return e.mutations.list().length === 0 && ids.length === server.length && ids.every((id, k) => id === server[k])
      }, 60000).catch(async (err) => {
        const server = (await api(srv.url, 'GET', '/api/entities/Todo')).body.data
        const ids = new Set(e.store.list('Todo').map((r) => r.id))
        const sids = new Set(server.map((r) => r.id))
        t.diagnostic(`pending ${e.mutations.list().length} ${JSON.stringify(e.mutations.list()[0])} cursor ${e.cursor} status ${JSON.stringify(e.status)}`)
        t.diagnostic(`missing ${JSON.stringify(server.filter((r) => !ids.has(r.id)).slice(0, 3))}`)
        t.diagnostic(`extra ${JSON.stringify(e.store.list('Todo').filter((r) => !sids.has(r.id)).slice(0, 3))}`)
        throw err
      })
    }
    assert.deepEqual(countsFell, [], 'a diagnostics count went down')
    const reconnects = engines.map((e) => Object.values(e.diagnostics().reconnects).reduce((a, b) => a + b, 0))
    t.diagnostic(`reconnects per engine (streams dropped every 3 s): ${reconnects.join(', ')}`)
    assert.ok(reconnects.slice(0, 2).every((n) => n > 0), 'the dropped streams were not counted as reconnects')
    const warm = samples[Math.floor(samples.length / 4)]
    const end = samples[samples.length - 1]
    const every = Math.max(1, Math.floor(samples.length / 10))
    t.diagnostic(`rss MiB over time: ${samples.filter((_, k) => k % every === 0).map((x) => `${x.at}s ${x.rss.toFixed(0)}`).join(', ')}`)
    t.diagnostic(`${writes} writes in ${SECONDS} s; rss ${warm.rss.toFixed(0)} → ${end.rss.toFixed(0)} MiB, fds ${warm.fds} → ${end.fds}, runtime tasks ${warm.tasks} → ${end.tasks}`)
    assert.ok(end.fds <= warm.fds + 8, `file descriptors grew: ${warm.fds} → ${end.fds}`)
    assert.ok(end.tasks <= warm.tasks + 8, `runtime tasks grew: ${warm.tasks} → ${end.tasks}`)
    assert.ok(end.rss - warm.rss < 64, `memory grew: ${warm.rss.toFixed(0)} → ${end.rss.toFixed(0)} MiB`)
  } finally {
    for (const e of engines) await e.close()
    await srv.stop()
  }
})
