import type { Redis as RedisClient } from 'ioredis'
import { EventBus, type TaskBus, type TaskEvent, type TaskListener } from '../events.js'
import { closeClient, connect, type RedisConnection } from './connection.js'

/** Options of the Redis event bus. */
export interface RedisBusOptions {
  /** The server: a URL, ioredis options, or an ioredis client (the bus makes its subscriber with `duplicate()`; the client is left open). */
  connection: RedisConnection
  /** What the channel's name begins with: the same prefix as the store's. @default '{fastify-task-api}' */
  prefix?: string
}

/**
 * Carries task events across servers over Redis pub/sub: every server publishes on one
 * channel (`<prefix>:events`) and every server receives all of it, then hands each event
 * to its own subscribers of that task (an `EventBus`). An event comes back to the server
 * that published it the same way, so each server sees one order: the publishing order,
 * which is a task's seq order (a task's events are published by one server at a time,
 * after their store write).
 *
 * Pub/sub delivers to the servers connected at the time: a server that was disconnected
 * misses what was published meanwhile. Its streams' clients then get a fresh snapshot
 * from the store when they reconnect (see the README, live events).
 */
export class RedisBus implements TaskBus {
  readonly channel: string
  readonly #local = new EventBus()
  readonly #connection: RedisConnection
  readonly #publisher: RedisClient
  /** Made by `start()`: a server that only publishes (a worker) holds no subscriber connection. */
  #subscriber: RedisClient | undefined
  readonly #ownPublisher: boolean
  #onError: (err: unknown) => void = () => {}
  #closing: Promise<void> | undefined

  constructor (options: RedisBusOptions) {
    if (typeof options !== 'object' || options === null) throw new TypeError(`options must be an object with a connection, got ${String(options)}`)
    const prefix = options.prefix ?? '{fastify-task-api}'
    if (typeof prefix !== 'string' || prefix === '') throw new TypeError(`options.prefix must be a non-empty string, got ${JSON.stringify(prefix)}`)
    this.channel = `${prefix}:events`
    this.#connection = options.connection
    const publisher = connect(options.connection, {}, 'RedisBus')
    this.#publisher = publisher.client
    this.#ownPublisher = publisher.own
  }

  /** Subscribes to the channel; resolves once Redis confirmed it (events published from then on arrive). */
  async start (onError: (err: unknown) => void): Promise<void> {
    this.#onError = onError
    if (this.#subscriber !== undefined) return
    const subscriber = this.#ownPublisher ? connect(this.#connection, { subscriber: true }, 'RedisBus').client : this.#publisher.duplicate({ maxRetriesPerRequest: null })
    this.#subscriber = subscriber
    subscriber.on('error', () => {})
    subscriber.on('message', (channel: string, text: string) => {
      if (channel !== this.channel) return
      let event: TaskEvent
      try {
        event = JSON.parse(text) as TaskEvent
      } catch (err) {
        this.#onError(err)
        return
      }
      this.#local.publish(event, this.#onError)
    })
    await subscriber.subscribe(this.channel)
  }

  subscribe (uuid: string, listener: TaskListener): () => void {
    return this.#local.subscribe(uuid, listener)
  }

  publish (event: TaskEvent, onError: (err: unknown) => void): void {
    this.#publisher.publish(this.channel, JSON.stringify(event)).catch(onError)
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
      if (this.#subscriber !== undefined) await closeClient(this.#subscriber)
      if (this.#ownPublisher) await closeClient(this.#publisher)
    })()
    return this.#closing
  }
}
