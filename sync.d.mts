// The ESM view of the same types: sync.mjs re-exports sync.js's names and
// its default export.
export * from './sync.js'
import sync from './sync.js'
export default sync
