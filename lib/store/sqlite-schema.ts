import type { ListFilter, TaskRecord, TaskStatus } from './types.js'

/*
 * The SQLite store's file format: the schema, its migrations, and the queries whose plans
 * matter. No driver here: lib/store/sqlite.ts is the one module that loads better-sqlite3;
 * what is used of it is described structurally below.
 */

/** What the store uses of a better-sqlite3 statement. */
export interface SqliteStatement {
  run (...params: unknown[]): unknown
  get (...params: unknown[]): unknown
  all (...params: unknown[]): unknown[]
}

/** What the store uses of a better-sqlite3 database. */
export interface SqliteDatabase {
  readonly open: boolean
  readonly inTransaction: boolean
  prepare (source: string): SqliteStatement
  exec (source: string): unknown
  pragma (source: string, options?: { simple?: boolean }): unknown
  close (): unknown
}

/** `PRAGMA application_id` of our files: "FTAP" in ASCII. Another application's database has another (usually 0). */
export const applicationId = 0x46544150

/**
 * The schema's migrations: `migrations[v]` takes a file from `user_version` v to v + 1.
 * They run on open, all in one transaction; never edit one that has shipped, add the next.
 */
/** The condition of the list indexes: a finished record. */
const finished = "status IN ('succeeded', 'failed', 'cancelled')"
/** The condition of the index of live records (schema version 2). */
const live = "status IN ('pending', 'running')"
/** The condition of the list and retention indexes from schema version 3: a finished record the store has listed. */
const listed = 'listed = 1'

/**
 * The partial list indexes, one per combination of owner, status and task, under a
 * condition: the same SQL text each migration that (re)creates them had.
 */
const listIndexes = (condition: string): string => [['owner'], ['status'], ['task'], ['owner', 'status'], ['owner', 'task'], ['status', 'task'], ['owner', 'status', 'task']]
  .map(columns => `CREATE INDEX tasks_${columns.join('_')} ON tasks (${columns.join(', ')}) WHERE ${condition};`).join('\n  ')

export const migrations: readonly string[] = [
  // 0 -> 1: tasks, their messages, and the indexes of every list filter and of retention.
  `
  CREATE TABLE tasks (
    id INTEGER PRIMARY KEY, -- creation order: what lists sort by and what a cursor holds
    uuid TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    owner TEXT,
    progress NUMERIC,
    target NUMERIC,
    outputs TEXT NOT NULL, -- JSON
    error TEXT,
    attempt INTEGER NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    seq INTEGER NOT NULL,
    inputs TEXT NOT NULL, -- JSON; '{}' once finished
    messages_dropped INTEGER NOT NULL
  );
  -- One row per kept message: appending is an INSERT, trimming a DELETE of the oldest.
  CREATE TABLE messages (
    task_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (task_id, n)
  ) WITHOUT ROWID;
  CREATE INDEX tasks_owner ON tasks (owner);
  CREATE INDEX tasks_status ON tasks (status);
  CREATE INDEX tasks_task ON tasks (task);
  CREATE INDEX tasks_owner_status ON tasks (owner, status);
  CREATE INDEX tasks_owner_task ON tasks (owner, task);
  CREATE INDEX tasks_status_task ON tasks (status, task);
  CREATE INDEX tasks_owner_status_task ON tasks (owner, status, task);
  CREATE INDEX tasks_expiry ON tasks (status, finished) WHERE finished IS NOT NULL;
  `,
  // 1 -> 2: the list indexes hold finished records only (live ones are listed from the
  // store's memory), so a task's creation and its start write no list index entry:
  // about 40% less work per write. Live records get an index of their own, for opening.
  `
  DROP INDEX tasks_owner;
  DROP INDEX tasks_status;
  DROP INDEX tasks_task;
  DROP INDEX tasks_owner_status;
  DROP INDEX tasks_owner_task;
  DROP INDEX tasks_status_task;
  DROP INDEX tasks_owner_status_task;
  ${listIndexes(finished)}
  CREATE INDEX tasks_live ON tasks (id) WHERE ${live};
  `,
  // 2 -> 3: a finished record enters the list, retention and uuid indexes later, in
  // batches (column listed): one transaction lists hundreds of records, touching the same
  // few index pages, where each finish wrote eight index entries on pages of their own and
  // each creation one in the uuid index (together about 70% of a commit). Until then the
  // store finds it in memory, where it keeps every record not listed. The uuid stops being
  // a column constraint (which would index every row at once): the table is rebuilt.
  `
  CREATE TABLE tasks_v3 (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL, -- unique among the listed records (tasks_uuid); the store holds the others in memory
    task TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    owner TEXT,
    progress NUMERIC,
    target NUMERIC,
    outputs TEXT NOT NULL,
    error TEXT,
    attempt INTEGER NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    seq INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    messages_dropped INTEGER NOT NULL,
    listed INTEGER NOT NULL -- 1: a finished record in the uuid, list and retention indexes; 0: not yet, or live
  );
  INSERT INTO tasks_v3 SELECT id, uuid, task, status, owner, progress, target, outputs, error, attempt, created, started, finished, seq, inputs, messages_dropped, ${finished} FROM tasks;
  DROP TABLE tasks;
  ALTER TABLE tasks_v3 RENAME TO tasks;
  CREATE UNIQUE INDEX tasks_uuid ON tasks (uuid) WHERE ${listed};
  ${listIndexes(listed)}
  CREATE INDEX tasks_expiry ON tasks (status, finished) WHERE ${listed};
  CREATE INDEX tasks_unlisted ON tasks (id) WHERE listed = 0;
  `,
]

/** The version a file has once every migration ran. */
export const schemaVersion = migrations.length

/** A row of `tasks`. */
export interface TaskRow {
  id: number
  uuid: string
  task: string
  status: TaskStatus
  owner: string | null
  progress: number | null
  target: number | null
  outputs: string
  error: string | null
  attempt: number
  created: string
  started: string | null
  finished: string | null
  seq: number
  inputs: string
  messages_dropped: number
  /** 1: a finished record in the list and retention indexes; 0: not (yet) there. */
  listed: number
}

export const columns = 'id, uuid, task, status, owner, progress, target, outputs, error, attempt, created, started, finished, seq, inputs, messages_dropped, listed'

export function toRecord (row: TaskRow, messages: string[]): TaskRecord {
  return {
    uuid: row.uuid,
    task: row.task,
    status: row.status,
    progress: row.progress,
    target: row.target,
    outputs: JSON.parse(row.outputs) as Record<string, unknown>,
    messages,
    messagesDropped: row.messages_dropped,
    attempt: row.attempt,
    created: row.created,
    started: row.started,
    finished: row.finished,
    error: row.error,
    inputs: JSON.parse(row.inputs) as Record<string, unknown>,
    owner: row.owner,
    seq: row.seq,
  }
}

/** Which filter fields a list query has: a bit each. */
export const OWNER = 1
export const STATUS = 2
export const TASK = 4

export function filterFields (filter: Omit<ListFilter, 'limit'>): number {
  return (filter.owner !== undefined ? OWNER : 0) | (filter.status !== undefined ? STATUS : 0) | (filter.task !== undefined ? TASK : 0)
}

/**
 * The list query of one combination of filter fields, over the listed records (the store
 * lists the others, live or just finished, from memory). Each combination has the partial index whose columns are
 * exactly its fields (the rowid, `id`, implicitly last), named with INDEXED BY so that the
 * planner cannot pick one that would need a sort: a page is a search for the fields'
 * values and `id < cursor`, read newest first, `limit` rows and no more, whatever the
 * number of records. Without a field it reads the table newest first, skipping the
 * records not listed among them. Parameters: the set fields in the order owner, status, task, then
 * the cursor's id and the limit.
 */
export function listQuery (fields: number): string {
  const names: string[] = []
  const terms: string[] = []
  // `owner IS ?`: a null owner selects the records without one, and still uses the index.
  if ((fields & OWNER) !== 0) { names.push('owner'); terms.push('owner IS ?') }
  if ((fields & STATUS) !== 0) { names.push('status'); terms.push('status = ?') }
  if ((fields & TASK) !== 0) { names.push('task'); terms.push('task = ?') }
  terms.push(listed, 'id < ?')
  const indexed = names.length === 0 ? ' NOT INDEXED' : ` INDEXED BY tasks_${names.join('_')}`
  return `SELECT ${columns} FROM tasks${indexed} WHERE ${terms.join(' AND ')} ORDER BY id DESC LIMIT ?`
}

/** Lists the finished records not yet listed: what the store runs on opening, before reading `liveQuery`. */
export const listFinishedQuery = `UPDATE tasks INDEXED BY tasks_unlisted SET listed = 1 WHERE listed = 0 AND ${finished}`

/** The records not listed, oldest first: on opening (after `listFinishedQuery`), the live ones, which the store keeps in memory. */
export const liveQuery = `SELECT ${columns} FROM tasks INDEXED BY tasks_unlisted WHERE listed = 0 ORDER BY id`

/** A listed record by uuid (the store finds the others in memory). */
export const byUuidQuery = `SELECT ${columns} FROM tasks WHERE uuid = ? AND ${listed}`

/** The retention query: the oldest listed records of a status, by the partial index on (status, finished). */
export const expireQuery = `SELECT ${columns} FROM tasks INDEXED BY tasks_expiry WHERE status = ? AND finished < ? AND ${listed} ORDER BY finished, id LIMIT ?`

/**
 * A page of the listed records of a status finished at or after a time, newest finished
 * first: the retention index read from its other end, from just before the last record
 * of the previous page (its finished time and id; `'~'`, after every ISO 8601 time, for
 * the first), `limit` rows and no more, without a sort. Parameters: the status, the time,
 * the previous page's last finished time and id, the limit.
 */
/** The columns of a row without its outputs and inputs (read as `{}`): what `finishedSince` answers. */
const leanColumns = columns.replace('outputs', "'{}' AS outputs").replace('inputs', "'{}' AS inputs")
export const finishedSinceQuery = `SELECT ${leanColumns} FROM tasks INDEXED BY tasks_expiry WHERE status = ? AND finished >= ? AND ${listed} AND (finished, id) < (?, ?) ORDER BY finished DESC, id DESC LIMIT ?`

/** The reads. */
export function readStatements (db: SqliteDatabase) {
  const statement = (source: string): SqliteStatement => db.prepare(source)
  return {
    byUuid: statement(byUuidQuery),
    byId: statement(`SELECT ${columns} FROM tasks WHERE id = ?`),
    messages: statement('SELECT n, text FROM messages WHERE task_id = ? ORDER BY n'),
    live: statement(liveQuery),
    expire: statement(expireQuery),
    finishedSince: statement(finishedSinceQuery),
  }
}

/**
 * One write of a transaction: an opcode, then the statement's parameters; for `UPDATE`,
 * the mask of the columns it sets (bits in the order of `updatable`), their values, the id.
 */
export type Write = readonly unknown[]

export const INSERT = 0
/** Sets the columns that changed, and only those: a status update binds 4 values, not 12. */
export const UPDATE = 1
export const TRIM = 3
export const MESSAGE = 4
export const DELETE = 5

/** The columns an update may set; bit `i` of an `UPDATE` mask is `updatable[i]`. */
export const updatable = ['status', 'progress', 'target', 'outputs', 'error', 'attempt', 'started', 'finished', 'seq', 'inputs', 'messages_dropped', 'listed'] as const

/** The mask of an update that only lists a record: these are made in one statement per transaction. */
export const LISTED = 1 << updatable.indexOf('listed')

/** The UPDATE statement of a mask of `updatable` columns. */
export function updateQuery (mask: number): string {
  const sets = updatable.filter((_, bit) => (mask & (1 << bit)) !== 0).map(column => `${column} = ?`)
  return `UPDATE tasks SET ${sets.join(', ')} WHERE id = ?`
}

/** The writes. */
export function writeStatements (db: SqliteDatabase) {
  const statement = (source: string): SqliteStatement => db.prepare(source)
  const updates = new Map<number, SqliteStatement>()
  return {
    begin: statement('BEGIN IMMEDIATE'),
    commit: statement('COMMIT'),
    rollback: statement('ROLLBACK'),
    [INSERT]: statement(`INSERT INTO tasks (${columns}) VALUES (${columns.split(',').map(() => '?').join(', ')})`),
    [TRIM]: statement('DELETE FROM messages WHERE task_id = ? AND n < ?'),
    [MESSAGE]: statement('INSERT INTO messages (task_id, n, text) VALUES (?, ?, ?)'),
    [DELETE]: statement('DELETE FROM tasks WHERE id = ?'),
    deleteMessages: statement('DELETE FROM messages WHERE task_id = ?'),
    idByUuid: statement(`SELECT id FROM tasks WHERE uuid = ? AND ${listed}`),
    /** Lists records by id, given as a JSON array: one statement for hundreds (about 3.6 µs a record, against 9 one by one). */
    list: statement('UPDATE tasks SET listed = 1 WHERE id IN (SELECT value FROM json_each(?))'),
    /** The update of a mask, prepared on its first use (a few masks occur: a start, progress, a finish, a listing). */
    update (mask: number): SqliteStatement {
      let update = updates.get(mask)
      if (update === undefined) {
        update = statement(updateQuery(mask))
        updates.set(mask, update)
      }
      return update
    },
  }
}

/** Applies writes in one transaction: all of them, or (it throws) none. */
export function applyTransaction (sql: ReturnType<typeof writeStatements>, writes: readonly Write[]): void {
  sql.begin.run()
  try {
    // Only-listing updates go together (each touches a record no other write of the transaction touches).
    const listing: unknown[] = []
    for (const write of writes) {
      const op = write[0] as number
      if (op === UPDATE && write[1] === LISTED && write[2] === 1) {
        listing.push(write[3])
      } else if (op === UPDATE) {
        sql.update(write[1] as number).run(...write.slice(2))
      } else if (op === INSERT) {
        insert(sql, write)
      } else if (op === DELETE) {
        sql.deleteMessages.run(write[1])
        sql[DELETE].run(write[1])
      } else {
        sql[op as 3 | 4].run(...write.slice(1))
      }
    }
    if (listing.length > 0) sql.list.run(JSON.stringify(listing))
    sql.commit.run()
  } catch (err) {
    try {
      sql.rollback.run()
    } catch {
      // SQLite rolls back by itself after some errors; the first error is the one to tell.
    }
    throw err
  }
}

/**
 * An INSERT. A record created with the uuid of a listed one replaces it (the store removes
 * a record it holds in memory itself, in the same or an earlier transaction).
 */
function insert (sql: ReturnType<typeof writeStatements>, write: Write): void {
  const params = write.slice(1)
  const old = sql.idByUuid.get(params[1]) as { id: number } | undefined
  if (old !== undefined) {
    sql.deleteMessages.run(old.id)
    sql[DELETE].run(old.id)
  }
  sql[INSERT].run(...params)
}
