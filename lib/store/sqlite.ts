import { accessSync, constants, mkdirSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import type BetterSqlite3 from 'better-sqlite3'
import { applicationId, columns, expireQuery, filterFields, listQuery, migrations, schemaVersion, toRecord, type TaskRow } from './sqlite-schema.js'
import { finalStatuses, InvalidCursorError, StoreUnavailableError, type FinalStatus, type ListFilter, type ListPage, type RecordPatch, type Store, type TaskRecord, type TaskStatus } from './types.js'

type Database = BetterSqlite3.Database
type Driver = typeof BetterSqlite3
type Statement = BetterSqlite3.Statement<unknown[], unknown>

/** Options of the SQLite store. */
export interface SqliteStoreOptions {
  /**
   * The database file (a path or a `file:` URL). Its directory is created when missing.
   * Beside it SQLite keeps `<path>-wal` and `<path>-shm`, and the store `<path>-lock`.
   * `':memory:'` and `''` are refused: use `MemoryStore` for records that need not last.
   */
  path: string | URL
  /**
   * How long one write may wait for another connection's lock, in ms. SQLite waits
   * synchronously, blocking the event loop, so keep it small: past it the write is
   * retried later (see `busyRetries`), without blocking.
   * @default 5
   */
  busyTimeout?: number
  /**
   * How many times a write that finds the file busy or locked (SQLITE_BUSY, SQLITE_LOCKED)
   * is retried, 10 ms after the first refusal, then twice as long each time up to 200 ms
   * (about 1.3 s over 10 retries). Past it, every write waiting rejects with
   * `StoreUnavailableError` (the REST API answers 503) and the store's view goes back to
   * what the file holds.
   * @default 10
   */
  busyRetries?: number
  /**
   * The most rows (tasks and messages) one transaction writes; what is left goes in the
   * next event-loop turn. A transaction also ends after about 10 ms of writing, so that
   * store work never blocks the event loop for long.
   * @default 1000
   */
  maxBatch?: number
}

/** Why a SQLite store could not open, or refused a call. */
export type SqliteStoreErrorReason = 'driver' | 'unwritable' | 'foreign' | 'version' | 'locked' | 'closed'

/**
 * Thrown by `new SqliteStore()` when the file cannot be used (the message names the path
 * and the reason), and by every method once the store is closed.
 */
export class SqliteStoreError extends Error {
  override name = 'SqliteStoreError'
  /** `driver`: better-sqlite3 is missing or does not load; `unwritable`: the path cannot be created, opened or written; `foreign`: the file is not a store of ours; `version`: a newer fastify-task-api wrote it; `locked`: another process (or store) has it open; `closed`: `close()` was called. */
  readonly reason: SqliteStoreErrorReason

  constructor (reason: SqliteStoreErrorReason, message: string, options?: ErrorOptions) {
    super(message, options)
    this.reason = reason
  }
}

/** A record the store holds in memory: every live one, and any other with writes not yet committed. */
interface Entry {
  /** The row id: creation order. */
  id: number
  record: TaskRecord
  /** The `n` of `record.messages[0]` in the messages table. */
  first: number
  /** Removed; the row goes at the next commit. */
  deleted: boolean
  /** The row exists in the file (as of the last commit). */
  saved: boolean
  /** What the file holds of this record, to write only what changed. */
  savedFirst: number
  savedEnd: number
  savedStatus: TaskStatus
  savedFinished: string | null
  outputsJson: string
  inputsJson: string
  /** The calls whose changes wait for the next commit of this entry. */
  waiters: Waiter[]
}

interface Waiter {
  promise: Promise<unknown>
  resolve: (value: unknown) => void
  reject: (err: Error) => void
  value: unknown
}

/** The fields a patch may set, besides messages. Anything else in a patch is ignored. */
const patchable = ['status', 'progress', 'target', 'outputs', 'error', 'attempt', 'started', 'finished', 'seq', 'messagesDropped'] as const

/** A transaction writes for at most about this long (ms), then commits: the rest goes next turn. */
const turnBudget = 10
/** Background checkpoints: how often (ms), and past how many WAL frames the WAL is also truncated. */
const checkpointInterval = 250
const truncateFrames = 4096
const checkpointerFlag = 'fastify-task-api:sqlite-checkpointer'
const cursorPattern = /^[1-9][0-9]{0,15}$/

/**
 * A store in a SQLite file (better-sqlite3, WAL mode): records outlive the process, so a
 * restarted server finds its tasks.
 *
 * Writes are grouped: the calls made in one event-loop turn change the store's in-memory
 * view at once (a `get` right after sees them) and reach the file in one transaction at
 * the end of the turn; their promises resolve once it has committed, so whatever the
 * server publishes is on disk first. A transaction writes at most `maxBatch` rows or about
 * 10 ms of work, the rest the next turn. Live records stay in memory (they change
 * often); finished ones are read from the file. Checkpoints (copying the WAL into the
 * database, and the fsyncs) run in a worker thread, off the event loop.
 *
 * Durability: WAL with `synchronous = NORMAL`. A commit survives the process dying in any
 * way (SIGKILL, a crash, OOM): it is in the WAL, which the operating system writes out.
 * A power loss or an operating-system crash may lose the last commits before it (those
 * since the last checkpoint, which runs every quarter of a second while there are
 * writes), never the file's consistency.
 *
 * One process per file: the store holds an exclusive lock on `<path>-lock` while it is
 * open (the operating system releases it when the process ends, even by SIGKILL), and a
 * second store on the same file, in this process or another, fails with reason `locked`:
 * two servers would run the same pending tasks twice. Other connections may read the
 * file meanwhile (the sqlite3 shell, a backup); one that writes makes the store's writes
 * wait and retry (see `busyRetries`). The lock is an fcntl lock: keep the file on a local
 * disk, not a network file system.
 */
export class SqliteStore implements Store {
  /** The database file, absolute. */
  readonly path: string
  readonly #db: Database
  readonly #lock: Database
  readonly #busyRetries: number
  readonly #maxBatch: number
  /** Live records, and any other whose changes are not yet committed, by uuid. */
  readonly #entries = new Map<string, Entry>()
  /** Entries with changes to write, in the order they were first changed. */
  readonly #dirty = new Set<Entry>()
  readonly #sql: ReturnType<typeof prepare>
  readonly #lists = new Map<number, Statement>()
  #lastId: number
  #scheduled: ReturnType<typeof setImmediate> | undefined
  /** Whether the write loop runs (it picks up what is queued meanwhile), and its promise. */
  #writing = false
  #written: Promise<void> = Promise.resolve()
  #checkpointer: Worker | undefined
  #closing: Promise<void> | undefined
  #closed = false

  constructor (options: SqliteStoreOptions) {
    if (typeof options !== 'object' || options === null) throw new TypeError(`options must be an object with a path, got ${String(options)}`)
    const busyTimeout = options.busyTimeout ?? 5
    if (!Number.isInteger(busyTimeout) || busyTimeout < 0) throw new TypeError(`options.busyTimeout must be an integer >= 0, got ${String(busyTimeout)}`)
    const busyRetries = options.busyRetries ?? 10
    if (!Number.isInteger(busyRetries) || busyRetries < 0) throw new TypeError(`options.busyRetries must be an integer >= 0, got ${String(busyRetries)}`)
    const maxBatch = options.maxBatch ?? 1000
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new TypeError(`options.maxBatch must be a positive integer, got ${String(maxBatch)}`)
    this.path = filePath(options.path)
    this.#busyRetries = busyRetries
    this.#maxBatch = maxBatch

    const driver = loadDriver()
    prepareDirectory(this.path)
    const db = openDatabase(driver.Database, this.path, busyTimeout)
    try {
      checkOwnership(db, this.path)
    } catch (err) {
      db.close()
      throw err
    }
    // Ours (or empty): lock it before changing anything, so that two servers never both migrate.
    const lock = takeLock(driver.Database, this.path, db)
    try {
      configure(db, this.path)
      migrate(db, this.path)
      this.#sql = prepare(db)
    } catch (err) {
      lock.close()
      db.close()
      throw err
    }
    this.#db = db
    this.#lock = lock
    this.#lastId = (db.prepare('SELECT max(id) AS id FROM tasks').get() as { id: number | null }).id ?? 0
    for (const row of this.#sql.live.all() as TaskRow[]) {
      const entry = this.#entryOf(row, true)
      this.#entries.set(entry.record.uuid, entry)
    }
    this.#startCheckpointer(driver.path)
  }

  async create (record: TaskRecord): Promise<void> {
    this.#checkOpen()
    const inputsJson = finalStatuses.has(record.status) ? '{}' : JSON.stringify(record.inputs ?? {})
    const outputsJson = JSON.stringify(record.outputs ?? {})
    const previous = this.#find(record.uuid)
    // Replaced: the old row goes in the same write (a failure rejects this create too).
    if (previous !== undefined) this.#remove(previous).catch(() => {})
    const copy: TaskRecord = { ...record, messages: record.messages.slice() }
    if (inputsJson === '{}') copy.inputs = {}
    const entry: Entry = {
      id: ++this.#lastId,
      record: copy,
      first: 0,
      deleted: false,
      saved: false,
      savedFirst: 0,
      savedEnd: 0,
      savedStatus: copy.status,
      savedFinished: null,
      outputsJson,
      inputsJson,
      waiters: [],
    }
    this.#entries.set(copy.uuid, entry)
    await this.#enqueue(entry, undefined)
  }

  async get (uuid: string): Promise<TaskRecord | undefined> {
    this.#checkOpen()
    const entry = this.#entries.get(uuid)
    if (entry !== undefined) return entry.deleted ? undefined : entry.record
    const row = this.#sql.byUuid.get(uuid) as TaskRow | undefined
    return row === undefined ? undefined : toRecord(row, this.#messagesOf(row.id).texts)
  }

  async update (uuid: string, patch: RecordPatch): Promise<TaskRecord | undefined> {
    this.#checkOpen()
    let entry = this.#entries.get(uuid)
    if (entry === undefined) {
      // A finished record changes after all: it comes back into memory until committed.
      const row = this.#sql.byUuid.get(uuid) as TaskRow | undefined
      if (row === undefined) return undefined
      entry = this.#entryOf(row, true)
      this.#entries.set(uuid, entry)
    }
    if (entry.deleted) return undefined
    // Serialized before anything changes: a patch that cannot be stored fails alone.
    const outputsJson = patch.outputs !== undefined ? JSON.stringify(patch.outputs) : undefined
    const { record } = entry
    const fields = record as unknown as Record<string, unknown>
    for (const key of patchable) {
      if (patch[key] !== undefined) fields[key] = patch[key]
    }
    if (outputsJson !== undefined) entry.outputsJson = outputsJson
    if (patch.messages !== undefined) {
      for (const message of patch.messages) record.messages.push(message)
    }
    if (patch.trimMessages !== undefined && patch.trimMessages > 0) {
      const trimmed = Math.min(patch.trimMessages, record.messages.length)
      record.messages.splice(0, trimmed)
      entry.first += trimmed
    }
    if (finalStatuses.has(record.status) && entry.inputsJson !== '{}') {
      // The inputs were for the run: a finished record drops them.
      record.inputs = {}
      entry.inputsJson = '{}'
    }
    return this.#enqueue(entry, record) as Promise<TaskRecord>
  }

  async list (filter: ListFilter): Promise<ListPage> {
    this.#checkOpen()
    let before = Number.MAX_SAFE_INTEGER
    if (filter.cursor !== undefined) {
      if (!cursorPattern.test(filter.cursor)) throw new InvalidCursorError(`not a cursor of this store: ${JSON.stringify(filter.cursor.slice(0, 64))}`)
      before = Number(filter.cursor)
    }
    // The file is the index: what this turn changed must be in it first.
    await this.#settled()
    this.#checkOpen()
    if (filter.limit <= 0) return { records: [], next: null }
    const fields = filterFields(filter)
    let statement = this.#lists.get(fields)
    if (statement === undefined) {
      statement = this.#db.prepare(listQuery(fields))
      this.#lists.set(fields, statement)
    }
    const args: unknown[] = []
    if (filter.owner !== undefined) args.push(filter.owner)
    if (filter.status !== undefined) args.push(filter.status)
    if (filter.task !== undefined) args.push(filter.task)
    const rows = statement.all(...args, before, filter.limit + 1) as TaskRow[]
    const more = rows.length > filter.limit
    if (more) rows.pop()
    return {
      records: rows.map(row => toRecord(row, this.#messagesOf(row.id).texts)),
      next: more ? String((rows.at(-1) as TaskRow).id) : null,
    }
  }

  async delete (uuid: string): Promise<boolean> {
    this.#checkOpen()
    const entry = this.#find(uuid)
    if (entry === undefined) return false
    await this.#remove(entry)
    return true
  }

  async live (): Promise<TaskRecord[]> {
    this.#checkOpen()
    const live: Entry[] = []
    for (const entry of this.#entries.values()) {
      if (!entry.deleted && !finalStatuses.has(entry.record.status)) live.push(entry)
    }
    return live.sort((a, b) => a.id - b.id).map(entry => entry.record)
  }

  async expire (status: FinalStatus, before: string, limit: number): Promise<string[]> {
    this.#checkOpen()
    await this.#settled()
    this.#checkOpen()
    if (limit <= 0) return []
    const removed: string[] = []
    const writes: Array<Promise<unknown>> = []
    for (const row of this.#sql.expire.all(status, before, limit) as TaskRow[]) {
      let entry = this.#entries.get(row.uuid)
      if (entry !== undefined) {
        // Changed since the commit this query read: expire it only if it still qualifies.
        const { record } = entry
        if (entry.deleted || record.status !== status || record.finished === null || record.finished >= before) continue
      } else {
        entry = this.#entryOf(row, false)
        this.#entries.set(row.uuid, entry)
      }
      writes.push(this.#remove(entry))
      removed.push(row.uuid)
    }
    await Promise.all(writes)
    return removed
  }

  /**
   * Writes what is pending, checkpoints the WAL into the database file (and truncates
   * it), and closes the file and the lock. Every call after it rejects (reason `closed`).
   */
  async close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    this.#closed = true
    if (this.#scheduled !== undefined) {
      clearImmediate(this.#scheduled)
      this.#scheduled = undefined
    }
    while (this.#writing || this.#dirty.size > 0) await (this.#writing ? this.#written : this.#flush())
    await this.#stopCheckpointer()
    try {
      this.#db.pragma('wal_checkpoint(TRUNCATE)')
    } catch {
      // Another connection reads the file: the WAL stays, and the next open uses it.
    }
    this.#db.close()
    this.#lock.close()
  }

  #checkOpen (): void {
    if (this.#closed) throw new SqliteStoreError('closed', `the SQLite store ${this.path} is closed`)
  }

  /** The entry of a record that exists (in memory, or else in the file), or undefined. */
  #find (uuid: string): Entry | undefined {
    const entry = this.#entries.get(uuid)
    if (entry !== undefined) return entry.deleted ? undefined : entry
    const row = this.#sql.byUuid.get(uuid) as TaskRow | undefined
    if (row === undefined) return undefined
    const loaded = this.#entryOf(row, false)
    this.#entries.set(uuid, loaded)
    return loaded
  }

  /** Marks an entry removed; resolves once the removal is committed. */
  #remove (entry: Entry): Promise<unknown> {
    entry.deleted = true
    return this.#enqueue(entry, true)
  }

  #entryOf (row: TaskRow, withMessages: boolean): Entry {
    const { first, texts } = withMessages ? this.#messagesOf(row.id) : { first: 0, texts: [] }
    return {
      id: row.id,
      record: toRecord(row, texts),
      first,
      deleted: false,
      saved: true,
      savedFirst: first,
      savedEnd: first + texts.length,
      savedStatus: row.status,
      savedFinished: row.finished,
      outputsJson: row.outputs,
      inputsJson: row.inputs,
      waiters: [],
    }
  }

  #messagesOf (id: number): { first: number, texts: string[] } {
    const rows = this.#sql.messages.all(id) as Array<{ n: number, text: string }>
    return { first: rows[0]?.n ?? 0, texts: rows.map(row => row.text) }
  }

  /** Queues an entry's write; the promise resolves with `value` once it is committed. */
  #enqueue (entry: Entry, value: unknown): Promise<unknown> {
    const waiter = { value } as Waiter
    waiter.promise = new Promise<unknown>((resolve, reject) => {
      waiter.resolve = resolve
      waiter.reject = reject
    })
    entry.waiters.push(waiter)
    this.#dirty.add(entry)
    if (this.#scheduled === undefined && !this.#writing) {
      this.#scheduled = setImmediate(() => {
        this.#scheduled = undefined
        void this.#flush()
      })
    }
    return waiter.promise
  }

  /** Resolves once every write queued so far has committed or failed. */
  async #settled (): Promise<void> {
    const pending: Array<Promise<unknown>> = []
    for (const entry of this.#dirty) {
      for (const waiter of entry.waiters) pending.push(waiter.promise)
    }
    if (pending.length > 0) await Promise.allSettled(pending)
  }

  #flush (): Promise<void> {
    this.#written = this.#writeAll()
    return this.#written
  }

  /**
   * Writes the dirty entries, a bounded transaction per turn, retrying while the file is
   * busy. `#writing` is cleared synchronously as the loop ends: a call made by code that
   * a commit resumed then schedules the next write itself.
   */
  async #writeAll (): Promise<void> {
    this.#writing = true
    try {
      await this.#writeLoop()
    } finally {
      this.#writing = false
    }
  }

  async #writeLoop (): Promise<void> {
    let retries = 0
    while (this.#dirty.size > 0) {
      let written: Entry[]
      try {
        written = this.#transaction()
      } catch (err) {
        if (isBusy(err) && retries < this.#busyRetries) {
          await new Promise(resolve => setTimeout(resolve, Math.min(200, 10 * 2 ** retries)))
          retries++
          continue
        }
        this.#fail(err, retries)
        return
      }
      retries = 0
      this.#committed(written)
      // The next transaction in the next turn: the event loop gets its turn between them.
      if (this.#dirty.size > 0) await new Promise(resolve => setImmediate(resolve))
    }
  }

  /** One transaction: the dirty entries in order, up to the row and time budgets. */
  #transaction (): Entry[] {
    const sql = this.#sql
    const started = performance.now()
    const written: Entry[] = []
    let rows = 0
    sql.begin.run()
    try {
      for (const entry of this.#dirty) {
        rows += this.#write(entry)
        written.push(entry)
        if (rows >= this.#maxBatch || performance.now() - started > turnBudget) break
      }
      sql.commit.run()
    } catch (err) {
      try {
        if (this.#db.inTransaction) sql.rollback.run()
      } catch {
        // SQLite rolls back by itself after some errors; the first error is the one to tell.
      }
      throw err
    }
    return written
  }

  /** Writes one entry's changes since its last commit; returns how many rows it wrote. */
  #write (entry: Entry): number {
    const sql = this.#sql
    const { id, record } = entry
    if (entry.deleted) {
      if (!entry.saved) return 0
      sql.deleteMessages.run(id)
      sql.deleteTask.run(id)
      return 2
    }
    let rows = 1
    let from: number
    if (!entry.saved) {
      sql.insert.run(id, record.uuid, record.task, record.status, record.owner ?? null, record.progress ?? null, record.target ?? null,
        entry.outputsJson, record.error ?? null, record.attempt, record.created, record.started ?? null, record.finished ?? null,
        record.seq, entry.inputsJson, record.messagesDropped)
      from = entry.first
    } else {
      if (record.status !== entry.savedStatus || record.finished !== entry.savedFinished) {
        sql.updateAll.run(record.status, record.progress ?? null, record.target ?? null, entry.outputsJson, record.error ?? null,
          record.attempt, record.started ?? null, record.finished ?? null, record.seq, entry.inputsJson, record.messagesDropped, id)
      } else {
        // The indexed columns are left out: SQLite then leaves every index alone.
        sql.updateLight.run(record.progress ?? null, record.target ?? null, entry.outputsJson, record.error ?? null,
          record.attempt, record.started ?? null, record.seq, entry.inputsJson, record.messagesDropped, id)
      }
      if (entry.first > entry.savedFirst) {
        sql.trimMessages.run(id, entry.first)
        rows++
      }
      from = Math.max(entry.savedEnd, entry.first)
    }
    const end = entry.first + record.messages.length
    for (let n = from; n < end; n++) sql.insertMessage.run(id, n, record.messages[n - entry.first])
    return rows + Math.max(0, end - from)
  }

  /** After a commit: the file now holds these entries; their calls resolve. */
  #committed (written: Entry[]): void {
    for (const entry of written) {
      this.#dirty.delete(entry)
      const { record } = entry
      if (entry.deleted) {
        entry.saved = false
        if (this.#entries.get(record.uuid) === entry) this.#entries.delete(record.uuid)
      } else {
        entry.saved = true
        entry.savedFirst = entry.first
        entry.savedEnd = entry.first + record.messages.length
        entry.savedStatus = record.status
        entry.savedFinished = record.finished
        // Finished records are read from the file from now on.
        if (finalStatuses.has(record.status) && this.#entries.get(record.uuid) === entry) this.#entries.delete(record.uuid)
      }
      const waiters = entry.waiters
      entry.waiters = []
      for (const waiter of waiters) waiter.resolve(waiter.value)
    }
  }

  /**
   * The file refused the writes: every write waiting rejects, and the view goes back to
   * what the file holds (the transaction rolled back, so the file holds no part of them).
   */
  #fail (cause: unknown, retries: number): void {
    const code = (cause as { code?: unknown }).code
    const what = typeof code === 'string' ? `${code}${retries > 0 ? ` after ${retries} retries` : ''}: ` : ''
    const error = new StoreUnavailableError(`the SQLite store ${this.path} cannot write: ${what}${(cause as Error).message}`, { cause })
    const failed = [...this.#dirty]
    this.#dirty.clear()
    for (const entry of failed) {
      const uuid = entry.record.uuid
      if (this.#entries.get(uuid) === entry) this.#entries.delete(uuid)
    }
    for (const entry of failed) {
      if (!entry.saved) continue
      // It is in the file: back to the file's version (kept in memory only while live).
      const row = this.#sql.byId.get(entry.id) as TaskRow | undefined
      if (row !== undefined && !finalStatuses.has(row.status) && !this.#entries.has(row.uuid)) {
        this.#entries.set(row.uuid, this.#entryOf(row, true))
      }
    }
    for (const entry of failed) {
      const waiters = entry.waiters
      entry.waiters = []
      for (const waiter of waiters) waiter.reject(error)
    }
  }

  #startCheckpointer (driverPath: string): void {
    const fallBack = (): void => {
      // No worker: SQLite checkpoints at commit time instead, on this thread.
      this.#checkpointer = undefined
      if (this.#db.open) this.#db.pragma('wal_autocheckpoint = 1000')
    }
    const worker = new Worker(new URL(import.meta.url), {
      workerData: { [checkpointerFlag]: true, driver: driverPath, file: this.path },
      // Not the loaders the app runs under (tsx, a test runner's): only this file runs there.
      execArgv: [],
    })
    worker.unref()
    worker.on('error', fallBack)
    worker.on('exit', () => { if (this.#checkpointer === worker) fallBack() })
    this.#checkpointer = worker
  }

  async #stopCheckpointer (): Promise<void> {
    const worker = this.#checkpointer
    if (worker === undefined) return
    this.#checkpointer = undefined
    const exited = new Promise(resolve => worker.once('exit', resolve))
    worker.ref() // the process waits for it to close its connection
    worker.postMessage('stop')
    await exited
  }
}

function prepare (db: Database) {
  const statement = (source: string): Statement => db.prepare(source)
  return {
    begin: statement('BEGIN IMMEDIATE'),
    commit: statement('COMMIT'),
    rollback: statement('ROLLBACK'),
    insert: statement(`INSERT INTO tasks (${columns}) VALUES (${columns.split(',').map(() => '?').join(', ')})`),
    updateAll: statement('UPDATE tasks SET status = ?, progress = ?, target = ?, outputs = ?, error = ?, attempt = ?, started = ?, finished = ?, seq = ?, inputs = ?, messages_dropped = ? WHERE id = ?'),
    updateLight: statement('UPDATE tasks SET progress = ?, target = ?, outputs = ?, error = ?, attempt = ?, started = ?, seq = ?, inputs = ?, messages_dropped = ? WHERE id = ?'),
    deleteTask: statement('DELETE FROM tasks WHERE id = ?'),
    deleteMessages: statement('DELETE FROM messages WHERE task_id = ?'),
    trimMessages: statement('DELETE FROM messages WHERE task_id = ? AND n < ?'),
    insertMessage: statement('INSERT INTO messages (task_id, n, text) VALUES (?, ?, ?)'),
    byUuid: statement(`SELECT ${columns} FROM tasks WHERE uuid = ?`),
    byId: statement(`SELECT ${columns} FROM tasks WHERE id = ?`),
    messages: statement('SELECT n, text FROM messages WHERE task_id = ? ORDER BY n'),
    live: statement(`SELECT ${columns} FROM tasks WHERE status IN ('pending', 'running') ORDER BY id`),
    expire: statement(expireQuery),
  }
}

function isBusy (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'))
}

function filePath (path: unknown): string {
  if (path instanceof URL) {
    if (path.protocol !== 'file:') throw new TypeError(`options.path must be a file path or a file: URL, got ${path.href}`)
    return fileURLToPath(path)
  }
  if (typeof path !== 'string' || path === '' || path === ':memory:' || path.startsWith('file:')) {
    throw new TypeError(`options.path must be the path of a file (use MemoryStore for records that need not last), got ${JSON.stringify(path) ?? String(path)}`)
  }
  return resolve(path)
}

/** better-sqlite3, loaded only by apps that use this store. */
function loadDriver (): { Database: Driver, path: string } {
  const require = createRequire(import.meta.url)
  let path: string
  try {
    path = require.resolve('better-sqlite3')
  } catch (err) {
    throw new SqliteStoreError('driver', 'SqliteStore needs better-sqlite3, which is not installed: npm install better-sqlite3@12', { cause: err })
  }
  return { Database: require(path) as Driver, path }
}

function prepareDirectory (file: string): void {
  const dir = dirname(file)
  try {
    mkdirSync(dir, { recursive: true })
  } catch (err) {
    throw new SqliteStoreError('unwritable', `cannot create the directory of the SQLite store ${file}: ${(err as Error).message}`, { cause: err })
  }
  try {
    // SQLite creates <file>-wal, <file>-shm and the store <file>-lock beside the file.
    accessSync(dir, constants.W_OK | constants.X_OK)
  } catch (err) {
    throw new SqliteStoreError('unwritable', `the SQLite store ${file} is not writable: cannot write in its directory ${dir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
  let isFile: boolean | undefined
  try {
    isFile = statSync(file).isFile()
  } catch {
    return // created on open
  }
  if (!isFile) throw new SqliteStoreError('unwritable', `the SQLite store ${file} is not a file`)
  try {
    accessSync(file, constants.R_OK | constants.W_OK)
  } catch (err) {
    throw new SqliteStoreError('unwritable', `the SQLite store ${file} is not writable (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
}

function isSqliteError (err: unknown, Database: Driver): boolean {
  return err instanceof Database.SqliteError
}

function openDatabase (Database: Driver, file: string, busyTimeout: number): Database {
  try {
    return new Database(file, { timeout: busyTimeout })
  } catch (err) {
    if (!isSqliteError(err, Database)) {
      // The native part did not load: built for another Node.js, or not built at all.
      throw new SqliteStoreError('driver', `better-sqlite3 could not be loaded (${(err as Error).message}): npm install better-sqlite3@12`, { cause: err })
    }
    throw new SqliteStoreError('unwritable', `cannot open the SQLite store ${file}: ${(err as Error).message}`, { cause: err })
  }
}

/** Refuses a file that is not one of ours (a text file, another application's database) or that a newer version wrote. */
function checkOwnership (db: Database, file: string): void {
  let id: number, version: number, objects: number
  try {
    id = db.pragma('application_id', { simple: true }) as number
    version = db.pragma('user_version', { simple: true }) as number
    objects = (db.prepare('SELECT count(*) AS n FROM sqlite_schema').get() as { n: number }).n
  } catch (err) {
    if ((err as { code?: unknown }).code === 'SQLITE_NOTADB') {
      throw new SqliteStoreError('foreign', `${file} is not a fastify-task-api store: it is not an SQLite database`, { cause: err })
    }
    throw new SqliteStoreError('unwritable', `cannot read the SQLite store ${file}: ${(err as Error).message}`, { cause: err })
  }
  if (id === applicationId) {
    if (version > schemaVersion) {
      throw new SqliteStoreError('version', `the SQLite store ${file} has schema version ${version}, written by a newer fastify-task-api; this one knows versions up to ${schemaVersion}`)
    }
    return
  }
  if (id !== 0 || version !== 0 || objects > 0) {
    throw new SqliteStoreError('foreign', `${file} is not a fastify-task-api store: it is the SQLite database of another application (application_id ${id}, user_version ${version}, ${objects} schema objects)`)
  }
  // An empty database: ours to set up.
}

/**
 * The one-process-per-file lock: an exclusive transaction held on `<file>-lock` for as
 * long as the store is open. It is the operating system's lock (fcntl), so it goes with
 * the process however that ends, and SQLite also applies it between connections of one
 * process. The file stays: removing it would let two processes lock two different files.
 */
function takeLock (Database: Driver, file: string, db: Database): Database {
  const path = `${file}-lock`
  let lock: Database
  try {
    lock = new Database(path, { timeout: 0 })
  } catch (err) {
    db.close()
    throw new SqliteStoreError('unwritable', `cannot create the lock file ${path} of the SQLite store ${file}: ${(err as Error).message}`, { cause: err })
  }
  try {
    lock.pragma('journal_mode = MEMORY')
    lock.pragma('locking_mode = EXCLUSIVE')
    lock.exec('BEGIN EXCLUSIVE')
  } catch (err) {
    lock.close()
    db.close()
    if (isBusy(err)) {
      throw new SqliteStoreError('locked', `the SQLite store ${file} is already open in another process (or another SqliteStore): one server per file, or two would run the same tasks`, { cause: err })
    }
    throw new SqliteStoreError('unwritable', `cannot lock the SQLite store ${file} (${path}): ${(err as Error).message}`, { cause: err })
  }
  return lock
}

function configure (db: Database, file: string): void {
  try {
    const mode = db.pragma('journal_mode = WAL', { simple: true })
    if (mode !== 'wal') throw new Error(`SQLite kept journal_mode ${String(mode)}`)
    db.pragma('synchronous = NORMAL')
    // Checkpoints run in a worker thread; a WAL emptied by one shrinks back to this.
    db.pragma('wal_autocheckpoint = 0')
    db.pragma('journal_size_limit = 67108864')
  } catch (err) {
    throw new SqliteStoreError('unwritable', `cannot set up the SQLite store ${file} in WAL mode: ${(err as Error).message}`, { cause: err })
  }
}

function migrate (db: Database, file: string): void {
  try {
    db.transaction(() => {
      const version = db.pragma('user_version', { simple: true }) as number
      if (version === schemaVersion) return
      for (let v = version; v < schemaVersion; v++) db.exec(migrations[v] as string)
      db.pragma(`application_id = ${applicationId}`)
      db.pragma(`user_version = ${schemaVersion}`)
    }).immediate()
  } catch (err) {
    throw new SqliteStoreError('unwritable', `cannot migrate the SQLite store ${file} to schema version ${schemaVersion}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * The checkpoint worker: this same module, started in a worker thread by the store. It
 * copies the WAL into the database file (and fsyncs) every `checkpointInterval` ms, a
 * passive checkpoint that never blocks the store's writes; when the WAL has grown past
 * `truncateFrames` (writes that never pause long enough for it to restart), it truncates
 * it, which makes the store's writes wait (busy, retried) for that moment.
 */
function runCheckpointer (data: { driver: string, file: string }): void {
  const Database = createRequire(import.meta.url)(data.driver) as Driver
  const db = new Database(data.file, { fileMustExist: true, timeout: 1000 })
  const timer = setInterval(() => {
    try {
      const [result] = db.pragma('wal_checkpoint(PASSIVE)') as Array<{ busy: number, log: number, checkpointed: number }>
      if (result !== undefined && result.log >= truncateFrames) db.pragma('wal_checkpoint(TRUNCATE)')
    } catch {
      // Busy past the timeout, or the file is gone: the next round tries again.
    }
  }, checkpointInterval)
  parentPort?.on('message', (message) => {
    if (message !== 'stop') return
    clearInterval(timer)
    db.close()
    parentPort?.close()
  })
}

if (!isMainThread && (workerData as Record<string, unknown> | null)?.[checkpointerFlag] === true) {
  runCheckpointer(workerData as { driver: string, file: string })
}
