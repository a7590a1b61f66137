// Mirrors a Pylon app into ./data/replica.db and serves the replica with
// Bun.serve: GET /todos answers from memory (no request to Pylon), POST
// /todos answers once the write is on disk (it reaches Pylon when it can).
//   PYLON_URL=http://127.0.0.1:4321 [PYLON_TOKEN=…] [PORT=3001] bun run mirror.ts
import { createSyncEngine } from 'pylon-sync-native'

const engine = createSyncEngine(process.env.PYLON_URL ?? 'http://127.0.0.1:4321', {
  dbPath: `${import.meta.dir}/data/replica.db`,
  token: process.env.PYLON_TOKEN,
})
engine.on('error', (e) => console.error(`sync error ${e.code}: ${e.message}`))
await engine.start()
console.log(`mirrored ${engine.store.list('Todo').length} Todo rows`)

const server = Bun.serve({
  hostname: '127.0.0.1',
  port: Number(process.env.PORT ?? 3001),
  async fetch(req) {
    const { pathname } = new URL(req.url)
    if (pathname === '/todos' && req.method === 'GET') return Response.json(engine.store.list('Todo'))
    if (pathname === '/todos' && req.method === 'POST') {
      const { title } = (await req.json()) as { title: string }
      const id = await engine.insert('Todo', { title, done: false })
      return Response.json({ id }, { status: 201 })
    }
    if (pathname === '/status') return Response.json(engine.status)
    return new Response('not found', { status: 404 })
  },
})
console.log(`serving the replica on http://127.0.0.1:${server.port}`)

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, async () => {
    server.stop()
    await engine.close() // sends what is queued first (up to 5 s)
    process.exit(0)
  })
}
