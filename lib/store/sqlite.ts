import { createRequire } from 'node:module'
import { isMainThread, Worker, workerData } from 'node:worker_threads'
import type BetterSqlite3 from 'better-sqlite3'
import { filePath, isBusy, openStoreFile, SqliteStoreError, type SqliteDatabase, type SqliteDriver, type SqliteStatement } from './sqlite-file.js'
import { filterFields, listQuery, statements, toRecord, type TaskRow } from './sqlite-schema.js'
import { finalStatuses, InvalidCursorError, StoreUnavailableError, type FinalStatus, type ListFilter, type ListPage, type RecordPatch, type Store, type TaskRecord, type TaskStatus } from './types.js'

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

export { SqliteStoreError, type SqliteStoreErrorReason } from './sqlite-file.js'

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
const truncateFrames = 16384
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
  readonly #db: SqliteDatabase
  readonly #lock: SqliteDatabase
  readonly #busyRetries: number
  readonly #maxBatch: number
  /** Live records, and any other whose changes are not yet committed, by uuid. */
  readonly #entries = new Map<string, Entry>()
  /** Entries with changes to write, in the order they were first changed. */
  readonly #dirty = new Set<Entry>()
  readonly #sql: ReturnType<typeof statements>
  readonly #lists = new Map<number, SqliteStatement>()
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
    const { db, lock } = openStoreFile(driver.Database, this.path, busyTimeout)
    this.#db = db
    this.#lock = lock
    this.#sql = statements(db)
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
    // A checkpoint cut short is harmless (SQLite resumes it at the next); its connection
    // closes as the thread ends.
    await worker.terminate()
  }
}

/** better-sqlite3, loaded only by apps that use this store. */
function loadDriver (): { Database: SqliteDriver, path: string } {
  const require = createRequire(import.meta.url)
  let path: string
  try {
    path = require.resolve('better-sqlite3')
  } catch (err) {
    throw new SqliteStoreError('driver', 'SqliteStore needs better-sqlite3, which is not installed: npm install better-sqlite3@12', { cause: err })
  }
  // Checked here: better-sqlite3's own types fit what the store uses of it.
  const Database: SqliteDriver = require(path) as typeof BetterSqlite3
  return { Database, path }
}

/**
 * The checkpoint worker: this same module, started in a worker thread by the store. It
 * copies the WAL into the database file (and fsyncs) every `checkpointInterval` ms, a
 * passive checkpoint that never blocks the store's writes; when the WAL has grown past
 * `truncateFrames` (writes that never pause long enough for it to restart), it truncates
 * it, which makes the store's writes wait (busy, retried) for that moment.
 */
function runCheckpointer (data: { driver: string, file: string }): void {
  const Database = createRequire(import.meta.url)(data.driver) as SqliteDriver
  const db = new Database(data.file, { fileMustExist: true, timeout: 1000 })
  setInterval(() => {
    try {
      const [result] = db.pragma('wal_checkpoint(PASSIVE)') as Array<{ busy: number, log: number, checkpointed: number }>
      if (result !== undefined && result.log >= truncateFrames) db.pragma('wal_checkpoint(TRUNCATE)')
    } catch {
      // Busy past the timeout, or the file is gone: the next round tries again.
    }
  }, checkpointInterval)
}

if (!isMainThread && (workerData as Record<string, unknown> | null)?.[checkpointerFlag] === true) {
  runCheckpointer(workerData as { driver: string, file: string })
}
