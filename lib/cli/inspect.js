'use strict'
// `pylon-sync inspect <db>`: what a replica file holds. The file is opened
// read-only and never changed, so it is safe on a replica an application
// has open.

const { inspectReplica } = require('../../sync.js')
const { one, count: n, ago } = require('./common.js')

const usage = 'inspect <db> [--json]'
const summary = 'what a replica file holds (read-only)'
const help = `Shows a replica file: the cursor it follows the server's log at, a
fingerprint of the identity its rows belong to, rows per entity, writes
pending and failed, and when the server it follows started. The file is
opened read-only and never changed.

Options:
  --json        print the report as JSON

Exit codes: 0 read; 1 not a replica or unreadable; 2 usage.`

const options = { json: { type: 'boolean' } }

function bytes(b) {
  if (b < 1024) return `${b} B`
  if (b < 1024 * 1024) return `${(b / 1024).toFixed(1)} KiB`
  return `${(b / 1024 / 1024).toFixed(1)} MiB`
}

async function run(positionals, values, io) {
  const file = one(positionals, 'db')
  const info = await inspectReplica(file)
  if (values.json) {
    io.out.write(`${JSON.stringify(info, null, 2)}\n`)
    return 0
  }
  const lines = [
    ['replica', `${file} (${bytes(info.bytes)})`],
    ['cursor', n(info.cursor)],
    ['identity', info.identity ? `${info.identity} (fingerprint)` : 'none yet (no session was known)'],
    ['server', info.serverBoot ? `started ${new Date(info.serverBoot).toISOString()}` : 'not checked yet'],
  ]
  const entities = info.entities.map(
    (e) => `${e.name}: ${n(e.rows)} rows${e.tombstones ? `, ${n(e.tombstones)} tombstones` : ''}${e.covered ? '' : ' (not bootstrapped yet)'}`,
  )
  lines.push(['entities', entities.length ? entities.join('\n') : 'none'])
  const oldest = info.oldestPendingAt ? ` (oldest ${ago(info.oldestPendingAt)})` : ''
  lines.push(['writes', `${n(info.pending)} pending${oldest}, ${n(info.failed.length)} failed, ${n(info.parked)} of other identities`])
  for (const f of info.failed) lines.push(['failed', `${f.id} ${f.kind} ${f.entity}: ${f.code} ${f.message}`])
  for (const [k, v] of lines) {
    const [first, ...more] = v.split('\n')
    io.out.write(`${k.padEnd(10)}${first}\n`)
    for (const m of more) io.out.write(`${''.padEnd(10)}${m}\n`)
  }
  return 0
}

module.exports = { usage, summary, help, options, run }
