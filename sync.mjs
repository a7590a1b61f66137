// ESM entry: the same module as sync.js.
import sync from './sync.js'

export const {
  createSyncEngine,
  SyncEngine,
  SyncError,
  defaultStorage,
  createWriteThroughStorage,
  mutationQueueListener,
  getServerData,
  fetchList,
  fetchById,
  insert,
  update,
  remove,
  callFn,
  fetchManifest,
  inspectReplica,
  queryReplica,
  checkServer,
} = sync
export default sync
