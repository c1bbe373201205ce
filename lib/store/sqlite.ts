import { once } from 'node:events'
import { createRequire } from 'node:module'
import { isMainThread, parentPort, Worker, workerData, type MessagePort } from 'node:worker_threads'
import type BetterSqlite3 from 'better-sqlite3'
import { fileIdentity, filePath, isBusy, openStoreFile, SqliteStoreError, type SqliteDriver } from './sqlite-file.js'
import { applyTransaction, DELETE, filterFields, INSERT, listFinishedQuery, listQuery, MESSAGE, readStatements, toRecord, TRIM, UPDATE, updatable, writeStatements, type SqliteDatabase, type SqliteStatement, type TaskRow, type Write } from './sqlite-schema.js'
import { applyFields, finalStatuses, lean, readCursor, StoreUnavailableError, type FinalStatus, type ListFilter, type ListPage, type RecordPatch, type Store, type TaskRecord, type TaskStatus } from './types.js'

/** Options of the SQLite store. */
export interface SqliteStoreOptions {
  /**
   * The database file (a path or a `file:` URL). Its directory is created when missing.
   * Beside it SQLite keeps `<path>-wal` and `<path>-shm`, and the store `<path>-lock`.
   * `':memory:'` and `''` are refused: use `MemoryStore` for records that need not last.
   */
  path: string | URL
  /**
   * How long one attempt at a transaction waits for another connection's write lock,
   * in ms, before it counts as busy. The wait holds the event loop: keep it short; the
   * retries below wait on timers.
   * @default 5
   */
  busyTimeout?: number
  /**
   * How many times a transaction that finds the file busy or locked (SQLITE_BUSY,
   * SQLITE_LOCKED) is retried, 10 ms after the first refusal, then twice as long each
   * time up to 200 ms (about 1.3 s over 10 retries). Past it, every write waiting rejects
   * with `StoreUnavailableError` (the REST API answers 503) and the store's view goes
   * back to what the file holds.
   * @default 10
   */
  busyRetries?: number
  /**
   * The most rows (tasks and messages) one transaction writes; a turn's writes past it
   * go in further transactions.
   * @default 100
   */
  maxBatch?: number
  /**
   * The most bytes of commits the WAL holds before the checkpoint thread restarts it, in
   * bytes. Checkpoints that run beside a writer never catch up with it, so under writes
   * without pause the WAL file would grow without bound (by about 60 MB/s under a no-op
   * flood here); past this size the thread runs a RESTART checkpoint, which holds writes
   * for the copy of the last commits and an fsync (the writes wait on timers, see
   * `busyRetries`), and the next commit starts the WAL over.
   * @default 16777216 (16 MiB)
   */
  maxWalSize?: number
}

/** Counters of a SQLite store's writes, since it opened. */
export interface SqliteStoreStats {
  /** Calls (create, update, delete) whose changes wait for their commit. */
  pending: number
  /** Transactions committed. */
  transactions: number
  /** Attempts at a transaction that found the file busy or locked and were retried. */
  busyRetries: number
  /** Transactions that failed (their calls rejected with StoreUnavailableError). */
  failures: number
  /**
   * The longest the store's writes held the event loop in one go (building and committing
   * a turn's transactions), in ms: what store work adds to event-loop delay at most.
   */
  longestWriteMs: number
}

export { SqliteStoreError, type SqliteStoreErrorReason } from './sqlite-file.js'

/** A record the store holds in memory: every live one, and any other with writes not yet committed. */
interface Entry {
  /** The row id: creation order. */
  id: number
  record: TaskRecord
  /** The `n` of `record.messages[0]` in the messages table. */
  first: number
  /** Removed; the row goes with the next write. */
  deleted: boolean
  /** What the writes sent so far leave in the file, to send only what changed since. */
  saved: boolean
  savedFirst: number
  savedEnd: number
  /** The values of the `updatable` columns in the file, once the writes sent so far commit (undefined: not saved). */
  savedValues: unknown[] | undefined
  /** Its row is in the list and retention indexes (once the writes sent so far commit). */
  listed: boolean
  /** Marked for listing: the next write lists it. */
  listDue: boolean
  outputsJson: string
  inputsJson: string
  /** The calls that changed it since its last write was sent. */
  waiters: Waiter[]
  /** The last transaction that writes it (0: none sent). */
  transaction: number
}

interface Waiter {
  promise: Promise<unknown>
  resolve: (value: unknown) => void
  reject: (err: Error) => void
  value: unknown
}

/** A transaction waiting for its commit. */
interface Transaction {
  id: number
  entries: Entry[]
  waiters: Waiter[]
  writes: Write[]
  /** Resolves once it is committed or failed. */
  done: Promise<void>
  settle: () => void
}

/** What the checkpoint thread is started with. */
interface CheckpointerData {
  driver: string
  file: string
  /** `maxWalSize` in pages. */
  maxWalFrames: number
}


/** How long (ms) one turn may spend committing writes; the rest goes next turn. */
const turnBudget = 5
/**
 * How long (ms) at most a finished record waits, in memory, to be put in the list and
 * retention indexes with others (column `listed`).
 */
const listInterval = 250
/**
 * How many records one turn lists at most: each one writes nine index entries (8 to
 * 20 µs, measured under load), so 100 hold the event loop about 2 ms; more wait for the
 * next turn.
 */
const listChunk = 100
/**
 * Records `finishedSince` reads from the file in one go (a few ms: without their
 * messages, outputs and inputs); a call that wants more reads further pages on later
 * turns of the event loop.
 */
const finishedPage = 500
/** How often (ms) the checkpoint thread copies the WAL into the database file. */
const checkpointInterval = 250
const checkpointerFlag = 'fastify-task-api:sqlite-checkpointer'
/** How often (ms) at most a transaction checks that the file and its lock are still the ones opened. */
const identityCheckInterval = 20

/**
 * A store in a SQLite file (better-sqlite3, WAL mode): records outlive the process, so a
 * restarted server finds its tasks.
 *
 * Writes are grouped: the calls made in one event-loop turn change the store's in-memory
 * view at once (a `get` right after sees them) and, at the end of the turn, are committed
 * as one transaction (at most `maxBatch` rows each, at most `turnBudget` ms of them a
 * turn); their promises resolve once it has committed, so whatever the server publishes
 * is on disk first. A commit appends to the WAL without an fsync (tens of µs for a small
 * one); checkpoints, which copy the WAL into the database file and fsync it, run in a
 * thread of their own, never on the event loop. Live records stay in memory (they change
 * often); finished ones are read from the file. A finished record enters the file's list
 * and retention indexes a little later (at most `listInterval` ms), in a batch with
 * others: until then it stays in memory too, and lists find it there.
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
  /** Records outlive the process: a graceful close leaves unrun tasks pending for the next server. */
  readonly durable = true
  /** The database file: its real path (absolute, symbolic links resolved). */
  readonly path: string
  readonly #db: SqliteDatabase
  readonly #lock: SqliteDatabase
  readonly #maxBatch: number
  readonly #busyRetries: number
  /** `fileIdentity` of the file and of its lock when the store opened them. */
  readonly #identity: { file: string, lock: string }
  readonly #checkpointerData: CheckpointerData
  /** Live records, and any other whose changes are not yet committed, by uuid. */
  readonly #entries = new Map<string, Entry>()
  /** Entries changed since their last write was sent, in the order they were first changed. */
  readonly #dirty = new Set<Entry>()
  /** Transactions waiting for their commit, in order (more than one only while the file is busy). */
  readonly #sent = new Map<number, Transaction>()
  /** Finished records committed but not yet listed, waiting in memory for the next listing. */
  readonly #unlisted = new Set<Entry>()
  #listTimer: { timeout: ReturnType<typeof setTimeout> } | { immediate: ReturnType<typeof setImmediate> } | undefined
  readonly #sql: ReturnType<typeof readStatements>
  readonly #write: ReturnType<typeof writeStatements>
  readonly #lists = new Map<number, SqliteStatement>()
  readonly #stats = { transactions: 0, busyRetries: 0, failures: 0, longestWriteMs: 0 }
  #lastId: number
  #lastTransaction = 0
  #scheduled: ReturnType<typeof setImmediate> | undefined
  /** Set while a busy file's transaction waits for its next attempt. */
  #retryTimer: ReturnType<typeof setTimeout> | undefined
  #retries = 0
  #identityCheckedAt = -Infinity
  #moved: string | undefined
  #checkpointer: Worker | undefined
  #closing: Promise<void> | undefined
  #closed = false

  constructor (options: SqliteStoreOptions) {
    if (typeof options !== 'object' || options === null) throw new TypeError(`options must be an object with a path, got ${String(options)}`)
    const busyTimeout = options.busyTimeout ?? 5
    if (!Number.isInteger(busyTimeout) || busyTimeout < 0) throw new TypeError(`options.busyTimeout must be an integer >= 0, got ${String(busyTimeout)}`)
    const busyRetries = options.busyRetries ?? 10
    if (!Number.isInteger(busyRetries) || busyRetries < 0) throw new TypeError(`options.busyRetries must be an integer >= 0, got ${String(busyRetries)}`)
    const maxBatch = options.maxBatch ?? 100
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new TypeError(`options.maxBatch must be a positive integer, got ${String(maxBatch)}`)
    const maxWalSize = options.maxWalSize ?? 16 * 1024 * 1024
    if (!Number.isSafeInteger(maxWalSize) || maxWalSize < 1) throw new TypeError(`options.maxWalSize must be a positive integer (bytes), got ${String(maxWalSize)}`)
    const given = filePath(options.path)
    this.#maxBatch = maxBatch

    const driver = loadDriver()
    const { db, lock, file, identity } = openStoreFile(driver.Database, given, busyTimeout)
    this.path = file
    this.#db = db
    this.#lock = lock
    this.#busyRetries = busyRetries
    this.#identity = identity
    this.#sql = readStatements(db)
    this.#write = writeStatements(db)
    const pageSize = db.pragma('page_size', { simple: true }) as number
    this.#checkpointerData = { driver: driver.path, file, maxWalFrames: Math.max(1, Math.ceil(maxWalSize / pageSize)) }
    this.#lastId = (db.prepare('SELECT max(id) AS id FROM tasks').get() as { id: number | null }).id ?? 0
    // Records that finished just before the last server stopped: listed now, with one write.
    db.prepare(listFinishedQuery).run()
    for (const row of this.#sql.live.all() as TaskRow[]) {
      const entry = this.#entryOf(row, true)
      this.#entries.set(entry.record.uuid, entry)
    }
    this.#startCheckpointer()
  }

  async create (record: TaskRecord): Promise<void> {
    this.#checkOpen()
    const inputsJson = finalStatuses.has(record.status) ? '{}' : JSON.stringify(record.inputs ?? {})
    const outputsJson = JSON.stringify(record.outputs ?? {})
    // A record with this uuid is replaced: in memory here, in the file by the next commit.
    const previous = this.#entries.get(record.uuid)
    if (previous !== undefined && !previous.deleted) this.#remove(previous).catch(() => {})
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
      savedValues: undefined,
      listed: false,
      listDue: false,
      outputsJson,
      inputsJson,
      waiters: [],
      transaction: 0,
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
    applyFields(record, patch)
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
    const before = filter.cursor === undefined ? Number.MAX_SAFE_INTEGER : readCursor(filter.cursor)
    // The file is the index of finished records: what was changed so far must be in it first.
    await this.#settled()
    this.#checkOpen()
    if (filter.limit <= 0) return { records: [], next: null }
    // The records in memory (every live one, and any changed since): as they are now.
    // The file's rows of those are left out below; the file has the rest.
    const mine: Entry[] = []
    let inFile = 0
    for (const entry of this.#entries.values()) {
      // Its row may be in the file's page too, and is skipped there: ask the file for one more.
      if (entry.listed) inFile++
      if (entry.deleted || entry.id >= before) continue
      const { record } = entry
      if (filter.owner !== undefined && record.owner !== filter.owner) continue
      if (filter.status !== undefined && record.status !== filter.status) continue
      if (filter.task !== undefined && record.task !== filter.task) continue
      mine.push(entry)
    }
    mine.sort((a, b) => b.id - a.id)
    if (mine.length > filter.limit + 1) mine.length = filter.limit + 1
    let rows: TaskRow[] = []
    if (filter.status === undefined || finalStatuses.has(filter.status)) {
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
      rows = (statement.all(...args, before, filter.limit + 1 + inFile) as TaskRow[]).filter(row => !this.#entries.has(row.uuid))
    }
    // Both newest first: merged, the first limit + 1 tell the page and whether one follows.
    const page: Array<{ id: number, record: () => TaskRecord }> = []
    let m = 0
    let f = 0
    while (page.length <= filter.limit && (m < mine.length || f < rows.length)) {
      const entry = mine[m]
      const row = rows[f]
      if (row === undefined || (entry !== undefined && entry.id > row.id)) {
        const { record } = entry as Entry
        page.push({ id: (entry as Entry).id, record: () => record })
        m++
      } else {
        page.push({ id: row.id, record: () => toRecord(row, this.#messagesOf(row.id).texts) })
        f++
      }
    }
    const more = page.length > filter.limit
    if (more) page.pop()
    return {
      records: page.map(item => item.record()),
      next: more ? String((page.at(-1) as { id: number }).id) : null,
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
    // The retention index has the listed records: every finished one must be there first.
    do {
      this.#listUnlisted(listChunk)
      await this.#settled()
    } while (this.#unlisted.size > 0 && !this.#closed)
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

  async finishedSince (status: FinalStatus, since: string, limit: number): Promise<TaskRecord[]> {
    this.#checkOpen()
    // As a list: the file is read once the writes made so far are in it.
    await this.#settled()
    this.#checkOpen()
    if (limit <= 0) return []
    // By uuid: each record once, as the store has it now (memory first: what it holds
    // there, live or just finished or changed since, is newer than its row in the file).
    const found = new Map<string, { id: number, record: TaskRecord }>()
    const wanted = (record: TaskRecord): boolean => record.status === status && record.finished !== null && record.finished >= since
    for (const entry of this.#entries.values()) {
      if (!entry.deleted && wanted(entry.record)) found.set(entry.record.uuid, entry)
    }
    // The file's rows, newest finished first, in pages with a turn of the event loop
    // between them, until `limit` of them are found: the rest are older.
    let fromFile = 0
    let before: [string, number] = ['~', Number.MAX_SAFE_INTEGER]
    for (;;) {
      const rows = this.#sql.finishedSince.all(status, since, ...before, finishedPage) as TaskRow[]
      const page = rows.filter(row => !found.has(row.uuid))
      for (const row of page) {
        const entry = this.#entries.get(row.uuid)
        // Changed since its row was written: as it is now, if it still qualifies.
        if (entry !== undefined) {
          if (!entry.deleted && wanted(entry.record)) found.set(row.uuid, entry)
          continue
        }
        found.set(row.uuid, { id: row.id, record: toRecord(row, []) })
        fromFile++
      }
      const last = rows.at(-1)
      if (rows.length < finishedPage || fromFile >= limit || last === undefined) break
      before = [last.finished as string, last.id]
      await new Promise(resolve => setImmediate(resolve))
      this.#checkOpen()
    }
    return [...found.values()]
      .sort((a, b) => newerFinish(a.record.finished as string, a.id, b.record.finished as string, b.id))
      .slice(0, limit)
      .map(item => lean(item.record))
  }

  /** Counters of the writes since the store opened. */
  stats (): SqliteStoreStats {
    let pending = 0
    for (const entry of this.#dirty) pending += entry.waiters.length
    for (const transaction of this.#sent.values()) pending += transaction.waiters.length
    return { pending, ...this.#stats }
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
    this.#listUnlisted(Infinity)
    this.#closed = true
    if (this.#scheduled !== undefined) {
      clearImmediate(this.#scheduled)
      this.#scheduled = undefined
    }
    while (this.#dirty.size > 0 || this.#sent.size > 0) {
      this.#flush(Infinity)
      await Promise.all([...this.#sent.values()].map(transaction => transaction.done))
    }
    const checkpointer = this.#checkpointer
    this.#checkpointer = undefined
    if (checkpointer !== undefined) {
      const exited = once(checkpointer, 'exit')
      checkpointer.ref() // the process waits for it to let go of the file
      checkpointer.postMessage('close')
      await exited
    }
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
      listed: row.listed === 1,
      listDue: false,
      id: row.id,
      record: toRecord(row, texts),
      first,
      deleted: false,
      saved: true,
      savedFirst: first,
      savedEnd: first + texts.length,
      savedValues: updatable.map(column => row[column]),
      outputsJson: row.outputs,
      inputsJson: row.inputs,
      waiters: [],
      transaction: 0,
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
    this.#markDirty(entry)
    return waiter.promise
  }

  #markDirty (entry: Entry): void {
    this.#dirty.add(entry)
    this.#scheduled ??= setImmediate(() => {
      this.#scheduled = undefined
      this.#flush(turnBudget)
    })
  }

  /** Committed and finished, not yet listed: listed with others within `listInterval` ms. */
  #waitForListing (entry: Entry): void {
    // Finished during the close's last writes: the next open lists it.
    if (this.#closed) return
    this.#unlisted.add(entry)
    this.#scheduleListing(this.#unlisted.size >= listChunk)
  }

  /** Lists the waiting records on a timer, or `soon` (next turn) once a chunk is waiting. */
  #scheduleListing (soon: boolean): void {
    if (this.#closed) return
    if (this.#listTimer !== undefined && (!soon || 'immediate' in this.#listTimer)) return
    this.#clearListing()
    if (soon) {
      this.#listTimer = { immediate: setImmediate(() => { this.#listTimer = undefined; this.#listUnlisted(listChunk) }) }
    } else {
      const timeout = setTimeout(() => { this.#listTimer = undefined; this.#listUnlisted(listChunk) }, listInterval)
      timeout.unref()
      this.#listTimer = { timeout }
    }
  }

  #clearListing (): void {
    if (this.#listTimer === undefined) return
    if ('timeout' in this.#listTimer) clearTimeout(this.#listTimer.timeout)
    else clearImmediate(this.#listTimer.immediate)
    this.#listTimer = undefined
  }

  /**
   * Marks up to `limit` of the finished records waiting for listing (the oldest): the next
   * transaction lists them. The rest follow next turn.
   */
  #listUnlisted (limit: number): void {
    this.#clearListing()
    // After close the connection is gone; what waits is listed by the next open.
    if (this.#closed && !this.#db.open) return
    let marked = 0
    for (const entry of this.#unlisted) {
      if (marked >= limit) break
      this.#unlisted.delete(entry)
      if (this.#entries.get(entry.record.uuid) !== entry || entry.deleted || entry.listed || !finalStatuses.has(entry.record.status)) continue
      entry.listDue = true
      this.#markDirty(entry)
      marked++
    }
    if (this.#unlisted.size > 0 && !this.#closed) this.#scheduleListing(true)
  }

  /** Resolves once every write made so far has committed or failed. */
  async #settled (): Promise<void> {
    // Dirty entries without a waiter (marked for listing) go with the next flush.
    while (this.#dirty.size > 0 && !this.#closed) await new Promise(resolve => setImmediate(resolve))
    const pending: Array<Promise<unknown>> = []
    for (const entry of this.#dirty) {
      for (const waiter of entry.waiters) pending.push(waiter.promise)
    }
    for (const transaction of this.#sent.values()) pending.push(transaction.done)
    if (pending.length > 0) await Promise.allSettled(pending)
  }

  /**
   * Commits the dirty entries' writes, in transactions of at most `maxBatch` rows, for at
   * most `budget` ms; what is left goes next turn.
   */
  #flush (budget: number): void {
    const started = performance.now()
    let transaction: Transaction | undefined
    let rows = 0
    for (const entry of this.#dirty) {
      transaction ??= this.#newTransaction()
      rows += this.#writesOf(entry, transaction.writes)
      transaction.entries.push(entry)
      entry.transaction = transaction.id
      for (const waiter of entry.waiters) transaction.waiters.push(waiter)
      entry.waiters = []
      this.#dirty.delete(entry)
      if (rows >= this.#maxBatch) {
        this.#send(transaction)
        transaction = undefined
        rows = 0
        if (performance.now() - started > budget) break
      }
    }
    if (transaction !== undefined) this.#send(transaction)
    this.#held(started)
    if (this.#dirty.size > 0) {
      this.#scheduled ??= setImmediate(() => {
        this.#scheduled = undefined
        this.#flush(turnBudget)
      })
    }
  }

  /** Notes how long writes begun at `started` held the event loop. */
  #held (started: number): void {
    const ms = performance.now() - started
    if (ms > this.#stats.longestWriteMs) this.#stats.longestWriteMs = ms
  }

  #newTransaction (): Transaction {
    const transaction = { id: ++this.#lastTransaction, entries: [], waiters: [], writes: [] } as unknown as Transaction
    transaction.done = new Promise<void>((resolve) => { transaction.settle = resolve })
    return transaction
  }

  /** Commits a transaction now, or after the ones waiting for a busy file. */
  #send (transaction: Transaction): void {
    this.#sent.set(transaction.id, transaction)
    // While a busy file's transaction waits for its retry, the next ones wait behind it.
    if (this.#retryTimer === undefined) this.#commitSent()
  }

  /**
   * Commits the waiting transactions in order. A busy file is retried after a backoff
   * (10 ms, doubling up to 200 ms) up to `busyRetries` times; then, or on any other
   * error, the transaction fails, and with it every one after it (they were built on it).
   */
  #commitSent (): void {
    for (const transaction of this.#sent.values()) {
      const moved = this.#movedFile()
      try {
        if (moved !== undefined) throw Object.assign(new Error(moved), { code: 'SQLITE_STORE_MOVED' })
        applyTransaction(this.#write, transaction.writes)
      } catch (err) {
        if (isBusy(err) && this.#retries < this.#busyRetries) {
          this.#stats.busyRetries++
          this.#retryTimer = setTimeout(() => {
            this.#retryTimer = undefined
            const started = performance.now()
            this.#commitSent()
            this.#held(started)
          }, Math.min(200, 10 * 2 ** this.#retries++))
          return
        }
        const retries = this.#retries
        this.#retries = 0
        this.#stats.failures++
        this.#fail(err, retries)
        return
      }
      this.#retries = 0
      this.#committed(transaction)
    }
  }

  /**
   * Appends the writes that take the file from what the writes sent so far leave there
   * to the entry's present state; returns how many rows they write.
   */
  #writesOf (entry: Entry, writes: Write[]): number {
    const { id, record } = entry
    const listDue = entry.listDue
    entry.listDue = false
    if (entry.deleted) {
      if (!entry.saved) return 0
      entry.saved = false
      writes.push([DELETE, id])
      return 2
    }
    if (!finalStatuses.has(record.status)) {
      // A record that is live again leaves the list indexes (the service never does that; the store allows it).
      entry.listed = false
    } else if (listDue) {
      entry.listed = true
    }
    // In the order of `updatable`.
    const values = [record.status, record.progress ?? null, record.target ?? null, entry.outputsJson, record.error ?? null, record.attempt,
      record.started ?? null, record.finished ?? null, record.seq, entry.inputsJson, record.messagesDropped, entry.listed ? 1 : 0]
    let rows = 0
    let from: number
    const saved = entry.savedValues
    if (!entry.saved || saved === undefined) {
      writes.push([INSERT, id, record.uuid, record.task, record.status, record.owner ?? null, record.progress ?? null, record.target ?? null,
        entry.outputsJson, record.error ?? null, record.attempt, record.created, record.started ?? null, record.finished ?? null,
        record.seq, entry.inputsJson, record.messagesDropped, entry.listed ? 1 : 0])
      rows++
      from = entry.first
    } else {
      let mask = 0
      const changed: unknown[] = []
      for (let i = 0; i < values.length; i++) {
        if (values[i] === saved[i]) continue
        mask |= 1 << i
        changed.push(values[i])
      }
      if (mask !== 0) {
        writes.push([UPDATE, mask, ...changed, id])
        rows++
      }
      if (entry.first > entry.savedFirst) {
        writes.push([TRIM, id, entry.first])
        rows++
      }
      from = Math.max(entry.savedEnd, entry.first)
    }
    const end = entry.first + record.messages.length
    for (let n = from; n < end; n++) writes.push([MESSAGE, id, n, record.messages[n - entry.first]])
    entry.saved = true
    entry.savedValues = values
    entry.savedFirst = entry.first
    entry.savedEnd = end
    return rows + Math.max(0, end - from)
  }

  /**
   * Why the file can no longer be written (see movedFile), checked at most every
   * `identityCheckInterval` ms; once found, for good.
   */
  #movedFile (): string | undefined {
    if (this.#moved !== undefined) return this.#moved
    const now = performance.now()
    if (now - this.#identityCheckedAt < identityCheckInterval) return undefined
    this.#identityCheckedAt = now
    this.#moved = movedFile(this.path, this.#identity)
    return this.#moved
  }

  #startCheckpointer (): void {
    const checkpointer = new Worker(new URL(import.meta.url), {
      workerData: { [checkpointerFlag]: true, ...this.#checkpointerData },
      // Not the loaders the app runs under (tsx, a test runner's): only this file runs there.
      execArgv: [],
    })
    checkpointer.unref()
    // Without checkpoints the WAL only grows (nothing is lost): start another one.
    checkpointer.on('error', () => {})
    checkpointer.on('exit', () => {
      if (this.#checkpointer !== checkpointer) return
      this.#checkpointer = undefined
      if (!this.#closed) setTimeout(() => { if (!this.#closed && this.#checkpointer === undefined) this.#startCheckpointer() }, 1000).unref()
    })
    this.#checkpointer = checkpointer
  }

  #committed (transaction: Transaction): void {
    this.#sent.delete(transaction.id)
    this.#stats.transactions++
    for (const entry of transaction.entries) {
      if (entry.transaction !== transaction.id || this.#dirty.has(entry)) continue
      // All its writes are in the file: a removed or listed record is read from there now.
      const uuid = entry.record.uuid
      if (this.#entries.get(uuid) !== entry) continue
      if (entry.deleted || entry.listed) this.#entries.delete(uuid)
      else if (finalStatuses.has(entry.record.status)) this.#waitForListing(entry)
    }
    for (const waiter of transaction.waiters) waiter.resolve(waiter.value)
    transaction.settle()
  }

  /**
   * The file refused a transaction: every write not yet committed rejects (the ones sent
   * after it were built on it), and the view goes back to what the file holds. The
   * transaction rolled back: the file holds no part of it.
   */
  #fail (cause: unknown, retries: number): void {
    const code = (cause as { code?: unknown }).code
    const what = typeof code === 'string' ? `${code}${retries > 0 ? ` after ${retries} retries` : ''}: ` : ''
    const error = new StoreUnavailableError(`the SQLite store ${this.path} cannot write: ${what}${(cause as Error).message}`, { cause })
    const transactions = [...this.#sent.values()]
    this.#sent.clear()
    const affected = new Set<Entry>(this.#dirty)
    this.#dirty.clear()
    for (const transaction of transactions) {
      for (const entry of transaction.entries) affected.add(entry)
    }
    for (const entry of affected) {
      const uuid = entry.record.uuid
      if (this.#entries.get(uuid) === entry) this.#entries.delete(uuid)
    }
    for (const entry of affected) {
      try {
        const row = this.#sql.byId.get(entry.id) as TaskRow | undefined
        // Live or not yet listed in the file: found in memory only, like every such record.
        if (row !== undefined && (!finalStatuses.has(row.status) || row.listed === 0) && !this.#entries.has(row.uuid)) {
          const reloaded = this.#entryOf(row, true)
          this.#entries.set(row.uuid, reloaded)
          // A finished record the failed transaction was to list (or that was waiting): listed later.
          if (finalStatuses.has(row.status)) this.#waitForListing(reloaded)
        }
      } catch {
        // The file cannot be read either (closed, removed): its records are read again at the next open.
        break
      }
    }
    for (const entry of affected) {
      for (const waiter of entry.waiters) waiter.reject(error)
      entry.waiters = []
    }
    for (const transaction of transactions) {
      for (const waiter of transaction.waiters) waiter.reject(error)
      transaction.settle()
    }
  }
}

/** Negative when record a comes before record b newest finished first (at the same time, the newer first): the order of `finishedSinceQuery`. */
function newerFinish (finishedA: string, idA: number, finishedB: string, idB: number): number {
  return finishedA > finishedB ? -1 : finishedA < finishedB ? 1 : idB - idA
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
 * Why the store's file or lock is no longer the one it opened (removed, or replaced by
 * another file), or undefined. Checked before a transaction, at most every
 * `identityCheckInterval` ms (two stat calls, a few microseconds): what would be committed
 * to a removed file is lost at the next restart, and a removed lock lets another server
 * open the file too.
 */
function movedFile (file: string, identity: { file: string, lock: string }): string | undefined {
  const now = fileIdentity(file)
  if (now !== identity.file) {
    return `the database file was ${now === 'missing' ? 'removed' : 'replaced by another file'} since the store opened it; restart the server on a store file it can keep`
  }
  if (fileIdentity(`${file}-lock`) !== identity.lock) {
    return `its lock file ${file}-lock was removed or replaced, so another server may open the file too; restart the server`
  }
  return undefined
}

/**
 * The checkpoint thread: this same module, started in a worker thread by the store, with
 * a connection of its own. Every `checkpointInterval` ms it copies the WAL into the
 * database file (a passive checkpoint: it never waits for, nor holds up, a commit), and
 * once the WAL holds more than `maxWalSize` it restarts it (holding commits for a moment);
 * the fsyncs are its own. On 'close' it stops; the store truncates the WAL itself.
 */
function runCheckpointer (data: CheckpointerData, port: MessagePort): void {
  const Database = createRequire(import.meta.url)(data.driver) as SqliteDriver
  // The busy timeout serves the RESTART checkpoint: it waits that long for a commit under
  // way or a reader to finish (a PASSIVE one never waits).
  const db = new Database(data.file, { fileMustExist: true, timeout: 100 })
  db.pragma('wal_autocheckpoint = 0')
  let timer: ReturnType<typeof setTimeout>
  const checkpoint = (): void => {
    let busy = false
    try {
      const [result] = db.pragma('wal_checkpoint(PASSIVE)') as Array<{ log: number }>
      // The WAL only starts over at a commit that finds all of it copied, which a writer
      // without pause never does: past the bound, hold the writes for a moment and restart.
      if (result !== undefined && result.log > data.maxWalFrames) {
        db.pragma('wal_checkpoint(RESTART)')
        busy = true
      }
    } catch {
      // The next round tries again.
    }
    // While the writes keep the WAL over its bound, look again soon.
    timer = setTimeout(checkpoint, busy ? checkpointInterval / 5 : checkpointInterval)
  }
  checkpoint()
  port.on('message', () => {
    clearTimeout(timer)
    db.close()
    port.close()
  })
}

if (!isMainThread && parentPort !== null && (workerData as Record<string, unknown> | null)?.[checkpointerFlag] === true) {
  runCheckpointer(workerData as CheckpointerData, parentPort)
}
