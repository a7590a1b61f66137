'use strict'
// Cold start in a fresh process, as a user's restart is: each start runs in
// a process of its own, against a replica of `rows` rows, and reports the
// time to load the addon, to `start()` and to the first `store.list`, with
// the list's JSON text and its parse timed apart; each run starts once as
// it is and once with `preload: ['Todo']` (the rows parsed while the
// replica loads), and, as the limit, a fresh process reads the same list's
// JSON from a file and parses it, taking turns. `bench/js.js` times the same path three
// times in one process that has already run other work.
// `node bench/cold.js [rows] [runs]`, release addon; not part of `npm run bench`.
const { spawnSync } = require('node:child_process')
const { performance } = require('node:perf_hooks')
const path = require('node:path')
const os = require('node:os')

if (process.argv[2] === 'bare') {
  // the limit: a fresh process that only reads the list's JSON from a file and parses it
  const t0 = performance.now()
  const list = JSON.parse(require('node:fs').readFileSync(process.argv[3], 'latin1'))
  const total = Number((performance.now() - t0).toFixed(1))
  process.stdout.write(JSON.stringify({ total, rows: list.length }))
  return
}

if (process.argv[2] === 'child') {
  const t0 = performance.now()
  const { createSyncEngine } = require('../sync.js')
  const [url, dbPath, preload] = process.argv.slice(3)
  ;(async () => {
    const t1 = performance.now()
    const e = createSyncEngine(url, { dbPath, transport: 'poll', pollInterval: 3600000, preload: preload === 'preload' && ['Todo'] })
    await e.start()
    const t2 = performance.now()
    const list = e.store.list('Todo')
    const t3 = performance.now()
    const text = e._native.listJson('Todo')
    const t4 = performance.now()
    JSON.parse(text)
    const t5 = performance.now()
    const ms = (x) => Number(x.toFixed(1))
    const times = { addon: ms(t1 - t0), start: ms(t2 - t1), firstList: ms(t3 - t2), total: ms(t3 - t1), listJson: ms(t4 - t3), parse: ms(t5 - t4) }
    process.stdout.write(JSON.stringify({ ...times, rows: list.length }))
    await e.close()
  })()
  return
}

const { createSyncEngine } = require('../sync.js')
const { startDevserver } = require('../__test__/helpers.js')
const rows = Number(process.argv[2] || 100000)
const runs = Number(process.argv[3] || 5)

;(async () => {
  const srv = await startDevserver()
  const dbPath = path.join(os.tmpdir(), `bench-cold-${process.pid}.db`)
  const jsonPath = path.join(os.tmpdir(), `bench-cold-${process.pid}.json`)
  try {
    await srv.control('seed', { entity: 'Todo', count: rows, data: { title: 'row {i} ' + 'x'.repeat(150), done: false } })
    const e = createSyncEngine(srv.url, { dbPath, transport: 'poll', pollInterval: 3600000 })
    await e.start()
    require('node:fs').writeFileSync(jsonPath, e._native.listJson('Todo'), 'latin1')
    await e.close()
    const totals = { plain: [], preload: [], bare: [] }
    for (let i = 0; i < runs; i++) {
      for (const mode of ['plain', 'preload', 'bare']) {
        const args = mode === 'bare' ? ['bare', jsonPath] : ['child', srv.url, dbPath, mode]
        const child = spawnSync(process.execPath, [__filename, ...args], { encoding: 'utf8' })
        if (child.status !== 0) throw new Error(`a cold start failed: ${child.stderr}`)
        const r = JSON.parse(child.stdout)
        if (r.rows !== rows) throw new Error(`a cold start listed ${r.rows} rows`)
        totals[mode].push(r.total)
        if (mode === 'bare') {
          console.log(`fresh process, ${rows} rows, the limit: the list's JSON read from a file and parsed: ${r.total} ms`)
          continue
        }
        const how = mode === 'preload' ? "preload: ['Todo']" : 'no preload'
        console.log(`fresh process, ${rows} rows, ${how}: addon ${r.addon} ms, start() ${r.start} ms, first store.list ${r.firstList} ms (list JSON ${r.listJson} ms, JSON.parse ${r.parse} ms): ${r.total} ms`)
      }
    }
    const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]
    for (const [mode, xs] of Object.entries(totals)) {
      console.log(`${mode}: to the first store.list ${Math.min(...xs)}–${Math.max(...xs)} ms, median ${median(xs)} ms over ${xs.length} processes`)
    }
  } finally {
    await srv.stop()
    for (const suffix of ['', '-wal', '-shm']) require('node:fs').rmSync(dbPath + suffix, { force: true })
    require('node:fs').rmSync(jsonPath, { force: true })
  }
})()
