// A CommonJS consumer, type-checked with tsc (strict, nodenext).
import sync = require('pylon-sync-native')

const engine = sync.createSyncEngine('http://127.0.0.1:4321', { persist: false })
const rows: readonly sync.Row[] = engine.store.list('Todo')
export const seen: [number, boolean] = [rows.length, new Error() instanceof sync.SyncError]
