// mirror.cjs as an ES module: the same job, with `import` and top-level await.
//   PYLON_URL=http://127.0.0.1:4321 [PYLON_TOKEN=…] node mirror.mjs
import { fileURLToPath } from 'node:url'
import { createSyncEngine } from 'pylon-sync-native'

const url = process.env.PYLON_URL ?? 'http://127.0.0.1:4321'
const engine = createSyncEngine(url, {
  dbPath: fileURLToPath(new URL('./data/replica.db', import.meta.url)),
  token: process.env.PYLON_TOKEN,
})
engine.on('error', (e) => console.error(`sync error ${e.code}: ${e.message}`))

await engine.start()
const rows = () => new Map(engine.store.list('Todo').map((row) => [row.id, JSON.stringify(row)]))
let shown = rows()
console.log(`mirrored ${shown.size} Todo rows (${engine.status.phase})`)
engine.store.subscribe(() => {
  const now = rows()
  for (const [id, json] of now) if (shown.get(id) !== json) console.log(`${shown.has(id) ? '~' : '+'} Todo ${id} ${json}`)
  for (const id of shown.keys()) if (!now.has(id)) console.log(`- Todo ${id}`)
  shown = now
})

const title = process.env.TITLE ?? `written by process ${process.pid}`
const id = await engine.insert('Todo', { title, done: false })
console.log(`wrote ${id} "${title}": on disk now, sent when the server is reachable`)
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => engine.close().then(() => process.exit(0)))
