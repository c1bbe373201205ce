import type { Redis as RedisClient } from 'ioredis'
import { EventBus, isFinalEvent, type BusHistory, type BusHooks, type CreatedListener, type CreatedNotice, type TaskBus, type TaskEvent, type TaskListener } from '../events.js'
import { bounded, closeClient, closeTimeout, connect, isUnavailable, type RedisConnection } from './connection.js'

/** Options of the Redis event bus. */
export interface RedisBusOptions {
  /** The server: a URL, ioredis options, or an ioredis client (the bus makes its subscriber with `duplicate()`; the client is left open). */
  connection: RedisConnection
  /** What the channel's name begins with: the same prefix as the store's. @default '{fastify-task-api}' */
  prefix?: string
  /**
   * Recent events kept in Redis for the tasks this server's streams follow, so that a
   * client reconnecting to any server gets exactly what it missed (the plugin passes its
   * `streams.historySize` and `streams.historyTtl`). Without it the bus keeps none: a
   * server that only publishes (a worker) records what the followers asked for.
   */
  history?: { size: number, ttl: number }
}

/**
 * While a followed task runs, its recent events stay at least this long (ms) after the
 * last one; once it has ended, `history.ttl`.
 */
const liveHistoryTtl = 15 * 60_000

/** How long (ms) an event is sent again while Redis is unavailable, before it is given up. */
const publishRetry = 60_000

/*
 * A task's history is two keys under the prefix: `watch:<uuid>` ("<size>,<ttl>", set by
 * a server whose stream follows the task, for `ttl`; each event of the running task
 * extends it to `liveHistoryTtl`, the final one sets it to `ttl`) and `history:<uuid>`, a list of the events
 * published while the watch existed, oldest first, at most <size>. Events are appended
 * only while the watch exists, and a watch made anew empties the list, so the list never
 * has a hole: it holds every event from its first one on. Publishing and appending are
 * one script, so an event is in the list exactly when its PUBLISH went out.
 */
const publishLua = `
local watch = redis.call('GET', KEYS[1])
if watch then
  local size, ttl = string.match(watch, '^(%d+),(%d+)$')
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(size), -1)
  local keep = ARGV[3] == '1' and ttl or math.max(tonumber(ttl), ${liveHistoryTtl})
  redis.call('PEXPIRE', KEYS[2], keep)
  redis.call('PEXPIRE', KEYS[1], keep)
end
return redis.call('PUBLISH', ARGV[1], ARGV[2])`

const watchLua = `
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1`

// Without the watch the list may miss the latest events: it answers nothing then.
const sinceLua = `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('LRANGE', KEYS[2], 0, -1)`

interface BusClient extends RedisClient {
  taskPublish (watch: string, history: string, channel: string, event: string, final: '0' | '1'): Promise<number>
  taskWatch (watch: string, history: string, value: string, ttl: number): Promise<number>
  taskSince (watch: string, history: string): Promise<string[] | null>
}

/**
 * Carries task events across servers over Redis pub/sub: every server publishes on one
 * channel (`<prefix>:events`) and every server receives all of it, then hands each event
 * to its own subscribers of that task (an `EventBus`). An event comes back to the server
 * that published it the same way, so each server sees one order: the publishing order,
 * which is a task's seq order (a task's events are published by one server at a time,
 * after their store write).
 *
 * Pub/sub delivers to the servers connected at the time: a server whose subscriber lost
 * Redis misses what was published meanwhile. It tells its hooks (`lost`, then `restored`
 * once it listens again), and the streams catch up from the history or the store.
 */
export class RedisBus implements TaskBus {
  readonly channel: string
  /** Where new tasks are announced (`<prefix>:created`). */
  readonly createdChannel: string
  readonly history: BusHistory | undefined
  readonly #prefix: string
  readonly #local = new EventBus()
  readonly #connection: RedisConnection
  readonly #publisher: BusClient
  /** Made by `start()`: a server that only publishes (a worker) holds no subscriber connection. */
  #subscriber: RedisClient | undefined
  readonly #ownPublisher: boolean
  #hooks: BusHooks = { error: () => {} }
  /** The subscriber lost its connection and has not listened again since. */
  #lost = false
  #closing: Promise<void> | undefined
  /** The publisher was connected once: from then on a command fails fast while Redis is away. */
  #wasReady = false
  /** Resolves at the publisher's first connection. */
  #firstReady: Promise<void> | undefined
  /** Per task, the publishing under way: a task's events go out one after another, in order. */
  readonly #sending = new Map<string, Promise<void>>()

  constructor (options: RedisBusOptions) {
    if (typeof options !== 'object' || options === null) throw new TypeError(`options must be an object with a connection, got ${String(options)}`)
    const prefix = options.prefix ?? '{fastify-task-api}'
    if (typeof prefix !== 'string' || prefix === '') throw new TypeError(`options.prefix must be a non-empty string, got ${JSON.stringify(prefix)}`)
    this.#prefix = prefix
    this.channel = `${prefix}:events`
    this.createdChannel = `${prefix}:created`
    this.#connection = options.connection
    const publisher = connect(options.connection, {}, 'RedisBus')
    this.#publisher = publisher.client as BusClient
    this.#ownPublisher = publisher.own
    this.#publisher.defineCommand('taskPublish', { numberOfKeys: 2, lua: publishLua })
    this.#publisher.defineCommand('taskWatch', { numberOfKeys: 2, lua: watchLua })
    this.#publisher.defineCommand('taskSince', { numberOfKeys: 2, lua: sinceLua })
    const history = options.history
    if (history !== undefined && history.size > 0) {
      const value = `${Math.floor(history.size)},${Math.floor(history.ttl)}`
      this.history = {
        watch: async (uuid) => {
          await this.#connected()
          await this.#publisher.taskWatch(this.#watchKey(uuid), this.#historyKey(uuid), value, Math.floor(history.ttl))
        },
        since: async (uuid, seq) => {
          await this.#connected()
          const texts = await this.#publisher.taskSince(this.#watchKey(uuid), this.#historyKey(uuid))
          if (texts === null || texts.length === 0) return undefined
          const events = texts.map(text => JSON.parse(text) as TaskEvent)
          const first = events[0] as TaskEvent
          const last = events.at(-1) as TaskEvent
          // Every event from the first one on is in the list: it answers for `seq` when
          // nothing can fall between `seq` and the first.
          if (seq + 1 < first.seq || seq > last.seq) return undefined
          const missed = events.filter(event => event.seq > seq)
          // A task's events on a Redis deployment have consecutive seqs: a gap is an event
          // that could not be published (Redis was away past the retries). Then it cannot tell.
          if (missed.some((event, i) => event.seq !== seq + 1 + i)) return undefined
          return { events: missed, ended: isFinalEvent(last) }
        },
        forget: async (uuid) => {
          await this.#connected()
          await this.#publisher.del(this.#watchKey(uuid), this.#historyKey(uuid))
        },
      }
    }
  }

  /**
   * Resolves once the publisher's connection is up, or after 2 s: made at construction, a
   * fail-fast connection would refuse the first commands of a server just started.
   */
  async #connected (): Promise<void> {
    if (this.#publisher.status === 'ready' || this.#wasReady) return
    // One listener for every caller: a listener per call piled up while Redis was away
    // (MaxListenersExceededWarning on an API node started during a Redis restart).
    this.#firstReady ??= new Promise<void>((resolve) => {
      this.#publisher.once('ready', () => {
        this.#wasReady = true
        resolve()
      })
    })
    await bounded(this.#firstReady, 2000)
  }

  #watchKey (uuid: string): string {
    return `${this.#prefix}:watch:${uuid}`
  }

  #historyKey (uuid: string): string {
    return `${this.#prefix}:history:${uuid}`
  }

  /**
   * Subscribes to the channel; resolves once Redis confirmed it (events published from
   * then on arrive). From then on, `hooks.lost` is called when the subscriber loses
   * Redis, and `hooks.restored` once it listens again.
   */
  async start (hooks: BusHooks): Promise<void> {
    this.#hooks = hooks
    if (this.#subscriber !== undefined) return
    const subscriber = this.#ownPublisher ? connect(this.#connection, { subscriber: true }, 'RedisBus').client : this.#publisher.duplicate({ maxRetriesPerRequest: null })
    this.#subscriber = subscriber
    subscriber.on('error', () => {})
    subscriber.on('message', (channel: string, text: string) => {
      if (channel !== this.channel && channel !== this.createdChannel) return
      let message: TaskEvent | CreatedNotice
      try {
        message = JSON.parse(text) as TaskEvent | CreatedNotice
      } catch (err) {
        this.#hooks.error(err)
        return
      }
      if (channel === this.channel) this.#local.publish(message as TaskEvent, this.#hooks.error)
      else this.#local.announce(message as CreatedNotice, this.#hooks.error)
    })
    subscriber.on('close', () => {
      if (this.#lost || this.#closing !== undefined) return
      this.#lost = true
      this.#hooks.lost?.()
    })
    subscriber.on('ready', () => {
      if (!this.#lost || this.#closing !== undefined) return
      // ioredis subscribes again by itself; this SUBSCRIBE's answer comes after Redis
      // took both, so events published from then on arrive.
      subscriber.subscribe(this.channel, this.createdChannel).then(() => {
        if (!this.#lost || this.#closing !== undefined) return
        this.#lost = false
        this.#hooks.restored?.()
      }, () => {})
    })
    await subscriber.subscribe(this.channel, this.createdChannel)
  }

  /** Publishes on `<prefix>:created` for the watchers on every server (this one included: it comes back). */
  announce (notice: CreatedNotice, onError: (err: unknown) => void): void {
    this.#publisher.publish(this.createdChannel, JSON.stringify(notice)).catch(onError)
  }

  watch (listener: CreatedListener): () => void {
    return this.#local.watch(listener)
  }

  subscribe (uuid: string, listener: TaskListener): () => void {
    return this.#local.subscribe(uuid, listener)
  }

  /**
   * Publishes the event (and keeps it in the task's history when followed). A task's
   * events go out in order; while Redis is unavailable each is sent again (for up to a
   * minute, not once the bus is closing), so that an event whose record was written is
   * not lost to a reconnecting publisher. `onError` gets what could not be sent.
   */
  publish (event: TaskEvent, onError: (err: unknown) => void): void {
    const { uuid } = event
    const args = [this.#watchKey(uuid), this.#historyKey(uuid), this.channel, JSON.stringify(event), isFinalEvent(event) ? '1' : '0'] as const
    const send = async (): Promise<void> => {
      const start = Date.now()
      for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
        try {
          await this.#publisher.taskPublish(...args)
          return
        } catch (err) {
          if (!isUnavailable(err) || this.#closing !== undefined || Date.now() + delay > start + publishRetry) {
            onError(err)
            return
          }
          await new Promise(resolve => setTimeout(resolve, delay))
        }
      }
    }
    const previous = this.#sending.get(uuid)
    const sending = previous === undefined ? send() : previous.then(send)
    this.#sending.set(uuid, sending)
    void sending.then(() => {
      if (this.#sending.get(uuid) === sending) this.#sending.delete(uuid)
    })
  }

  /** Other servers may have subscribers: every event is published. */
  has (): boolean {
    return true
  }

  get size (): number {
    return this.#local.size
  }

  async close (): Promise<void> {
    this.#closing ??= (async () => {
      // What is being published gets its chance (bounded: Redis may be gone).
      await bounded(Promise.allSettled([...this.#sending.values()]), closeTimeout)
      if (this.#subscriber !== undefined) await closeClient(this.#subscriber)
      if (this.#ownPublisher) await closeClient(this.#publisher)
    })()
    return this.#closing
  }
}
