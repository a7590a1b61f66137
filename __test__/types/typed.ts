// An engine typed by the schema `pylon-sync types` generates (schema.ts,
// from the dev server's manifest; cli.test.js checks it is what the CLI
// writes). Compiled by `tsc -p __test__/types`: every @ts-expect-error line
// must fail to compile, or the build fails.
import { createSyncEngine } from '../../sync.js'
import type { Schema, Todo } from './schema.js'

const engine = createSyncEngine<Schema>('http://127.0.0.1:4321')

async function typed(): Promise<void> {
  const todos = engine.store.list('Todo')
  const first = todos[0]
  const title: string = first.title
  const done: boolean = first.done
  const id: string = first.id
  const owner: string | null | undefined = first.userId
  const one: Todo | null = engine.store.get('Todo', id)
  void [title, done, owner, one]

  const newId: string = await engine.insert('Todo', { title: 'x', done: false })
  await engine.insert('Todo', { title: 'x', done: false, userId: null })
  await engine.update('Todo', newId, { done: true })
  await engine.delete('Todo', newId)
  const notes = engine.createInfiniteQuery('Note', { pageSize: 10, order: { body: 'asc' } })
  const body: string = notes.data[0].body
  void body

  // @ts-expect-error an unknown entity
  engine.store.list('Tdo')
  // @ts-expect-error an unknown entity
  await engine.insert('Todos', { title: 'x', done: false })
  // @ts-expect-error an unknown field
  await engine.insert('Todo', { title: 'x', done: false, titel: 'y' })
  // @ts-expect-error a required field missing
  await engine.insert('Todo', { title: 'x' })
  // @ts-expect-error a field of the wrong type
  await engine.update('Todo', newId, { done: 'yes' })
  // @ts-expect-error an unknown field in a patch
  await engine.update('Todo', newId, { finished: true })
  // @ts-expect-error ordering by a field the entity does not have
  engine.createInfiniteQuery('Note', { order: { title: 'asc' } })
  // @ts-expect-error a field the row does not have
  void first.label
}

// without a schema, any entity and field, as before
const loose = createSyncEngine('http://127.0.0.1:4321')
async function untyped(): Promise<void> {
  await loose.insert('Anything', { any: 1 })
  const rows = loose.store.list('Anything')
  const v: unknown = rows[0]?.whatever
  void v
}

void typed
void untyped

// SQL over the replica: rows typed by the caller, parameters checked
async function sql(): Promise<void> {
  const rows = await loose.query<{ title: string; n: number }>('SELECT title, count(*) AS n FROM Todo WHERE done = ? GROUP BY title', [0])
  const n: number = rows[0].n
  const any = await loose.query('SELECT * FROM Todo WHERE at > :at', { at: new Date() })
  const cell: string | number | null = any[0].title
  const stop: () => void = loose.watch('SELECT id FROM Todo', null, (r) => void r.length, { onError: (e) => void e.code })
  stop()
  // @ts-expect-error a parameter SQLite cannot bind
  await loose.query('SELECT ?', [Symbol('x')])
  // @ts-expect-error the listener comes third
  loose.watch('SELECT 1', (rows: unknown[]) => void rows)
  void n
  void cell
}
void sql
