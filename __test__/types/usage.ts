// Compiled with `tsc --noEmit`: the public types accept the spec's examples.
import { createSyncEngine, mutationQueueListener, getServerData, fetchList, createWriteThroughStorage, type Row } from '../../sync.js'

async function main(): Promise<void> {
  const storage = createWriteThroughStorage({}, async () => {})
  const engine = createSyncEngine('http://127.0.0.1:4321', { transport: 'poll', appName: 'default', persist: false, storage })
  engine.hydrate(await getServerData('http://127.0.0.1:4321', ['Todo'], { token: 't', timeout: 2000, signal: AbortSignal.timeout(3000) }))
  createSyncEngine('http://127.0.0.1:4321', { timeout: { connect: 500, request: 5000 } })
  await engine.start()
  const todos: readonly Row[] = engine.store.list('Todo')
  const off = engine.store.subscribe(() => console.log(todos.length))
  const tempId: string = await engine.insert('Todo', { title: 'x', done: false })
  await engine.update('Todo', tempId, { done: true })
  await engine.delete('Todo', tempId)
  const stop = mutationQueueListener(engine.mutations, ({ status, change, error }) => {
    if (status === 'failed') console.log(`failed to ${change.kind} ${change.entity}: ${error}`)
  })
  const query = engine.createInfiniteQuery('Post', { pageSize: 20, order: { createdAt: 'desc' } })
  await query.loadMore()
  engine.on('error', (e) => console.log(e.code, e.status))
  const rows: Row[] = await fetchList('http://127.0.0.1:4321', 'Todo', { token: 't' })
  console.log(rows, query.data, engine.resolvedSession()?.userId, engine.status.phase)
  const live = createSyncEngine('http://127.0.0.1:4321', { transport: 'auto', wsUrl: 'ws://127.0.0.1:4322', pingInterval: 15000 })
  live.setPresence({ x: 100, y: 200, label: 'Alice' })
  const sent: boolean = live.publishTopic('chat:room_42', { from: 'alice', text: 'hi' })
  const offTopic = live.onTopic('chat:room_42', (data, { from }) => console.log(from, data, sent))
  live.subscribeCrdt('Document', 'doc_42')
  const unregister = live.onBinaryFrame((bytes, frame) => console.log(bytes.length, frame?.entity, frame?.payload.length))
  live.unsubscribeCrdt('Document', 'doc_42')
  live.on('connection', (c) => console.log(c.state, c.transport, c.lastError?.code))
  console.log(live.presence.map((p) => p.from), live.connection.attempts, live.connected)
  offTopic()
  unregister()
  off()
  stop()
  await engine.close()
  await live.close()
}
void main
