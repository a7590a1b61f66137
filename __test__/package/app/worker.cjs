'use strict'
// smoke.cjs inside a worker thread: the addon loads and runs off the main thread.
const { Worker } = require('node:worker_threads')
const path = require('node:path')

const [url, dbPath, label] = process.argv.slice(2)
const worker = new Worker(path.join(__dirname, 'smoke.cjs'), { argv: [url, dbPath, label] })
worker.on('message', (line) => console.log(line))
worker.on('error', (e) => {
  console.error(e)
  process.exitCode = 1
})
worker.on('exit', (code) => {
  if (code !== 0) process.exitCode = 1
})
