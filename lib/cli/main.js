'use strict'
// The CLI's dispatcher: the command, its options (node:util parseArgs),
// help, and exit codes scripts can rely on:
//   0  done; every check passed
//   1  what was asked failed: a check failed, the server refused or could
//      not be reached, the file is not a replica
//   2  usage: an unknown command or option, a missing argument
//   70 an internal error (a bug: please report it)

const { parseArgs } = require('node:util')
const { version } = require('../../package.json')
const { UsageError } = require('./common.js')

const COMMANDS = {
  mirror: require('./mirror.js'),
  inspect: require('./inspect.js'),
  sql: require('./sql.js'),
  doctor: require('./doctor.js'),
  types: require('./types.js'),
}

const USAGE = `pylon-sync ${version}: a Pylon app's data in a local SQLite replica

Usage: pylon-sync <command> [options]

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${c.usage.padEnd(44)} ${c.summary}`)
  .join('\n')}

Run \`pylon-sync <command> --help\` for a command's options.
A token is read from --token or, better (it stays out of the process list), PYLON_TOKEN.

Exit codes: 0 done, 1 failed (a check, the server, the file), 2 usage.
`

/** Runs the CLI on `argv`; resolves the exit code. `io` is where output goes (tests pass their own). */
async function main(argv, io = { out: process.stdout, err: process.stderr }) {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out.write(USAGE)
    return name === undefined ? 2 : 0
  }
  if (name === '--version' || name === '-v') {
    io.out.write(`${version}\n`)
    return 0
  }
  const command = COMMANDS[name]
  if (!command) {
    io.err.write(`pylon-sync: unknown command ${JSON.stringify(name)}; one of ${Object.keys(COMMANDS).join(', ')}\n`)
    return 2
  }
  let parsed
  try {
    parsed = parseArgs({
      args: rest,
      options: { help: { type: 'boolean', short: 'h' }, ...command.options },
      allowPositionals: true,
      strict: true,
    })
  } catch (e) {
    io.err.write(`pylon-sync ${name}: ${e.message}\nRun \`pylon-sync ${name} --help\`.\n`)
    return 2
  }
  if (parsed.values.help) {
    io.out.write(`Usage: pylon-sync ${command.usage}\n\n${command.help}\n`)
    return 0
  }
  try {
    return await command.run(parsed.positionals, parsed.values, io)
  } catch (e) {
    if (e instanceof UsageError) {
      io.err.write(`pylon-sync ${name}: ${e.message}\nRun \`pylon-sync ${name} --help\`.\n`)
      return 2
    }
    if (e && typeof e.code === 'string' && e.code.startsWith('ERR_SYNC_')) {
      io.err.write(`pylon-sync ${name}: ${e.message} (${e.code})\n`)
      return e.code === 'ERR_SYNC_INVALID_ARG' ? 2 : 1
    }
    throw e
  }
}

module.exports = { main }
