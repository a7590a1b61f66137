// Compiled with `tsc --noEmit`: the public types accept the spec's examples.
import { createSyncEngine, mutationQueueListener, getServerData, fetchList, createWriteThroughStorage, type Row } from '../../sync.js'

async function main(): Promise<void> {
  const storage = createWriteThroughStorage({}, async () => {})
  const engine = createSyncEngine('http://127.0.0.1:4321', { transport: 'poll', appName: 'default', persist: false, storage })
  engine.hydrate(await getServerData('http://127.0.0.1:4321', ['Todo'], { token: 't' }))
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
  off()
  stop()
  await engine.close()
}
void main
