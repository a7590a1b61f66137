// Public types of pylon-sync-native (the spec's @pylonsync/sync API). The
// shapes the engine reports are generated from the binding (index.d.ts);
// this file adds the JavaScript façade around them.

import type {
  Change,
  Connection,
  Diagnostics,
  DirectOptions,
  EngineOptions,
  ErrorInfo,
  MutationInfo,
  Peer,
  ReplicaInfo,
  ServerCheck,
  Session,
  SyncStatus,
  TimeoutOptions,
} from './index.js'

export type {
  Change,
  Connection,
  Diagnostics,
  DirectOptions,
  EngineOptions,
  ErrorInfo,
  Peer,
  ReplicaInfo,
  ServerCheck,
  Session,
  SyncStatus,
  TimeoutOptions,
}

/** A direct call's options: the binding's, and a signal that abandons the call (it rejects with the signal's reason, as `fetch` does). */
export interface CallOptions extends DirectOptions {
  signal?: AbortSignal
}

/** A row: a JSON object whose `id` is the row id. */
export type Row = { id: string; [field: string]: unknown }

/**
 * An app's entities and their fields, as `pylon-sync types <url>` writes them: `{ Todo: { title: string; … } }`.
 * `createSyncEngine<Schema>(url)` then types the store, the writes and the queries by entity.
 */
export type SchemaShape = object

/** The schema of an engine made without one: any entity, any fields. */
export interface AnySchema {
  [entity: string]: { [field: string]: unknown }
}

/** The entity names of a schema. */
export type EntityName<S extends SchemaShape> = keyof S & string

/** A stored row of entity `E`: its fields and its `id`. */
export type RowOf<S extends SchemaShape, E extends EntityName<S>> = { id: string } & S[E]

/** Every error the engine reports. */
export type SyncErrorCode = ErrorInfo['code']

export declare class SyncError extends Error {
  readonly code: SyncErrorCode
  /** HTTP status, for errors the server answered. */
  readonly status?: number
  /** The server's own code (`POLICY_DENIED`, `INSERT_FAILED`, …). */
  readonly serverCode?: string
  /** Where a background error happened ("sync", "pull", "session"), for `error` events. */
  readonly context?: string
}

/** Synchronous key-value storage; the token is read from `pylon_token` (or `pylon:<appName>:token`). */
export interface Storage {
  get(key: string): string | null
  set(key: string, value: string): void
  remove(key: string): void
}

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace'

/**
 * Receives the engine's log records. Called on the JS thread after the fact: records JavaScript has not
 * taken yet are dropped past a bound, never waited for. Never holds the process open.
 */
export type Logger = (level: LogLevel, message: string, fields: Record<string, unknown>) => void

/** `createSyncEngine`'s options: the engine's own, where the token is read from, and where logs go. */
export interface SyncEngineConfig extends EngineOptions {
  storage?: Storage
  /** This engine's log records at `logLevel` and above (stderr gets what `PYLON_SYNC_LOG` asks for, default `warn`). */
  logger?: Logger
  /** Default `info`. */
  logLevel?: LogLevel
  /**
   * Entities whose stored rows `start()` parses into JavaScript objects while it reads the replica
   * (`true`: every entity), so the first `store.list` after it is ready at once: in a fresh process
   * the parse runs beside the read instead of after it. Costs the parsed rows' memory for an entity
   * never listed. Default `false`: a list is parsed when first read.
   */
  preload?: boolean | string[]
}

/** A queued write: pending, or refused by the server and kept until removed or retried. */
export interface PendingMutation extends Omit<MutationInfo, 'status'> {
  status: 'pending' | 'failed'
}

/** A queue transition, as passed to `mutationQueueListener`. */
export type MutationEvent = MutationInfo

/** A decoded binary (CRDT) frame. */
export interface BinaryFrame {
  /** 0x10 snapshot, 0x11 update. */
  type: number
  entity: string
  rowId: string
  /** The CRDT bytes (a view into the raw frame). */
  payload: Uint8Array
}

export interface TopicMessage {
  topic: string
  from: string | null
  data: unknown
}

export interface Hydration {
  entities: Record<string, Row[]>
  cursor: { last_seq: number }
  /** Whose rows these are (the session of the token they were read with); a token of another identity clears them once its session is known. */
  identity?: { user_id: string | null; tenant_id: string | null }
}

export interface Store<S extends SchemaShape = AnySchema> {
  /**
   * Visible rows (server rows with pending local writes applied), ordered by id. Frozen; cached until the
   * entity changes. Reads within one synchronous turn of the event loop see one snapshot.
   */
  list<E extends EntityName<S>>(entity: E): readonly RowOf<S, E>[]
  get<E extends EntityName<S>>(entity: E, id: string): RowOf<S, E> | null
  /** Fires after changes of the visible rows (at most once per turn of the event loop), and when other engines' presence changes. */
  subscribe(listener: () => void): () => void
}

export interface Mutations {
  list(): PendingMutation[]
  get(id: string): PendingMutation | null
  /** Drops a mutation and undoes its optimistic effect; resolves whether it existed. */
  remove(id: string): Promise<boolean>
  /** Re-queues a failed mutation. */
  retry(id: string): Promise<void>
  /**
   * Resolves when the write is acknowledged; rejects with its SyncError when refused or removed. `id` is a
   * mutation id, or the row id an insert resolved with (the last write to that row queued now).
   */
  settled(id: string): Promise<void>
  subscribe(listener: (event: MutationEvent) => void): () => void
}

export interface InfiniteQuery<R = Row> {
  readonly data: readonly R[]
  readonly hasMore: boolean
  readonly loading: boolean
  loadMore(): Promise<void>
  subscribe(listener: () => void): () => void
  /** Forgets every page and notifies subscribers. */
  reset(): void
}

export interface EngineEvents {
  status: SyncStatus
  error: SyncError
  session: Session | null
  resync: { type: 'resync'; reason: 'resync' | 'identity' | 'server' }
  /** `total` and `fraction` (0..1) where the server lets the engine know. */
  progress: { type: 'progress'; entity: string; rows: number; total: number | null; fraction: number | null; done: boolean }
  change: undefined
  mutation: MutationEvent
  connection: Connection
  presence: Peer[]
  topic: TopicMessage
  /** Rooms API events (`join`, `leave`, room `presence`, `broadcast`), as the server sent them. */
  room: Record<string, unknown>
}

/** A value a query parameter binds: Dates as ISO-8601 text, booleans as 0/1, arrays and plain objects as their JSON text. */
export type SqlValue = string | number | bigint | boolean | null | Date | unknown[] | { [key: string]: unknown }
/** Query parameters: an array binds `?` by position; an object binds `:name`, `@name` or `$name`. */
export type SqlParams = SqlValue[] | { [name: string]: SqlValue }
/** A row a query returns, keyed by column: SQLite's values (booleans as 0/1, JSON fields as text, blobs as hex). */
export type SqlRow = { [column: string]: string | number | null }

export declare class SyncEngine<S extends SchemaShape = AnySchema> {
  readonly store: Store<S>
  readonly mutations: Mutations
  readonly status: SyncStatus
  readonly cursor: number
  readonly connection: Connection
  /** A WebSocket is open. */
  readonly connected: boolean
  readonly clientId: string
  /** Other engines' presence. */
  readonly presence: Peer[]
  /** From here until `stop()` or `close()` the engine keeps the process alive, as an open socket does. */
  start(): Promise<void>
  stop(): Promise<void>
  /**
   * Sends what is queued (for at most `flushTimeout` ms, default 5000; `flush: false` skips it), then
   * stops and releases the replica; what is left stays on disk for the next start. A second call does nothing.
   */
  close(options?: { flush?: boolean; flushTimeout?: number }): Promise<void>
  /** Lets the process exit while the engine runs (as `socket.unref()`). */
  unref(): this
  /** Keeps the process alive while the engine runs again (the default). */
  ref(): this
  /** One sync round now; rejects when it fails. */
  sync(): Promise<void>
  /** Resolves once a round has reached the server's head since start (`status.hasSynced`). */
  waitForFirstSync(options?: { signal?: AbortSignal }): Promise<void>
  /** Read-your-writes: every write queued before the call acknowledged, and the replica pulled past it. */
  caughtUp(): Promise<void>
  /** Counters (monotonic) and the queue as it stands. */
  diagnostics(): Diagnostics
  /** Resolves the temporary id once the write is durable on disk. It keeps naming the row after the server names it (update, delete, store.get). */
  insert<E extends EntityName<S>>(entity: E, data: S[E]): Promise<string>
  update<E extends EntityName<S>>(entity: E, id: string, patch: Partial<S[E]>): Promise<void>
  delete(entity: EntityName<S>, id: string): Promise<void>
  notifySessionChanged(): Promise<Session | null>
  resolvedSession(): Session | null
  resetReplica(): Promise<void>
  /** Shows the rows at once (before start()); start() stores them. Refused when older than the replica or of another identity. */
  hydrate(data: Hydration): Promise<void>
  /**
   * One read-only SQL statement over the replica: each entity is a view with a column per field, showing what
   * `store.list` shows (pending writes included). A statement that writes is refused (ERR_SYNC_INVALID_ARG);
   * SQLite's errors reject with ERR_SYNC_QUERY. Runs off the JS thread; `close()` interrupts it.
   */
  query<R = SqlRow>(sql: string, params?: SqlParams | null): Promise<R[]>
  /**
   * A live query: `listener` gets the rows now, and again after a change to an entity the statement reads
   * (re-run at most once per turn of the event loop) whenever they differ. Returns an unsubscribe function.
   */
  watch<R = SqlRow>(
    sql: string,
    params: SqlParams | null | undefined,
    listener: (rows: R[]) => void,
    options?: { onError?: (error: SyncError) => void },
  ): () => void
  createInfiniteQuery<E extends EntityName<S>>(
    entity: E,
    options?: { pageSize?: number; order?: { [F in (keyof S[E] & string) | 'id']?: 'asc' | 'desc' } },
  ): InfiniteQuery<RowOf<S, E>>
  on<K extends keyof EngineEvents>(type: K, listener: (event: EngineEvents[K]) => void): () => void
  /** Any JSON value; null withdraws it. Re-sent after every reconnect. */
  setPresence(data: unknown): void
  /** False when no WebSocket is open (nothing is queued). */
  publishTopic(topic: string, data: unknown): boolean
  onTopic(topic: string, handler: (data: unknown, meta: { topic: string; from: string | null }) => void): () => void
  onBinaryFrame(handler: (bytes: Uint8Array, frame: BinaryFrame | null) => void): () => void
  subscribeCrdt(entity: string, rowId: string): void
  unsubscribeCrdt(entity: string, rowId: string): void
}

/** An engine; `createSyncEngine<Schema>(url)` types it by the schema `pylon-sync types` generates. */
export declare function createSyncEngine<S extends SchemaShape = AnySchema>(baseUrl: string, options?: SyncEngineConfig): SyncEngine<S>
export declare function defaultStorage(): Storage
export declare function createWriteThroughStorage(
  seed: Record<string, string> | null | undefined,
  onWrite: (key: string, value: string | null) => void | Promise<void>,
): Storage
export declare function mutationQueueListener(mutations: Mutations, listener: (event: MutationEvent) => void): () => void
export declare function getServerData(baseUrl: string, entities: string[], options?: CallOptions): Promise<Hydration>

export declare function fetchList(baseUrl: string, entity: string, options?: CallOptions): Promise<Row[]>
export declare function fetchById(baseUrl: string, entity: string, id: string, options?: CallOptions): Promise<Row | null>
export declare function insert(baseUrl: string, entity: string, data: Record<string, unknown>, options?: CallOptions): Promise<{ id: string }>
export declare function update(baseUrl: string, entity: string, id: string, patch: Record<string, unknown>, options?: CallOptions): Promise<void>
export declare function remove(baseUrl: string, entity: string, id: string, options?: CallOptions): Promise<void>
export declare function callFn(baseUrl: string, name: string, args?: Record<string, unknown>, options?: CallOptions): Promise<unknown>
export declare function fetchManifest(baseUrl: string, options?: CallOptions): Promise<Record<string, unknown>>

/** What a replica file holds; the file is opened read-only and never changed. */
export declare function inspectReplica(dbPath: string): Promise<ReplicaInfo>
/** One read-only SQL statement on a replica file, as of its last commit, without an engine; the file is never changed. */
export declare function queryReplica<R = SqlRow>(dbPath: string, sql: string, params?: SqlParams | null): Promise<R[]>
/** Checks a server the way the engine uses it, one result per check (health, tls, session, manifest, log, websocket, sse). */
export declare function checkServer(baseUrl: string, options?: EngineOptions): Promise<ServerCheck[]>
