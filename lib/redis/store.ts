import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import type { Redis as RedisClient } from 'ioredis'
import { bounded, closeClient, closeTimeout, connect, isUnavailable, type RedisConnection } from './connection.js'
import { finalStatuses, lean, readCursor, StoreUnavailableError, type FinalStatus, type ListFilter, type ListPage, type RecordPatch, type Store, type TaskRecord, type UpdateFence } from '../store/types.js'
import { createScript, deleteScript, expireScript, finishedSinceScript, getScript, listScript, liveScript, updateScript } from './scripts.js'

/** Options of the Redis store. */
export interface RedisStoreOptions {
  /** The server: a URL (`redis://user:pass@host:6379/0`), ioredis options, or an ioredis client (left open by `close()`). */
  connection: RedisConnection
  /**
   * What every key begins with. It should carry a `{hash tag}`: on Redis Cluster the
   * tag puts every key of the store in one slot, which its scripts need.
   * @default '{fastify-task-api}'
   */
  prefix?: string
  /**
   * How long (ms) a command may take before it fails with `StoreUnavailableError` (503
   * to clients). While the connection is down, commands fail at once instead of waiting.
   * @default 2000
   */
  commandTimeout?: number
  /**
   * One server per store: `open()` takes a lease (`<prefix>:lease`, renewed every third of
   * `leaseTtl`) and a second server waits for it, then fails, naming the holder. After a
   * crash the next server waits for the dead one's lease to expire (at most `leaseTtl`).
   * @default true
   */
  exclusive?: boolean
  /**
   * How long (ms) a lease outlives its last renewal. A server restarted after a crash
   * waits up to this long for the dead one's lease, within Fastify's `pluginTimeout`
   * (10 s by default): keep it well under that.
   * @default 5000
   */
  leaseTtl?: number
}

/** Thrown by `open()` when another server holds the store's lease. */
export class RedisStoreLockedError extends Error {
  override name = 'RedisStoreLockedError'
}

/** What the store's client can do: ioredis, with the scripts defined as commands. */
interface ScriptedClient extends RedisClient {
  taskCreate (...args: Array<string | number>): Promise<number>
  taskUpdate (...args: Array<string | number>): Promise<RawRecord | null>
  taskGet (...args: Array<string | number>): Promise<RawRecord | null>
  taskDelete (...args: Array<string | number>): Promise<number>
  taskList (...args: Array<string | number>): Promise<RawRecord[]>
  taskLive (...args: Array<string | number>): Promise<RawRecord[]>
  taskExpire (...args: Array<string | number>): Promise<string[]>
  taskFinishedSince (...args: Array<string | number>): Promise<[RawRecord[], number, string, number]>
  leaseRenew (key: string, token: string, ttl: number): Promise<number>
  leaseRelease (key: string, token: string): Promise<number>
}

/** A record as the scripts answer it: the hash's fields and values, flat, then the messages. */
type RawRecord = [string[], string[]]

/** The record fields kept in the hash, each JSON-encoded. */
const fields = ['uuid', 'task', 'status', 'owner', 'progress', 'target', 'outputs', 'error', 'attempt', 'created', 'started', 'finished', 'seq', 'inputs', 'messagesDropped'] as const
/** The fields a patch may set (the others are set at creation). */
const patchFields = ['status', 'progress', 'target', 'outputs', 'error', 'attempt', 'started', 'finished', 'seq', 'messagesDropped'] as const

/**
 * A store in Redis: records outlive the process, and every server connected to the same
 * Redis (and prefix) sees the same tasks. Each call is one script, run atomically by the
 * server: a record and its indexes never disagree. Lists read sorted sets (one per
 * combination of owner, status and task), so a page costs the same whatever the number
 * of records.
 *
 * Durability is the Redis server's: with `appendonly yes` and `appendfsync everysec` a
 * crash of Redis loses at most the last second; see the README's deployment section.
 */
export class RedisStore implements Store {
  /** Records outlive the process: a graceful close leaves unrun tasks pending for the next server. */
  readonly durable = true
  readonly prefix: string
  readonly #client: ScriptedClient
  readonly #ownClient: boolean
  readonly #commandTimeout: number
  /** Set once the connection has been ready: from then on, a call while it is down fails at once. */
  #wasReady = false
  #firstReady: Promise<void> | undefined
  #closing: Promise<void> | undefined
  readonly #exclusive: boolean
  readonly #leaseTtl: number
  /** This server's lease token, once `open()` took the lease. */
  readonly #token = `${process.pid}@${hostname()} ${randomUUID()}`
  #leaseTimer: ReturnType<typeof setInterval> | undefined
  #leased = false

  constructor (options: RedisStoreOptions) {
    if (typeof options !== 'object' || options === null) throw new TypeError(`options must be an object with a connection, got ${String(options)}`)
    const prefix = options.prefix ?? '{fastify-task-api}'
    if (typeof prefix !== 'string' || prefix === '') throw new TypeError(`options.prefix must be a non-empty string, got ${JSON.stringify(prefix)}`)
    const commandTimeout = options.commandTimeout ?? 2000
    if (!Number.isInteger(commandTimeout) || commandTimeout < 1) throw new TypeError(`options.commandTimeout must be a positive integer (ms), got ${String(commandTimeout)}`)
    const leaseTtl = options.leaseTtl ?? 5000
    if (!Number.isInteger(leaseTtl) || leaseTtl < 100) throw new TypeError(`options.leaseTtl must be an integer >= 100 (ms), got ${String(leaseTtl)}`)
    this.prefix = prefix
    this.#commandTimeout = commandTimeout
    this.#exclusive = options.exclusive ?? true
    this.#leaseTtl = leaseTtl
    const { client, own } = connect(options.connection, { commandTimeout }, 'RedisStore')
    this.#client = client as ScriptedClient
    this.#ownClient = own
    const define = (name: string, lua: string): void => client.defineCommand(name, { numberOfKeys: 0, lua })
    define('taskCreate', createScript)
    define('taskUpdate', updateScript)
    define('taskGet', getScript)
    define('taskDelete', deleteScript)
    define('taskList', listScript)
    define('taskLive', liveScript)
    define('taskExpire', expireScript)
    define('taskFinishedSince', finishedSinceScript)
    client.defineCommand('leaseRenew', { numberOfKeys: 1, lua: "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0" })
    client.defineCommand('leaseRelease', { numberOfKeys: 1, lua: "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0" })
  }

  /**
   * Takes the store's lease (unless `exclusive: false`): waits while another server holds
   * it, up to `leaseTtl` and a second (a crashed server's lease expires by then), then
   * throws `RedisStoreLockedError` naming the holder.
   */
  async open (): Promise<void> {
    if (!this.#exclusive || this.#leased) return
    const key = `${this.prefix}:lease`
    const deadline = Date.now() + this.#leaseTtl + 1000
    for (;;) {
      const taken = await this.#call(() => this.#client.set(key, this.#token, 'PX', this.#leaseTtl, 'NX'))
      if (taken === 'OK') break
      if (Date.now() >= deadline) {
        const holder = await this.#call(() => this.#client.get(key))
        throw new RedisStoreLockedError(`the Redis store ${this.prefix} is in use by another server (${holder ?? 'gone just now'}): one server per store; give each its own prefix`)
      }
      await new Promise(resolve => setTimeout(resolve, 250))
    }
    this.#leased = true
    this.#leaseTimer = setInterval(() => {
      this.#client.leaseRenew(key, this.#token, this.#leaseTtl).catch(() => {
        // Redis is away: renewed at the next tick once it is back (the lease outlives a short outage).
      })
    }, Math.floor(this.#leaseTtl / 3))
    this.#leaseTimer.unref()
  }

  async create (record: TaskRecord): Promise<void> {
    const args: Array<string | number> = []
    for (const field of fields) {
      const value = field === 'inputs' && finalStatuses.has(record.status) ? {} : record[field]
      args.push(field, JSON.stringify(value ?? null))
    }
    const finished = finishedMs(record.finished)
    if (finished !== '') args.push('finishedMs', finished)
    await this.#call(() => this.#client.taskCreate(this.prefix, record.uuid, finished, args.length / 2, ...args, ...record.messages))
  }

  async get (uuid: string): Promise<TaskRecord | undefined> {
    const raw = await this.#call(() => this.#client.taskGet(this.prefix, uuid))
    return raw === null ? undefined : toRecord(raw)
  }

  /** Honours `fence` in the same script as the change: several servers share this store. */
  async update (uuid: string, patch: RecordPatch, fence?: UpdateFence): Promise<TaskRecord | undefined> {
    const args: Array<string | number> = []
    for (const field of patchFields) {
      if (patch[field] !== undefined) args.push(field, JSON.stringify(patch[field]))
    }
    // A finished record drops its inputs: they were for the run.
    if (patch.status !== undefined && finalStatuses.has(patch.status)) args.push('inputs', '{}')
    const finished = patch.finished === undefined ? '' : finishedMs(patch.finished)
    const trim = patch.trimMessages !== undefined && patch.trimMessages > 0 ? patch.trimMessages : 0
    const raw = await this.#call(() => this.#client.taskUpdate(this.prefix, uuid, finished, trim, fence === undefined ? '' : `${JSON.stringify(fence.status)}:${JSON.stringify(fence.attempt)}`, fence?.write ?? '', args.length / 2, ...args, ...(patch.messages ?? [])))
    return raw === null ? undefined : toRecord(raw)
  }

  async list (filter: ListFilter): Promise<ListPage> {
    const before = filter.cursor === undefined ? Number.MAX_SAFE_INTEGER : readCursor(filter.cursor)
    if (filter.limit <= 0) return { records: [], next: null }
    const part = (value: string | null | undefined): string => value === undefined ? '*' : JSON.stringify(value)
    const key = `${this.prefix}:l:${part(filter.owner)}:${part(filter.status)}:${part(filter.task)}`
    const raws = await this.#call(() => this.#client.taskList(this.prefix, key, before, filter.limit + 1))
    const more = raws.length > filter.limit
    const records = (more ? raws.slice(0, filter.limit) : raws).map(toRecord)
    const last = more ? raws[filter.limit - 1] : undefined
    return { records, next: last === undefined ? null : idOf(last) }
  }

  async delete (uuid: string): Promise<boolean> {
    return await this.#call(() => this.#client.taskDelete(this.prefix, uuid)) === 1
  }

  async live (): Promise<TaskRecord[]> {
    const raws = await this.#call(() => this.#client.taskLive(this.prefix))
    return raws.map(toRecord)
  }

  async expire (status: FinalStatus, before: string, limit: number): Promise<string[]> {
    if (limit <= 0) return []
    return await this.#call(() => this.#client.taskExpire(this.prefix, JSON.stringify(status), finishedMs(before), limit))
  }

  /**
   * Reads in pages of `finishedPage` (one script each, so that Redis serves other commands
   * between them): a record changed during the call may be left out, none is answered twice.
   */
  async finishedSince (status: FinalStatus, since: string, limit: number): Promise<TaskRecord[]> {
    const from = finishedMs(since)
    if (limit <= 0 || from === '') return []
    const found: TaskRecord[] = []
    const seen = new Set<string>()
    let max = '+inf'
    let skip = 0
    while (found.length < limit) {
      const count = Math.min(finishedPage, limit - found.length)
      const [raws, read, last, same] = await this.#call(() => this.#client.taskFinishedSince(this.prefix, JSON.stringify(status), from, max, skip, count))
      for (const raw of raws) {
        // Read without messages, outputs and inputs (the script leaves them out).
        const record = lean(toRecord(raw))
        // Records that changed between pages can be read twice: once each.
        if (seen.has(record.uuid)) continue
        seen.add(record.uuid)
        found.push(record)
      }
      // Fewer than asked for: the index has no more.
      if (read < count) break
      // The next page starts at the last score read, past the members read with it.
      skip = last === max ? skip + same : same
      max = last
    }
    return found
  }

  /** Closes the connection (a client given in the options is left open: it is the app's). */
  async close (): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#leaseTimer)
      if (this.#leased && this.#client.status === 'ready') await bounded(this.#client.leaseRelease(`${this.prefix}:lease`, this.#token).catch(() => 0), closeTimeout)
      if (!this.#ownClient) return
      await closeClient(this.#client)
    })()
    return this.#closing
  }

  /**
   * The first calls wait for the connection to be made (up to `commandTimeout`): without
   * the offline queue a command sent before it would fail.
   */
  async #untilFirstReady (): Promise<void> {
    if (this.#client.status === 'ready') {
      this.#wasReady = true
      return
    }
    this.#firstReady ??= new Promise<void>((resolve, reject) => {
      const onReady = (): void => {
        clearTimeout(timer)
        this.#wasReady = true
        resolve()
      }
      const timer = setTimeout(() => {
        this.#client.off('ready', onReady)
        this.#firstReady = undefined
        reject(new Error(`Command timed out: not connected after ${this.#commandTimeout} ms (${this.#client.status})`))
      }, this.#commandTimeout)
      this.#client.once('ready', onReady)
    })
    await this.#firstReady
  }

  /** Runs a command; a connection that is down or a command that times out is StoreUnavailableError. */
  async #call<T> (command: () => Promise<T>): Promise<T> {
    try {
      if (!this.#wasReady) await this.#untilFirstReady()
      return await command()
    } catch (err) {
      if (isUnavailable(err)) throw new StoreUnavailableError(`the Redis store cannot be reached: ${(err as Error).message}`, { cause: err })
      throw err
    }
  }
}

/**
 * Records `finishedSince` reads in one script. Redis runs nothing else meanwhile: 1,000
 * held it 31 ms (median) on a loaded 2-core machine, so a quarter of that.
 */
const finishedPage = 250

/** An ISO 8601 time as the score of the retention index (ms), or '' for none. */
function finishedMs (iso: string | null | undefined): string {
  if (iso === null || iso === undefined) return ''
  const ms = Date.parse(iso)
  return Number.isFinite(ms) ? String(ms) : ''
}

function idOf (raw: RawRecord): string {
  const [flat] = raw
  for (let i = 0; i < flat.length; i += 2) {
    if (flat[i] === 'id') return flat[i + 1] as string
  }
  throw new Error('a Redis task record without its id')
}

function toRecord (raw: RawRecord): TaskRecord {
  const [flat, messages] = raw
  const record: Record<string, unknown> = {}
  for (let i = 0; i < flat.length; i += 2) {
    const field = flat[i] as string
    if (field === 'id' || field === 'finishedMs' || field === 'w') continue
    record[field] = JSON.parse(flat[i + 1] as string)
  }
  record.messages = messages
  return record as unknown as TaskRecord
}
