// The same script as smoke.cjs, as an ES module (Node `import`, `bun run`).
import { createSyncEngine } from 'pylon-sync-native'
import sync from 'pylon-sync-native'

const [url, dbPath, label] = process.argv.slice(2)
if (sync.createSyncEngine !== createSyncEngine) throw new Error('the default export and the named exports differ')

const until = async (what, check) => {
  for (const deadline = Date.now() + 15000; !check(); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

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
console.log(`ok ${label}`)
