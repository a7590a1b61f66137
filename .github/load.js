// Loads the addon next to this checkout and opens and closes an engine:
// the release workflow's check that a binary runs on its platform.
const { createSyncEngine } = require('../sync.js')

createSyncEngine('http://127.0.0.1:9', { persist: false })
  .close()
  .then(() => console.log(`loaded on ${process.platform} ${process.arch}, Node ${process.version}`))
