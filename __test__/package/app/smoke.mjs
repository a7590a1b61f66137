// The package by `import` (Node, `bun run`). `node smoke.mjs <url> <dbPath> <label>`.
import sync, { createSyncEngine } from 'pylon-sync-native'
import { run } from './run.cjs'

if (sync.createSyncEngine !== createSyncEngine) throw new Error('the default export and the named exports differ')
console.log(await run(createSyncEngine, process.argv.slice(2)))
