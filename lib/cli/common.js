'use strict'
// What every command shares: usage errors, the one positional argument,
// and the connection options (token, CA) read from flags and environment.

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

module.exports = { UsageError, CONNECT, CONNECT_HELP, one, connection }
