'use strict'
// What a user's script does, given the package's `createSyncEngine` (as
// `require` or `import` gave it): mirror the app, write, see the write
// acknowledged, reopen the replica with no server to reach and find the
// write there, from the file. Resolves `ok <label>`.

async function until(what, check) {
  for (const deadline = Date.now() + 15000; !check(); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function run(createSyncEngine, [url, dbPath, label]) {
  const title = `${label} ${process.pid} ${Date.now()}`
  const engine = createSyncEngine(url, { dbPath })
  await engine.start()
  await engine.insert('Todo', { title, done: false })
  await until('the write to be acknowledged', () => engine.mutations.list().length === 0)
  await engine.close()
  const again = createSyncEngine('http://127.0.0.1:9', { dbPath }) // nothing listens there
  await again.start()
  if (!again.store.list('Todo').some((r) => r.title === title)) throw new Error('the write was not in the reopened replica')
  await again.close()
  return `ok ${label}`
}

module.exports = { run }
