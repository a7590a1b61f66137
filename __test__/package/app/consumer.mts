// An ES module consumer, type-checked with tsc (strict, nodenext).
import sync, { createSyncEngine, SyncError, type Row } from 'pylon-sync-native'

const engine = createSyncEngine('http://127.0.0.1:4321', { persist: false })
const rows: readonly Row[] = engine.store.list('Todo')
const same: typeof createSyncEngine = sync.createSyncEngine
export const seen: [number, boolean, typeof same] = [rows.length, new Error() instanceof SyncError, same]
