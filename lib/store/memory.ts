import { finalStatuses, type ListFilter, type RecordPatch, type Store, type TaskRecord } from './types.js'

/** Options of the in-memory store. */
export interface MemoryStoreOptions {
  /**
   * How many finished records to keep; past it the oldest finished are forgotten, so
   * that a long-running server's memory stays bounded. Live tasks are always kept.
   * @default 100000
   */
  maxFinished?: number
}

/** The default store: records in a Map, gone when the process ends. */
export class MemoryStore implements Store {
  readonly #records = new Map<string, TaskRecord>()
  readonly #finished = new Set<string>()
  readonly #maxFinished: number

  constructor (options: MemoryStoreOptions = {}) {
    const max = options.maxFinished ?? 100_000
    if (!Number.isInteger(max) || max < 1) {
      throw new TypeError(`options.maxFinished must be a positive integer, got ${String(max)}`)
    }
    this.#maxFinished = max
  }

  async create (record: TaskRecord): Promise<void> {
    this.#records.set(record.uuid, record)
  }

  async get (uuid: string): Promise<TaskRecord | undefined> {
    return this.#records.get(uuid)
  }

  async update (uuid: string, patch: RecordPatch): Promise<TaskRecord | undefined> {
    const record = this.#records.get(uuid)
    if (record === undefined) return undefined
    const { messages, trimMessages, ...fields } = patch
    Object.assign(record, fields)
    if (messages !== undefined) {
      for (const message of messages) record.messages.push(message)
    }
    if (trimMessages !== undefined && trimMessages > 0) record.messages.splice(0, trimMessages)
    if (patch.status !== undefined && finalStatuses.has(patch.status)) this.#retire(uuid)
    return record
  }

  async list (filter: ListFilter): Promise<TaskRecord[]> {
    const found: TaskRecord[] = []
    // A Map iterates in insertion order, which is creation order: walk it backwards.
    const records = [...this.#records.values()]
    for (let i = records.length - 1; i >= 0 && found.length < filter.limit; i--) {
      const record = records[i] as TaskRecord
      if (filter.owner !== undefined && record.owner !== filter.owner) continue
      if (filter.status !== undefined && record.status !== filter.status) continue
      if (filter.task !== undefined && record.task !== filter.task) continue
      found.push(record)
    }
    return found
  }

  /** How many records are held. */
  get size (): number {
    return this.#records.size
  }

  #retire (uuid: string): void {
    this.#finished.add(uuid)
    if (this.#finished.size <= this.#maxFinished) return
    // A Set iterates in insertion order: the first is the oldest finished.
    const oldest = this.#finished.values().next().value as string
    this.#finished.delete(oldest)
    this.#records.delete(oldest)
  }
}
