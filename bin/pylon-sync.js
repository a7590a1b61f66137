#!/usr/bin/env node
'use strict'
// The pylon-sync command: mirror a Pylon app into a SQLite replica, look
// inside a replica, check a server, generate types. Each command is a
// module of lib/cli/, written over the package's public API.

const { main } = require('../lib/cli/main.js')

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (e) => {
    process.stderr.write(`pylon-sync: ${e && e.stack ? e.stack : e}\n`)
    process.exitCode = 70 // an internal error, not the user's
  },
)
