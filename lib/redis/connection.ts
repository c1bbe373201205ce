import { createRequire } from 'node:module'
import type { Redis as RedisClient, RedisOptions } from 'ioredis'

/** Where to connect: a `redis://` URL, ioredis options, or a client of the app's own. */
export type RedisConnection = string | RedisOptions | RedisClient

/** ioredis, loaded only by apps that use Redis. */
export function loadDriver (who: string): typeof import('ioredis').Redis {
  const require = createRequire(import.meta.url)
  try {
    return (require('ioredis') as typeof import('ioredis')).Redis
  } catch (err) {
    throw new Error(`${who} needs ioredis, which is not installed: npm install ioredis@5`, { cause: err })
  }
}

export function connect (connection: RedisConnection, options: { commandTimeout?: number, subscriber?: boolean, lazy?: boolean, name?: string }, who: string): { client: RedisClient, own: boolean } {
  if (typeof connection === 'object' && connection !== null && typeof (connection as RedisClient).defineCommand === 'function') {
    return { client: connection as RedisClient, own: false }
  }
  const Redis = loadDriver(who)
  // Fail fast while Redis is away (503 to clients, never a request that hangs); ioredis
  // reconnects by itself meanwhile.
  // A subscriber keeps its offline queue: its SUBSCRIBE waits for the connection.
  const settings: RedisOptions = options.subscriber === true
    ? { maxRetriesPerRequest: null }
    : { enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: options.commandTimeout ?? 2000 }
  // Lazy: no connection until the first command (a client made only to read its options).
  if (options.lazy === true) settings.lazyConnect = true
  // Named in CLIENT LIST, for operators (and tests) to tell the connections apart.
  if (options.name !== undefined) settings.connectionName = options.name
  let client: RedisClient
  if (typeof connection === 'string') client = new Redis(connection, settings)
  else if (typeof connection === 'object' && connection !== null) client = new Redis({ ...settings, ...(connection as RedisOptions) })
  else throw new TypeError(`options.connection must be a redis:// URL, ioredis options or an ioredis client, got ${String(connection)}`)
  // Connection errors reach callers as StoreUnavailableError; ioredis would print each one.
  client.on('error', () => {})
  return { client, own: true }
}

/** An error of the connection, not of the command: the server cannot be reached now. */
export function isUnavailable (err: unknown): boolean {
  const message = (err as Error | undefined)?.message ?? ''
  const code = (err as { code?: unknown } | undefined)?.code
  // OOM: Redis is at its maxmemory (with noeviction, as BullMQ needs): writes wait until it has room.
  // ioredis's MaxRetriesPerRequestError says "Reached the max retries per request limit".
  if ((err as Error | undefined)?.name === 'MaxRetriesPerRequestError') return true
  return /Stream isn't writeable|Connection is closed|Command timed out|enableOfflineQueue|ECONNREFUSED|ECONNRESET|EPIPE|LOADING|max retries per request|^OOM /.test(message) ||
    code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'ETIMEDOUT'
}


/** How long (ms) a close waits for Redis before it drops the connection. */
export const closeTimeout = 1000

/**
 * Closes a connection: QUIT when it is up (bounded by `closeTimeout`), else drops it at
 * once: a close never waits for a Redis that is away.
 */
export async function closeClient (client: RedisClient): Promise<void> {
  if (client.status === 'ready') {
    const quit = client.quit().then(() => true, () => false)
    if (await bounded(quit, closeTimeout) === true) return
  }
  client.disconnect()
}

/** The promise's value, or undefined once `ms` have passed first. */
export async function bounded<T> (promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), ms) })
  try {
    return await Promise.race([promise, late])
  } finally {
    clearTimeout(timer)
  }
}
