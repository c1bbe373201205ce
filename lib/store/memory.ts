import BTreeModule from 'sorted-btree'
import { applyFields, finalStatuses, lean, readCursor, type FinalStatus, type ListFilter, type ListPage, type RecordPatch, type Store, type TaskRecord, type UpdateFence } from './types.js'

const BTree = BTreeModule.default
type Index = InstanceType<typeof BTree<number, TaskRecord>>
/** Records `finishedSince` reads in one turn of the event loop (about 1 ms). */
const finishedSlice = 1000

/** Finished records of one status by [finished, creation order]: what retention expires, oldest first. */
type Expiry = InstanceType<typeof BTree<[string, number], string>>


/** Options of the in-memory store. */
export interface MemoryStoreOptions {
  /**
   * How many finished records to keep; past it the oldest finished are forgotten, so
   * that a long-running server's memory stays bounded. Live tasks are always kept.
   * @default 100000
   */
  maxFinished?: number
  /**
   * Approximately how many bytes of finished records to keep (their messages, outputs and
   * error, plus a fixed cost per record); past it the oldest finished are forgotten, as
   * past `maxFinished`. The record that has just finished is always kept. Live tasks are
   * never forgotten and not counted.
   * @default 268435456 (256 MiB)
   */
  maxBytes?: number
}

interface Entry {
  record: TaskRecord
  /** Creation order: what every index sorts by. */
  seq: number
  /** Counted bytes, once finished. */
  bytes: number
}

/** What a finished record costs beyond its messages, outputs and error: the object, uuid, dates. */
const recordOverhead = 400

/** Which filter fields an index covers: a bit each. */
const OWNER = 1
const STATUS = 2
const TASK = 4

/**
 * The default store: records in a Map, gone when the process ends.
 *
 * `list` must not cost more as records pile up. Each combination of filter fields
 * (owner, status, task; each set or not) gets its indexes the first time a filter uses
 * it: one B+ tree per value (per owner, per owner and status, ...) holding the matching
 * records keyed by creation order, so a page is read from the newest end of one tree.
 * Building them is one pass over the records, once per combination (eight at most);
 * from then on they are kept up to date, and a page costs O(page). A store nobody lists
 * keeps no index at all, so submitting and running tasks pay nothing for them.
 */
export class MemoryStore implements Store {
  readonly #entries = new Map<string, Entry>()
  /** Per combination of filter fields in use: its indexes, by the values they select. */
  readonly #indexes = new Map<number, Map<string, Index>>()
  /** Finished records in the order they finished: the first is forgotten first. */
  readonly #finished = new Set<string>()
  /** The same, per final status, by finished time: what retention expires, oldest first. */
  readonly #finishedBy = new Map<string, Expiry>()
  readonly #maxFinished: number
  readonly #maxBytes: number
  #bytes = 0
  #seq = 0

  constructor (options: MemoryStoreOptions = {}) {
    const max = options.maxFinished ?? 100_000
    if (!Number.isInteger(max) || max < 1) {
      throw new TypeError(`options.maxFinished must be a positive integer, got ${String(max)}`)
    }
    const maxBytes = options.maxBytes ?? 256 * 1024 * 1024
    if (!Number.isInteger(maxBytes) || maxBytes < 1) {
      throw new TypeError(`options.maxBytes must be a positive integer, got ${String(maxBytes)}`)
    }
    this.#maxFinished = max
    this.#maxBytes = maxBytes
  }

  async create (record: TaskRecord): Promise<void> {
    const previous = this.#entries.get(record.uuid)
    if (previous !== undefined) this.#forget(record.uuid, previous)
    const entry: Entry = { record, seq: ++this.#seq, bytes: 0 }
    this.#entries.set(record.uuid, entry)
    for (const [fields, indexes] of this.#indexes) add(indexes, fields, entry)
    if (finalStatuses.has(record.status)) this.#retire(record.uuid, entry)
  }

  async get (uuid: string): Promise<TaskRecord | undefined> {
    return this.#entries.get(uuid)?.record
  }

  async update (uuid: string, patch: RecordPatch, fence?: UpdateFence): Promise<TaskRecord | undefined> {
    const entry = this.#entries.get(uuid)
    if (entry === undefined) return undefined
    if (fence !== undefined && (entry.record.status !== fence.status || entry.record.attempt !== fence.attempt)) return undefined
    const { record } = entry
    const { messages, trimMessages } = patch
    const before = record.status
    const finishedBefore = record.finished
    if (record.status !== (patch.status ?? before)) this.#unindexStatus(entry)
    applyFields(record, patch)
    if (messages !== undefined) {
      for (const message of messages) record.messages.push(message)
    }
    if (trimMessages !== undefined && trimMessages > 0) record.messages.splice(0, trimMessages)
    if (record.status !== before) {
      for (const [covered, indexes] of this.#indexes) {
        if ((covered & STATUS) !== 0) add(indexes, covered, entry)
      }
    }
    if (this.#finished.has(uuid)) {
      // A finished record changed after all: count it anew (and file it under its new status or time).
      if (record.status !== before || record.finished !== finishedBefore) {
        this.#unfileFinished(before, finishedBefore, entry)
        this.#fileFinished(entry)
      }
      this.#bytes -= entry.bytes
      entry.bytes = sizeOf(record)
      this.#bytes += entry.bytes
      this.#evict()
    } else if (finalStatuses.has(record.status)) {
      this.#retire(uuid, entry)
    }
    return record
  }

  async list (filter: ListFilter): Promise<ListPage> {
    const after = filter.cursor === undefined ? undefined : readCursor(filter.cursor)
    const fields = (filter.owner !== undefined ? OWNER : 0) | (filter.status !== undefined ? STATUS : 0) | (filter.task !== undefined ? TASK : 0)
    const index = this.#indexesFor(fields).get(valueKey(fields, filter.owner ?? null, filter.status ?? '', filter.task ?? ''))
    const records: TaskRecord[] = []
    if (index === undefined || filter.limit <= 0) return { records, next: null }
    // Newest first: from the highest creation number (below the cursor) down, one past the
    // limit to know whether another page follows.
    let last = 0
    for (const [seq, record] of index.entriesReversed(after, undefined, after !== undefined)) {
      if (records.length === filter.limit) return { records, next: String(last) }
      records.push(record)
      last = seq
    }
    return { records, next: null }
  }

  async delete (uuid: string): Promise<boolean> {
    const entry = this.#entries.get(uuid)
    if (entry === undefined) return false
    this.#forget(uuid, entry)
    return true
  }

  async live (): Promise<TaskRecord[]> {
    const found: TaskRecord[] = []
    // A Map iterates in insertion order: creation order.
    for (const { record } of this.#entries.values()) {
      if (!finalStatuses.has(record.status)) found.push(record)
    }
    return found
  }

  async expire (status: FinalStatus, before: string, limit: number): Promise<string[]> {
    const removed: string[] = []
    const expiry = this.#finishedBy.get(status)
    if (expiry === undefined) return removed
    // Oldest finished first: stop at the first one young enough to stay.
    for (const [[finished], uuid] of expiry.entries()) {
      if (removed.length >= limit || finished >= before) break
      removed.push(uuid)
    }
    for (const uuid of removed) this.#forget(uuid, this.#entries.get(uuid) as Entry)
    return removed
  }

  async finishedSince (status: FinalStatus, since: string, limit: number): Promise<TaskRecord[]> {
    const found: TaskRecord[] = []
    // Newest finished first, stopping at the first one finished before `since`; a turn of
    // the event loop every `finishedSlice` records, going on below the last key read.
    let below: [string, number] | undefined
    for (;;) {
      const expiry = this.#finishedBy.get(status)
      if (expiry === undefined) return found
      let read = 0
      for (const [key, uuid] of expiry.entriesReversed(below, undefined, below !== undefined)) {
        if (found.length >= limit || key[0] < since) return found
        found.push(lean((this.#entries.get(uuid) as Entry).record))
        below = key
        if (++read >= finishedSlice) break
      }
      if (read < finishedSlice) return found
      await new Promise(resolve => setImmediate(resolve))
    }
  }

  /** How many records are held. */
  get size (): number {
    return this.#entries.size
  }

  /** Approximate bytes of the finished records held (what `maxBytes` bounds). */
  get bytes (): number {
    return this.#bytes
  }

  /** The indexes of one combination of filter fields, built from every record the first time. */
  #indexesFor (fields: number): Map<string, Index> {
    let indexes = this.#indexes.get(fields)
    if (indexes === undefined) {
      indexes = new Map()
      for (const entry of this.#entries.values()) add(indexes, fields, entry)
      this.#indexes.set(fields, indexes)
    }
    return indexes
  }

  /** Takes a record out of the indexes that include its status (before the status changes). */
  #unindexStatus (entry: Entry): void {
    for (const [fields, indexes] of this.#indexes) {
      if ((fields & STATUS) !== 0) remove(indexes, fields, entry)
    }
  }

  /** A final status: the inputs are no longer needed, and the record now counts towards the bounds. */
  #retire (uuid: string, entry: Entry): void {
    entry.record.inputs = {}
    entry.bytes = sizeOf(entry.record)
    this.#bytes += entry.bytes
    this.#finished.add(uuid)
    this.#fileFinished(entry)
    this.#evict()
  }

  /** Files a finished record for retention; one without a finished time is never expired. */
  #fileFinished (entry: Entry): void {
    const { record } = entry
    if (!finalStatuses.has(record.status) || record.finished === null) return
    let expiry = this.#finishedBy.get(record.status)
    if (expiry === undefined) {
      expiry = new BTree<[string, number], string>(undefined, compareExpiry)
      this.#finishedBy.set(record.status, expiry)
    }
    expiry.set([record.finished, entry.seq], record.uuid)
  }

  #unfileFinished (status: string, finished: string | null, entry: Entry): void {
    if (finished !== null) this.#finishedBy.get(status)?.delete([finished, entry.seq])
  }

  #evict (): void {
    // A Set iterates in insertion order: the first is the oldest finished. The newest is kept.
    while (this.#finished.size > 1 && (this.#finished.size > this.#maxFinished || this.#bytes > this.#maxBytes)) {
      const oldest = this.#finished.values().next().value as string
      this.#forget(oldest, this.#entries.get(oldest) as Entry)
    }
  }

  #forget (uuid: string, entry: Entry): void {
    for (const [fields, indexes] of this.#indexes) remove(indexes, fields, entry)
    this.#entries.delete(uuid)
    if (this.#finished.delete(uuid)) this.#bytes -= entry.bytes
    this.#unfileFinished(entry.record.status, entry.record.finished, entry)
  }
}

/**
 * The values an index selects, for the fields it covers. Owners and task names are any
 * strings (an owner may be null), so each is written as JSON: never ambiguous.
 */
function valueKey (fields: number, owner: string | null, status: string, task: string): string {
  let key = ''
  if ((fields & OWNER) !== 0) key += JSON.stringify(owner)
  if ((fields & STATUS) !== 0) key += ' ' + status
  if ((fields & TASK) !== 0) key += ' ' + JSON.stringify(task)
  return key
}

function compareExpiry (a: [string, number], b: [string, number]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]
}

function add (indexes: Map<string, Index>, fields: number, entry: Entry): void {
  const { record } = entry
  const key = valueKey(fields, record.owner, record.status, record.task)
  let index = indexes.get(key)
  if (index === undefined) {
    index = new BTree<number, TaskRecord>(undefined, (a, b) => a - b)
    indexes.set(key, index)
  }
  index.set(entry.seq, record)
}

function remove (indexes: Map<string, Index>, fields: number, entry: Entry): void {
  const { record } = entry
  const key = valueKey(fields, record.owner, record.status, record.task)
  const index = indexes.get(key)
  if (index === undefined) return
  index.delete(entry.seq)
  // Owners and tasks come and go: an empty index is dropped, not kept forever.
  if (index.size === 0) indexes.delete(key)
}

/** Approximate bytes a finished record holds: characters of its messages, outputs and error, plus its own cost. */
function sizeOf (record: TaskRecord): number {
  let bytes = recordOverhead + (record.error?.length ?? 0)
  for (const message of record.messages) bytes += message.length + 16
  // Outputs are JSON-safe (they crossed from the child as JSON, or were checked inline).
  try {
    bytes += JSON.stringify(record.outputs)?.length ?? 0
  } catch {
    bytes += recordOverhead
  }
  return bytes
}
