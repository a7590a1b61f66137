'use strict'
// A user's script, run from a folder where pylon-sync-native was installed by
// name: mirror the app, write, see the write acknowledged, reopen the replica
// and find the write still there. `node smoke.cjs <url> <dbPath> <label>`.
const { createSyncEngine } = require('pylon-sync-native')
const { isMainThread, parentPort } = require('node:worker_threads')

const [url, dbPath, label] = process.argv.slice(2)

async function until(what, check) {
  for (const deadline = Date.now() + 15000; !check(); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function main() {
  const title = `${label} ${process.pid} ${Date.now()}`
  const engine = createSyncEngine(url, { dbPath })
  await engine.start()
  await engine.insert('Todo', { title, done: false })
  await until('the write to be acknowledged', () => engine.mutations.list().length === 0)
  await engine.close()
  const again = createSyncEngine(url, { dbPath })
  await again.start()
  if (!again.store.list('Todo').some((r) => r.title === title)) throw new Error('the write was not in the reopened replica')
  await again.close()
  return `ok ${label}`
}

main().then(
  (line) => (isMainThread ? console.log(line) : parentPort.postMessage(line)),
  (e) => {
    console.error(e)
    process.exitCode = 1
  },
)
