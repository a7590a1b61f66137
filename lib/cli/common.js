'use strict'
// What every command shares: usage errors, the one positional argument,
// the connection options (token, CA) read from flags and environment, and
// how counts and ages are written.

const fs = require('node:fs')

/** A usage error: printed with a pointer to the command's help; exit code 2. */
class UsageError extends Error {}

/** The options every command that talks to a server takes. */
const CONNECT = {
  token: { type: 'string' },
  ca: { type: 'string' },
}

const CONNECT_HELP = `  --token T     bearer token (PYLON_TOKEN is read when it is not given; it keeps
                the token out of the process list). Never printed.
  --ca FILE     PEM file of a certificate authority to trust (a private CA);
                NODE_EXTRA_CA_CERTS and the system's store are trusted too`

/** Exactly one positional argument, named `what` in the error. */
function one(positionals, what) {
  if (positionals.length === 0) throw new UsageError(`missing <${what}>`)
  if (positionals.length > 1) throw new UsageError(`one <${what}> expected, got ${positionals.length} arguments`)
  return positionals[0]
}

/** `{ token?, ca? }` from --token/PYLON_TOKEN and --ca. */
function connection(values) {
  const out = {}
  const token = values.token ?? process.env.PYLON_TOKEN
  if (token) out.token = token
  if (values.ca !== undefined) {
    try {
      out.ca = fs.readFileSync(values.ca, 'utf8')
    } catch (e) {
      throw new UsageError(`--ca ${values.ca}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`)
    }
  }
  return out
}

/** A count as people read it: 12,000. */
const count = (x) => x.toLocaleString('en-US')

/** How long ago a Unix ms time was, in the unit that reads best. */
function ago(ms, now = Date.now()) {
  const s = Math.max(0, Math.round((now - ms) / 1000))
  if (s < 120) return `${s} s ago`
  if (s < 7200) return `${Math.round(s / 60)} min ago`
  if (s < 172800) return `${Math.round(s / 3600)} h ago`
  return `${Math.round(s / 86400)} days ago`
}

module.exports = { UsageError, CONNECT, CONNECT_HELP, one, connection, count, ago }
