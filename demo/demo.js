'use strict'
// The main job, end to end: a Pylon-protocol dev server, two engines on it,
// optimistic writes flowing from one replica to the other over WebSocket,
// presence, and a durable replica that comes back from disk with its
// offline writes.
const path = require('node:path')
const os = require('node:os')
const fs = require('node:fs')
const { createSyncEngine, mutationQueueListener } = require('pylon-sync-native') // the package, by name, as users load it
const { startDevserver, api } = require('../__test__/helpers.js')

const wait = (ms) => new Promise((r) => setTimeout(r, ms))

async function main() {
  const server = await startDevserver()
  console.log(`dev server on ${server.url}`)
  await server.control('seed', { entity: 'Todo', count: 20000, data: { title: 'seeded {i}', done: false } })

  const dbPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pylon-sync-demo-')), 'replica.db')
  const login = async (user) => (await api(server.url, 'POST', '/api/auth/session', { user_id: user })).body.token
  const [aliceToken, bobToken] = [await login('alice'), await login('bob')]
  const alice = createSyncEngine(server.url, { dbPath, token: aliceToken })
  const bob = createSyncEngine(server.url, { persist: false, token: bobToken })
  mutationQueueListener(alice.mutations, ({ status, change, error }) => {
    if (status === 'failed') console.log(`  rejected: ${change.kind} ${change.entity}: ${error}`)
  })

  let t = Date.now()
  await Promise.all([alice.start(), bob.start()])
  console.log(`both engines bootstrapped ${alice.store.list('Todo').length} rows in ${Date.now() - t} ms (the server log holds only 10,000 events)`)

  const temp = await alice.insert('Todo', { title: 'buy milk', done: false })
  console.log(`alice inserted ${temp} (durable in ${dbPath})`)
  t = Date.now()
  while (!bob.store.list('Todo').some((r) => r.title === 'buy milk')) await wait(10)
  const row = bob.store.list('Todo').find((r) => r.title === 'buy milk')
  console.log(`bob sees it as ${row.id} after ${Date.now() - t} ms over ${bob.connection.transport}`)

  alice.setPresence({ editing: row.id })
  while (bob.presence.length === 0) await wait(10)
  console.log(`bob sees ${bob.presence[0].from} editing ${bob.presence[0].data.editing}`)

  // a write the app's manifest rules out is refused when it is made, and nothing is queued
  await alice.insert('Todo', { done: true }).then(
    () => console.log('  a Todo with no title was accepted?!'),
    (e) => console.log(`a Todo with no title is refused at once: ${e.code} ${e.message}`),
  )

  await alice.stop()
  await alice.update('Todo', row.id, { done: true })
  console.log('alice updated the row while stopped, then closed')
  await alice.close()

  const again = createSyncEngine(server.url, { dbPath, token: aliceToken })
  t = Date.now()
  await again.start()
  console.log(`reopened from disk with ${again.store.list('Todo').length} rows in ${Date.now() - t} ms`)
  while (!bob.store.get('Todo', row.id)?.done) await wait(10)
  console.log(`bob sees done = ${bob.store.get('Todo', row.id).done}; writes still queued: ${again.mutations.list().length}`)

  await Promise.all([again.close(), bob.close()])
  await server.stop()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
