'use strict'
// `pylon-sync mirror <url> --db FILE`: mirrors an app into a SQLite replica,
// with a progress bar on a terminal; under --watch it keeps following the
// server with a live status line until Ctrl-C, which closes cleanly (what
// is queued is flushed or stays on disk: nothing is lost).

const path = require('node:path')
const { createSyncEngine, inspectReplica } = require('../../sync.js')
const { CONNECT, CONNECT_HELP, UsageError, one, connection, count: n, ago } = require('./common.js')

const usage = 'mirror <url> --db FILE [--watch]'
const summary = 'mirror an app into a SQLite replica'
const help = `Mirrors every entity the token may read from <url> into the replica
file FILE: a complete bootstrap, then the change log. Without --watch it
stops once caught up with the server; with --watch it keeps following it
(WebSocket, SSE or polling) and shows a live status line, until Ctrl-C.
Run it again later to catch up from where it left off.

Options:
  --db FILE     the replica file (created if missing)
  --watch       keep following the server until interrupted
  --transport T auto (default), websocket, sse or poll
  --json        print a JSON summary at the end instead of text
${CONNECT_HELP}

Exit codes: 0 caught up (with --watch: stopped with Ctrl-C); 1 the server
could not be reached or refused; 2 usage; 130 interrupted before caught up.`

const options = {
  ...CONNECT,
  db: { type: 'string' },
  watch: { type: 'boolean' },
  transport: { type: 'string' },
  json: { type: 'boolean' },
}

/** One entity's bootstrap progress as a line (a bar when the share is known). */
function progressLine(p, width = 24) {
  if (p.fraction === null) return `${p.entity.padEnd(16)} ${n(p.rows)} rows`
  const full = Math.round(p.fraction * width)
  const bar = `${'#'.repeat(full)}${'.'.repeat(width - full)}`
  const total = p.total === null ? '' : `/${n(p.total)}`
  return `${p.entity.padEnd(16)} [${bar}] ${n(p.rows)}${total} ${Math.round(p.fraction * 100)}%`
}

/** The status line under --watch. */
function statusLine(e) {
  const c = e.connection
  const s = e.status
  const link = c.state === 'open' ? (c.transport === 'poll' ? 'polling' : `live over ${c.transport}`) : c.state
  const parts = [link, `cursor ${n(s.cursor)}`]
  if (s.pending) parts.push(`${n(s.pending)} pending`)
  if (s.failed) parts.push(`${n(s.failed)} failed`)
  if (s.lastSyncedAt) parts.push(`synced ${ago(s.lastSyncedAt)}`)
  if (s.lastError) parts.push(`last error: ${s.lastError.code}`)
  return parts.join(' · ')
}

async function run(positionals, values, io) {
  const url = one(positionals, 'url')
  if (!values.db) throw new UsageError('--db FILE is required: the replica file to mirror into')
  const tty = Boolean(io.err.isTTY)
  const engine = createSyncEngine(url, {
    ...connection(values),
    dbPath: path.resolve(values.db),
    ...(values.transport ? { transport: values.transport } : {}),
  })
  let lastError = null
  engine.on('error', (err) => {
    lastError = err
    if (!tty || !values.watch) return
    io.err.write(`\r\x1b[K${err.context ?? 'sync'} failed: ${err.message} (${err.code})\n`)
  })
  // progress: redrawn in place on a terminal, one line per finished entity elsewhere
  engine.on('progress', (p) => {
    if (tty) io.err.write(`\r\x1b[K${progressLine(p)}${p.done ? '\n' : ''}`)
    else if (p.done) io.err.write(`${progressLine(p)}\n`)
  })

  // Ctrl-C: a clean close (it waits for the round under way: a bootstrap
  // commits in whole transactions, so nothing half-done is ever on disk);
  // a second Ctrl-C ends the process at once, which loses nothing either
  let interrupt
  const interrupted = new Promise((resolve) => (interrupt = resolve))
  let signals = 0
  const onSignal = () => {
    if (++signals > 1) process.exit(130)
    if (tty) io.err.write('\r\x1b[Kstopping… (Ctrl-C again to quit at once; nothing is lost either way)\n')
    interrupt()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  let code = 0
  let caughtUp = false
  try {
    const starting = engine.start()
    starting.catch(() => {}) // awaited below unless Ctrl-C comes first; close() then waits for it
    await Promise.race([starting, interrupted])
    if (signals > 0) {
      code = 130
    } else if (!values.watch) {
      if (!engine.status.hasSynced) {
        await Promise.race([engine.waitForFirstSync().catch(() => {}), interrupted, givesUp(engine)])
      }
      code = engine.status.hasSynced ? 0 : signals > 0 ? 130 : 1
    } else {
      const draw = () => {
        if (tty) io.err.write(`\r\x1b[K${statusLine(engine)}`)
      }
      let last = ''
      const report = () => {
        const line = statusLine(engine)
        if (tty) return draw()
        // without a terminal: a line each time the state changes (not the clock)
        const key = line.replace(/ · synced .*? ago/, '')
        if (key !== last) io.err.write(`${line}\n`)
        last = key
      }
      const offs = ['status', 'connection', 'change', 'mutation'].map((type) => engine.on(type, report))
      const ticker = tty ? setInterval(draw, 1000) : null
      report()
      await interrupted
      for (const off of offs) off()
      if (ticker) clearInterval(ticker)
      if (tty) io.err.write('\n')
    }
  } finally {
    caughtUp = engine.status.hasSynced
    await engine.close()
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
  // what is on disk now, as `inspect` shows it
  const info = await inspectReplica(path.resolve(values.db))
  const rows = Object.fromEntries(info.entities.map((e) => [e.name, e.rows]))
  const summaryOut = { caughtUp, cursor: info.cursor, rows, pending: info.pending, failed: info.failed.length }
  if (values.json) {
    io.out.write(`${JSON.stringify(summaryOut)}\n`)
  } else if (summaryOut.caughtUp) {
    const list = Object.entries(rows).map(([k, v]) => `${k} ${n(v)}`).join(', ')
    io.out.write(`mirrored into ${values.db} at cursor ${n(summaryOut.cursor)}: ${list || 'no entities'}\n`)
  }
  if (code === 1) {
    io.err.write(`not caught up: ${lastError ? `${lastError.message} (${lastError.code})` : 'the server did not answer'}\n`)
  }
  return code
}

/** Resolves once three rounds in a row have failed: without --watch, mirror gives up then. */
function givesUp(engine) {
  return new Promise((resolve) => {
    const off = engine.on('status', (s) => {
      if (s.lastError && s.attempts >= 3) {
        off()
        resolve()
      }
    })
  })
}

module.exports = { usage, summary, help, options, run, progressLine, statusLine }
