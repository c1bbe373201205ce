import { accessSync, constants, mkdirSync, realpathSync, statSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { applicationId, migrations, schemaVersion, type SqliteDatabase } from './sqlite-schema.js'

/*
 * Opening a SQLite store's file: the path, its directory, whether the file is ours, the
 * one-process lock, WAL, migrations. The driver comes from lib/store/sqlite.ts (the one
 * module that loads better-sqlite3); what is used of it is described structurally here.
 */

/** better-sqlite3's constructor. */
export interface SqliteDriver {
  new (file: string, options?: { timeout?: number, fileMustExist?: boolean }): SqliteDatabase
  SqliteError: abstract new (...args: never[]) => Error
}

/** Why a SQLite store could not open, or refused a call. */
export type SqliteStoreErrorReason = 'driver' | 'unwritable' | 'foreign' | 'version' | 'migration' | 'locked' | 'closed'

/**
 * Thrown by `new SqliteStore()` when the file cannot be used (the message names the path
 * and the reason), and by every method once the store is closed.
 */
export class SqliteStoreError extends Error {
  override name = 'SqliteStoreError'
  /** `driver`: better-sqlite3 is missing or does not load; `unwritable`: the path cannot be created, opened or written; `foreign`: the file is not a store of ours; `version`: a newer fastify-task-api wrote it; `migration`: bringing the file to this version's schema failed (nothing was changed); `locked`: another process (or store) has it open; `closed`: `close()` was called. */
  readonly reason: SqliteStoreErrorReason

  constructor (reason: SqliteStoreErrorReason, message: string, options?: ErrorOptions) {
    super(message, options)
    this.reason = reason
  }
}

export function isBusy (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'))
}

export function filePath (path: unknown): string {
  if (path instanceof URL) {
    if (path.protocol !== 'file:') throw new TypeError(`options.path must be a file path or a file: URL, got ${path.href}`)
    return fileURLToPath(path)
  }
  if (typeof path !== 'string' || path === '' || path === ':memory:' || path.startsWith('file:')) {
    throw new TypeError(`options.path must be the path of a file (use MemoryStore for records that need not last), got ${JSON.stringify(path) ?? String(path)}`)
  }
  return resolve(path)
}

/**
 * Creates the file's directory when missing, checks what can be checked before opening,
 * and answers the file's real path (symbolic links resolved): the lock is taken beside
 * the real file, so two paths to one file cannot both open it.
 */
function prepareDirectory (given: string): string {
  let dir = dirname(given)
  try {
    mkdirSync(dir, { recursive: true })
    dir = realpathSync(dir)
  } catch (err) {
    throw new SqliteStoreError('unwritable', `cannot create the directory of the SQLite store ${given}: ${(err as Error).message}`, { cause: err })
  }
  let file = join(dir, basename(given))
  try {
    file = realpathSync(file)
  } catch {
    // Not there yet (or a dangling link, which SQLite refuses on open).
  }
  try {
    // SQLite creates <file>-wal, <file>-shm and the store <file>-lock beside the file.
    accessSync(dir, constants.W_OK | constants.X_OK)
  } catch (err) {
    throw new SqliteStoreError('unwritable', `the SQLite store ${file} is not writable: cannot write in its directory ${dir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
  if (dirname(file) !== dir) {
    // A link to a file in another directory: SQLite keeps its -wal and -shm beside the real file.
    try {
      accessSync(dirname(file), constants.W_OK | constants.X_OK)
    } catch (err) {
      throw new SqliteStoreError('unwritable', `the SQLite store ${given} is not writable: cannot write in the directory of ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
    }
  }
  let isFile: boolean | undefined
  try {
    isFile = statSync(file).isFile()
  } catch {
    return file // created on open
  }
  if (!isFile) throw new SqliteStoreError('unwritable', `the SQLite store ${file} is not a file`)
  try {
    accessSync(file, constants.R_OK | constants.W_OK)
  } catch (err) {
    throw new SqliteStoreError('unwritable', `the SQLite store ${file} is not writable (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
  return file
}

/**
 * Opens the store's file: creates its directory, refuses a file that is not ours, takes
 * the one-process lock, turns WAL on and migrates the schema. Every failure is a
 * SqliteStoreError naming the path, and leaves nothing open.
 */
export function openStoreFile (Database: SqliteDriver, given: string, busyTimeout: number): OpenedFile {
  const file = prepareDirectory(given)
  const db = openDatabase(Database, file, busyTimeout)
  try {
    checkOwnership(db, file)
  } catch (err) {
    db.close()
    throw err
  }
  // Ours (or empty): locked before anything changes, so that two servers never both migrate.
  const lock = takeLock(Database, file, db)
  try {
    configure(db, file)
    migrate(db, file)
  } catch (err) {
    lock.close()
    db.close()
    throw err
  }
  return { db, lock, file, identity: { file: fileIdentity(file), lock: fileIdentity(`${file}-lock`) } }
}

/** An open store file. */
export interface OpenedFile {
  db: SqliteDatabase
  lock: SqliteDatabase
  /** The real path of the database file. */
  file: string
  /** What `fileIdentity` answered for the file and its lock once they were open. */
  identity: { file: string, lock: string }
}

/**
 * Which file a path names now (`<device>:<inode>`), or `missing`. A store checks that its
 * file and its lock are still the ones it opened before it writes: one removed or
 * replaced under a running server would take every later write with it, unseen.
 */
export function fileIdentity (path: string): string {
  try {
    const { dev, ino } = statSync(path, { bigint: true })
    return `${dev}:${ino}`
  } catch {
    return 'missing'
  }
}

function isSqliteError (err: unknown, Database: SqliteDriver): boolean {
  return err instanceof Database.SqliteError
}

function openDatabase (Database: SqliteDriver, file: string, busyTimeout: number): SqliteDatabase {
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
function checkOwnership (db: SqliteDatabase, file: string): void {
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
function takeLock (Database: SqliteDriver, file: string, db: SqliteDatabase): SqliteDatabase {
  const path = `${file}-lock`
  let lock: SqliteDatabase
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

function configure (db: SqliteDatabase, file: string): void {
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

function migrate (db: SqliteDatabase, file: string): void {
  try {
    db.exec('BEGIN IMMEDIATE')
    try {
      const version = db.pragma('user_version', { simple: true }) as number
      for (let v = version; v < schemaVersion; v++) db.exec(migrations[v] as string)
      if (version !== schemaVersion) {
        db.pragma(`application_id = ${applicationId}`)
        db.pragma(`user_version = ${schemaVersion}`)
      }
      db.exec('COMMIT')
    } catch (err) {
      if (db.inTransaction) db.exec('ROLLBACK')
      throw err
    }
  } catch (err) {
    throw new SqliteStoreError('migration', `cannot migrate the SQLite store ${file} to schema version ${schemaVersion}: ${(err as Error).message}`, { cause: err })
  }
}

