import type { ServiceLogger } from '../executor.js'
import { normalizeOptions, type RedisOptions, type TaskApiOptions } from '../options.js'
import { loadRegistry } from '../registry.js'
import { createRunner } from '../runner/create.js'
import { RedisBus } from './bus.js'
import { startQueueWorker } from './queue.js'
import { RedisStore } from './store.js'

/** Options of a worker: the deployment's Redis, the task modules, and how the pool runs them. */
export interface WorkerOptions extends Pick<TaskApiOptions, 'tasks' | 'progressInterval' | 'execArgv' | 'env' | 'timeout' | 'cancelGrace' | 'shutdownTimeout' |
'maxMessages' | 'maxMessageLength' | 'maxOutputSize' | 'maxTasksPerChild' | 'resourceLimits' | 'ackTimeout' | 'childPerTask'> {
  /** The same `connection` and `prefix` as the API nodes' `redis` option. */
  redis: RedisOptions
  /** Tasks run at once, each in a child process. @default 1 */
  concurrency?: number
  /** Where the worker logs (a pino logger fits). @default console */
  logger?: ServiceLogger
}

/** A running worker. */
export interface TaskWorker {
  /**
   * Stops gracefully: takes no more tasks, waits up to `shutdownTimeout` for the running
   * ones, then stops them and hands them back to the queue (or fails them, as restart
   * recovery would), and closes its connections.
   */
  close (): Promise<void>
}

/**
 * Starts a worker: it takes tasks from the deployment's queue and runs them in a warm pool
 * of child processes of its own, with the same task API as a single server (progress,
 * messages, signal, timeouts, retries, the limits). Resolves once it takes tasks.
 */
export async function startWorker (options: WorkerOptions): Promise<TaskWorker> {
  const { redis, concurrency = 1, logger, ...rest } = options
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new TypeError(`options.concurrency must be an integer >= 1 (a worker runs tasks), got ${String(concurrency)}`)
  const normalized = normalizeOptions({ ...rest, redis, concurrency })
  const log: ServiceLogger = logger ?? {
    warn: (obj, msg) => console.warn(msg, obj),
    error: (obj, msg) => console.error(msg, obj),
  }
  const registry = await loadRegistry(normalized.modules)
  const runner = createRunner(normalized, registry, log)
  const shared = { connection: redis.connection, ...(redis.prefix === undefined ? {} : { prefix: redis.prefix }) }
  const store = new RedisStore({ ...shared, exclusive: false })
  const bus = new RedisBus(shared)
  let started: { close: () => Promise<void> }
  try {
    started = await startQueueWorker({
      registry,
      store,
      log,
      execution: normalized.execution,
      limits: normalized.limits,
      now: Date.now,
      publish: event => bus.publish(event, err => log.error({ err }, 'fastify-task-api: an event could not be published')),
      followed: () => true,
      runner,
    }, { ...shared, concurrency: normalized.concurrency, ...(redis.lockDuration === undefined ? {} : { lockDuration: redis.lockDuration }), ...(redis.reconcileInterval === undefined ? {} : { reconcileInterval: redis.reconcileInterval }) })
  } catch (err) {
    await runner.close().catch(() => {})
    await store.close()
    await bus.close()
    throw err
  }
  let closing: Promise<void> | undefined
  return {
    async close () {
      closing ??= (async () => {
        await started.close()
        await store.close()
        await bus.close()
      })()
      return closing
    },
  }
}
