'use strict'
// `pylon-sync doctor <url>`: checks a server the way the engine uses it,
// one line per check, with a cause and a fix for each that fails.

const { checkServer } = require('../../sync.js')
const { CONNECT, CONNECT_HELP, one, connection } = require('./common.js')

const usage = 'doctor <url> [--token T] [--json]'
const summary = 'check a server: health, TLS, session, streams'
const help = `Checks the server at <url> the way the engine uses it: /health, the TLS
chain (https), the session the token resolves to (/api/auth/me), the
manifest, the change log, the WebSocket (port + 1) and the event stream
(port + 2). Prints one line per check; each that fails says why and what
to do.

Options:
${CONNECT_HELP}
  --ws-url URL  the WebSocket's URL, when not the server's port + 1
  --sse-url URL the event stream's URL, when not the server's port + 2
  --json        print the checks as JSON

Exit codes: 0 every check passed or did not apply; 1 a check failed; 2 usage.`

const options = { ...CONNECT, 'ws-url': { type: 'string' }, 'sse-url': { type: 'string' }, json: { type: 'boolean' } }

const MARK = { ok: '✓', failed: '✗', skipped: '-' }

async function run(positionals, values, io) {
  const url = one(positionals, 'url')
  const opts = { ...connection(values), pingTimeout: 5000 }
  if (values['ws-url']) opts.wsUrl = values['ws-url']
  if (values['sse-url']) opts.sseUrl = values['sse-url']
  const checks = await checkServer(url, opts)
  if (values.json) {
    io.out.write(`${JSON.stringify(checks, null, 2)}\n`)
  } else {
    for (const c of checks) {
      const took = c.outcome === 'skipped' ? '' : ` (${c.ms} ms)`
      io.out.write(`${MARK[c.outcome]} ${c.name.padEnd(10)} ${c.outcome === 'skipped' ? 'skipped: ' : ''}${c.detail}${took}\n`)
      if (c.cause) io.out.write(`    cause: ${c.cause}\n`)
      if (c.fix) io.out.write(`    fix:   ${c.fix}\n`)
    }
  }
  return checks.some((c) => c.outcome === 'failed') ? 1 : 0
}

module.exports = { usage, summary, help, options, run }
