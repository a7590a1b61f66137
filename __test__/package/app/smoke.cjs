'use strict'
// The package by `require`, on the main thread or in a worker (worker.cjs).
// `node smoke.cjs <url> <dbPath> <label>`.
const { createSyncEngine } = require('pylon-sync-native')
const { isMainThread, parentPort } = require('node:worker_threads')
const { run } = require('./run.cjs')

run(createSyncEngine, process.argv.slice(2)).then(
  (line) => (isMainThread ? console.log(line) : parentPort.postMessage(line)),
  (e) => {
    console.error(e)
    process.exitCode = 1
  },
)
