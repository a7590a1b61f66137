'use strict'
// Mirrors a Pylon app into ./data/replica.db, prints every change to its
// Todo rows as it happens, and adds one Todo of its own. The write is on
// disk before `insert` resolves: stop the script (Ctrl-C) or the server at
// any moment, and it reaches the server on a later run.
//   PYLON_URL=http://127.0.0.1:4321 [PYLON_TOKEN=…] node mirror.cjs
const path = require('node:path')
const { createSyncEngine } = require('pylon-sync-native')

const url = process.env.PYLON_URL ?? 'http://127.0.0.1:4321'
const engine = createSyncEngine(url, {
  dbPath: path.join(__dirname, 'data', 'replica.db'),
  token: process.env.PYLON_TOKEN,
})

engine.on('error', (e) => console.error(`sync error ${e.code}: ${e.message}`))

async function main() {
  await engine.start() // offline is fine: the replica on disk is read either way
  let shown = new Map(engine.store.list('Todo').map((row) => [row.id, JSON.stringify(row)]))
  console.log(`mirrored ${shown.size} Todo rows (${engine.status.phase})`)

  engine.store.subscribe(() => {
    const now = new Map(engine.store.list('Todo').map((row) => [row.id, JSON.stringify(row)]))
    for (const [id, json] of now) {
      if (!shown.has(id)) console.log(`+ Todo ${id} ${json}`)
      else if (shown.get(id) !== json) console.log(`~ Todo ${id} ${json}`)
    }
    for (const id of shown.keys()) if (!now.has(id)) console.log(`- Todo ${id}`)
    shown = now
  })

  const title = process.env.TITLE ?? `written by process ${process.pid}`
  const id = await engine.insert('Todo', { title, done: false })
  console.log(`wrote ${id} "${title}": on disk now, sent when the server is reachable`)

  // close() sends what is queued first (for up to 5 s), then stops
  process.once('SIGINT', () => engine.close().then(() => process.exit(0)))
  process.once('SIGTERM', () => engine.close().then(() => process.exit(0)))
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
