/** A task's lifecycle. `pending` and `running` are live; the others are final. */
export type TaskStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled'

/** Every status, in lifecycle order. */
export const statuses: readonly TaskStatus[] = ['pending', 'running', 'succeeded', 'failed', 'cancelled']

/** The statuses a task never leaves. */
export const finalStatuses: ReadonlySet<TaskStatus> = new Set<FinalStatus>(['succeeded', 'failed', 'cancelled'])

/** A task as clients see it: what `GET /tasks/:uuid` answers. */
export interface TaskState {
  uuid: string
  task: string
  status: TaskStatus
  progress: number | null
  target: number | null
  outputs: Record<string, unknown>
  messages: string[]
  /** How many of the oldest messages were dropped to keep `messages` within its cap. */
  messagesDropped: number
  /** The run being made or last made: 0 before the first, 2 on the first retry, and so on. */
  attempt: number
  /** ISO 8601. */
  created: string
  /** When the current (or last) attempt started. */
  started: string | null
  finished: string | null
  /** The failure's message; never a stack trace. While a retry waits, the failed attempt's. */
  error: string | null
}

/**
 * A task as `GET /tasks` lists it: its state without outputs and messages, and `error`
 * cut to 200 characters, so that a page of them stays small.
 */
export type TaskSummary = Pick<TaskState, 'uuid' | 'task' | 'status' | 'progress' | 'target' | 'attempt' | 'created' | 'started' | 'finished' | 'error'>

/** Characters of a failed task's error a list summary keeps. */
const summaryErrorLength = 200

/** A record as a list shows it: no outputs, no messages, the error cut short. */
export function toSummary (record: Readonly<TaskState>): TaskSummary {
  const error = record.error !== null && record.error.length > summaryErrorLength
    ? record.error.slice(0, summaryErrorLength - 1) + '…'
    : record.error
  return {
    uuid: record.uuid,
    task: record.task,
    status: record.status,
    progress: record.progress,
    target: record.target,
    attempt: record.attempt,
    created: record.created,
    started: record.started,
    finished: record.finished,
    error,
  }
}

/**
 * A new `pending` record as the service creates it at submit: every field at its
 * initial value, then `fields` over them. Stores, tests and benches build records here.
 */
export function newRecord (fields: Pick<TaskRecord, 'uuid' | 'task' | 'inputs' | 'created'> & Partial<TaskRecord>): TaskRecord {
  return {
    status: 'pending',
    progress: null,
    target: null,
    outputs: {},
    messages: [],
    messagesDropped: 0,
    attempt: 0,
    started: null,
    finished: null,
    error: null,
    owner: null,
    seq: 0,
    ...fields,
  }
}

/** A task as the store keeps it: the public state plus what is never shown to clients. */
export interface TaskRecord extends TaskState {
  /** The converted inputs. Never part of a response. A store may drop them (`{}`) once the task has finished. */
  inputs: Record<string, unknown>
  /** Who the task belongs to (the `owner` option's answer at submit), or null. Never part of a response. */
  owner: string | null
  /** The sequence number of the last event published for this task. */
  seq: number
}

/**
 * A change to a record. `messages` are appended, then the `trimMessages` oldest removed;
 * every other field is replaced.
 */
/**
 * A precondition of an update, for a store that several servers share (the Redis store):
 * the patch applies only while the record still has this `status` and `attempt` (what
 * the writer last wrote or read); otherwise the update answers undefined and changes
 * nothing. Every take-over changes one of the two (an adopting worker writes `pending`
 * over `running`, or `running` at the next attempt over `pending`), so a worker that lost
 * its task to another (paused or cut off past its queue lock) can never write over the
 * record again. A store only one server uses (memory, SQLite, which hold a lock) has no
 * such writer and may ignore it.
 */
export interface UpdateFence {
  status: 'pending' | 'running'
  attempt: number
  /**
   * The write's id, the same each time it is sent again: a store that has applied it
   * answers the record as it is (and checks nothing), so a write whose answer was lost
   * is never applied twice.
   */
  write?: string
}

export type RecordPatch = Partial<Omit<TaskRecord, 'uuid' | 'task' | 'inputs' | 'owner' | 'created' | 'messages'>> & {
  messages?: string[]
  trimMessages?: number
}

/**
 * Where records live. Small and async so that durable stores (SQLite, Redis) fit
 * behind it. Records handed out must be treated as read-only by callers.
 *
 * Every store passes the same contract suite (`test/store-contract.ts`): what one store
 * does, they all do.
 */
export interface Store {
  /**
   * True when records outlive the process (a file, a server): a graceful close then
   * leaves tasks that have not run `pending` for the next server, and ends those it had
   * to stop as a restart after a crash would (retried when they have retries left,
   * otherwise `failed`, interrupted). False or absent: they are cancelled.
   */
  readonly durable?: boolean
  /** Saves a new record. */
  create (record: TaskRecord): Promise<void>
  /** The record, or undefined when there is none. */
  get (uuid: string): Promise<Readonly<TaskRecord> | undefined>
  /**
   * Applies a patch and returns the updated record, or undefined when there is none.
   * Once the promise resolves the change is as durable as the store makes anything (a
   * durable store has committed it): the service publishes it only then.
   */
  update (uuid: string, patch: RecordPatch, fence?: UpdateFence): Promise<Readonly<TaskRecord> | undefined>
  /**
   * A page of the records matching the filter, newest first (by creation), at most
   * `filter.limit`, after `filter.cursor` when set. `next` is the cursor of the following
   * page, or null when there is none. A cursor stays valid while records are created and
   * removed: a page never repeats or skips a record that existed when the first page was
   * read (records created since are newer, so they never appear on later pages).
   */
  list (filter: ListFilter): Promise<ListPage>
  /** Removes a record; resolves with whether there was one. */
  delete (uuid: string): Promise<boolean>
  /**
   * Every record whose status is `pending` or `running`, oldest first: what a server
   * restarting on this store must pick up again.
   */
  live (): Promise<Array<Readonly<TaskRecord>>>
  /**
   * Removes up to `limit` records whose status is `status` (a final one) and whose
   * `finished` time is before `before` (ISO 8601); resolves with their uuids. Called in
   * small batches by the retention sweep: one call must stay short.
   */
  expire (status: FinalStatus, before: string, limit: number): Promise<string[]>
  /**
   * The records whose status is `status` (a final one) and whose `finished` time is at or
   * after `since` (ISO 8601), newest finished first (records finished at the same time in
   * any order), at most `limit`; a record without a `finished` time is never among them.
   * Each comes without its messages, outputs and inputs (`[]`, `{}`, `{}`): what a count
   * needs, at a fraction of the reading (see `lean`).
   * Read from the index retention uses (records by status and finished time), so a call
   * costs about `limit` records, whatever the store holds; what the statistics of
   * `GET {prefix}/stats` are built from. A store may read them in pages, letting other
   * work run between them (SQLite, Redis): a record that changes meanwhile may then be
   * left out, or answered as it was, never twice.
   */
  finishedSince (status: FinalStatus, since: string, limit: number): Promise<Array<Readonly<TaskRecord>>>
  /**
   * Called once when the server starts, before anything else: a store that must make
   * sure it is the only server on its records (the Redis store's lease) does it here.
   */
  open? (): Promise<void>
  /** Releases what the store holds (connections, files). */
  close? (): Promise<void>
}

/** A record as `finishedSince` answers it: without its messages, outputs and inputs. */
export function lean (record: Readonly<TaskRecord>): TaskRecord {
  return { ...record, messages: [], outputs: {}, inputs: {} }
}

/** The fields a patch may set, besides messages. Anything else in a patch is ignored. */
const patchable = ['status', 'progress', 'target', 'outputs', 'error', 'attempt', 'started', 'finished', 'seq', 'messagesDropped'] as const

/**
 * Sets on `record` the fields `patch` defines (one left undefined stays as it was);
 * `messages` and `trimMessages` are the store's to apply.
 */
export function applyFields (record: TaskRecord, patch: RecordPatch): void {
  const fields = record as unknown as Record<string, unknown>
  for (const key of patchable) {
    if (patch[key] !== undefined) fields[key] = patch[key]
  }
}

/**
 * The creation number a list cursor holds, for stores whose cursors are one (the memory
 * and SQLite stores'): a positive safe integer written plainly, or InvalidCursorError.
 */
export function readCursor (cursor: string): number {
  const n = Number(cursor)
  if (!/^[1-9][0-9]{0,15}$/.test(cursor) || !Number.isSafeInteger(n)) {
    throw new InvalidCursorError(`not a cursor of this store: ${JSON.stringify(cursor.slice(0, 64))}`)
  }
  return n
}

/** The statuses a task never leaves. */
export type FinalStatus = 'succeeded' | 'failed' | 'cancelled'

/** What `Store.list` selects. Unset fields do not filter. */
export interface ListFilter {
  /** Only this owner's records (null: records without an owner). */
  owner?: string | null
  status?: TaskStatus
  task?: string
  /** At most this many. */
  limit: number
  /** Where the page starts: the `next` of the previous page. */
  cursor?: string
}

/** One page of `Store.list`. */
export interface ListPage {
  records: Array<Readonly<TaskRecord>>
  /** The cursor of the next page, or null when this is the last. */
  next: string | null
}

/** Thrown by `Store.list` for a cursor it did not make. The REST API answers 400. */
export class InvalidCursorError extends Error {
  override name = 'InvalidCursorError'
  readonly invalidCursor = true
}

/**
 * Thrown by a store whose storage is momentarily unable to take a write (SQLite busy past
 * its retries, Redis down). The REST API answers it with 503 and `Retry-After`.
 */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError'
  readonly storeUnavailable = true
}
