import { createRequire } from 'node:module'
import type { Job as BullJob, Queue as BullQueue, Worker as BullWorker } from 'bullmq'
import type { Redis as RedisClient } from 'ioredis'
import { LocalExecutor, type Executor, type ExecutorContext, type Recovery } from '../executor.js'
import type { RegisteredTask } from '../registry.js'
import type { Runner } from '../runner/types.js'
import { toState } from '../state.js'
import { finalStatuses, StoreUnavailableError, type TaskRecord } from '../store/types.js'
import { bounded, closeClient, closeTimeout, connect, type RedisConnection } from './connection.js'

/*
 * Tasks on BullMQ: an API node adds a job per task to one queue (jobId = the task's
 * uuid; the job carries the uuid only, the record is in the Redis store), and workers
 * anywhere take them and run them in their own pools (a LocalExecutor each), writing the
 * record and publishing the events as a single server does. Cancels of running tasks go
 * to every worker over a channel, and are kept as marks the workers look for each second
 * (a channel message is lost while a subscriber reconnects); the one running the task stops it.
 */

/** The BullMQ queue every node of a deployment shares, under the store's prefix. */
export const queueName = 'tasks'

/** What every node of a deployment agrees on: where Redis is and the key prefix. */
export interface QueueOptions {
  connection: RedisConnection
  /** @default '{fastify-task-api}' */
  prefix?: string
}

/** The job's data: the record is in the store. */
interface JobData { uuid: string }

/** BullMQ, loaded only by apps that use it. */
function loadBullMQ (): typeof import('bullmq') {
  const require = createRequire(import.meta.url)
  try {
    return require('bullmq') as typeof import('bullmq')
  } catch (err) {
    throw new Error('running tasks on Redis needs bullmq, which is not installed: npm install bullmq@6 ioredis@5', { cause: err })
  }
}

/**
 * BullMQ's connection: options (a URL is parsed by ioredis), with what BullMQ requires.
 * Its connections reconnect while Redis is away, until `closing.closing` is set: then
 * they give up, so that a close with Redis gone ends and leaves nothing reconnecting.
 */
function bullConnection (connection: RedisConnection, closing: { closing: boolean }): Record<string, unknown> {
  // A client that never connects, to read the URL or options as ioredis does; BullMQ makes
  // its own connections. The app's own client gives its options, and is left alone.
  const { client, own } = connect(connection, { subscriber: true, lazy: true }, 'BullMQ')
  const options = { ...client.options }
  if (own) client.disconnect()
  const retryStrategy = (times: number): number | null => closing.closing ? null : Math.min(50 * times, 2000)
  return { ...options, maxRetriesPerRequest: null, enableOfflineQueue: true, lazyConnect: false, retryStrategy }
}

const cancelChannel = (prefix: string): string => `${prefix}:cancel`

/**
 * A cancel of a running task is also kept as a key, `<prefix>:cancel:<uuid>`, for a day:
 * a worker whose pub/sub connection was reconnecting when it was published, or that had
 * taken the job but not yet started the task, finds it at its next look.
 */
const cancelKey = (prefix: string, uuid: string): string => `${prefix}:cancel:${uuid}`
const cancelMarkTtl = 86_400_000

/** How often (ms) a worker looks for cancel marks of the tasks it has (and at once on reconnecting). */
const cancelCheckInterval = 1000

/** How long (ms) a worker still takes cancels for a task whose job it delayed (a retry's backoff). */
const handBackGrace = 5000

/** How long (ms) a submission waits for its job to be queued. */
const dispatchTimeout = 2000

/**
 * The executor of an API node: a submission becomes a BullMQ job; a cancel removes a job
 * still waiting (the task ends `cancelled` here) or asks the workers to stop a running one.
 */
export class BullMQExecutor implements Executor {
  readonly #context: ExecutorContext
  readonly #prefix: string
  readonly #queue: BullQueue<JobData>
  readonly #publisher: RedisClient
  #counts = { queued: 0, running: 0 }
  readonly #closing = { closing: false }
  #countTimer: ReturnType<typeof setInterval> | undefined

  constructor (context: ExecutorContext, options: QueueOptions) {
    const { Queue } = loadBullMQ()
    this.#context = context
    this.#prefix = options.prefix ?? '{fastify-task-api}'
    this.#queue = new Queue<JobData>(queueName, { connection: bullConnection(options.connection, this.#closing) as never, prefix: this.#prefix })
    this.#queue.on('error', () => {})
    this.#publisher = connect(options.connection, {}, 'BullMQExecutor').client
  }

  async start (): Promise<Recovery> {
    await this.#queue.waitUntilReady()
    const refresh = (): void => {
      this.#queue.getJobCounts('waiting', 'delayed', 'prioritized', 'active').then((counts) => {
        this.#counts = { queued: (counts.waiting ?? 0) + (counts.delayed ?? 0) + (counts.prioritized ?? 0), running: counts.active ?? 0 }
      }, () => {})
    }
    refresh()
    this.#countTimer = setInterval(refresh, 1000)
    this.#countTimer.unref()
    // The workers recover what a dead worker left (BullMQ's stalled jobs).
    return { requeued: 0, retried: 0, failed: 0 }
  }

  get unavailable (): string | undefined {
    return undefined
  }

  /** Jobs waiting in the queue, as of the last count (each second). */
  get queued (): number {
    return this.#counts.queued
  }

  /** Jobs being run by the workers, as of the last count. */
  get running (): number {
    return this.#counts.running
  }

  /**
   * Adds the task's job. BullMQ waits for Redis while it is away; past `dispatchTimeout`
   * the submission fails with StoreUnavailableError (503) instead of hanging (the service
   * then removes the record; a job added after all finds no record and does nothing).
   */
  async dispatch (_registered: RegisteredTask, record: Readonly<TaskRecord>): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new StoreUnavailableError(`the task queue cannot be reached: no answer from Redis in ${dispatchTimeout} ms`)), dispatchTimeout)
    })
    try {
      await Promise.race([this.#queue.add(record.task, { uuid: record.uuid }, { jobId: record.uuid, removeOnComplete: true, removeOnFail: true, attempts: 1 }), timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  /** The queue knows which tasks run, not this node: the record's status says it. */
  isLive (): boolean {
    return false
  }

  seqOf (): number | undefined {
    return undefined
  }

  async cancel (uuid: string): Promise<boolean> {
    const job = await this.#queue.getJob(uuid) as BullJob<JobData> | undefined
    if (job === undefined) return false
    const state = await job.getState()
    // A worker that takes it meanwhile is asked below.
    if ((state === 'waiting' || state === 'delayed' || state === 'prioritized') && await cancelWaiting(job, this.#context)) return true
    // Running (or taken by a worker that has not started it): the mark, then the news.
    await this.#publisher.multi().set(cancelKey(this.#prefix, uuid), '1', 'PX', cancelMarkTtl).publish(cancelChannel(this.#prefix), uuid).exec()
    return true
  }

  stopAccepting (): void {}

  async close (): Promise<void> {
    clearInterval(this.#countTimer)
    this.#closing.closing = true
    // BullMQ waits for Redis while it is away: a close does not.
    if (await bounded(this.#queue.close().then(() => true), closeTimeout) !== true) await bounded(this.#queue.disconnect().catch(() => {}), closeTimeout)
    await closeClient(this.#publisher)
  }
}

/**
 * Cancels a task whose job waits in the queue (delayed or waiting): removes the job, then
 * ends the task `cancelled` (unless it ended meanwhile). False when a worker took it first.
 */
async function cancelWaiting (job: BullJob<JobData>, context: ExecutorContext): Promise<boolean> {
  try {
    await job.remove()
  } catch {
    // A worker took it meanwhile: it is running.
    return false
  }
  const { store, publish, now } = context
  const { uuid } = job.data
  const record = await store.get(uuid)
  if (record !== undefined && !finalStatuses.has(record.status)) {
    const seq = record.seq + 1
    const cancelled = await store.update(uuid, { status: 'cancelled', finished: new Date(now()).toISOString(), seq, error: record.error })
    if (cancelled !== undefined) publish({ type: 'status', uuid, seq, status: 'cancelled', task: toState(cancelled) })
  }
  return true
}

/** A cancel that reached a worker while it handed its task's job back: done now that the job is delayed. */
async function cancelDelayed (job: BullJob<JobData>, context: ExecutorContext): Promise<void> {
  await cancelWaiting(job, context).catch((err: unknown) => context.log.error({ err, uuid: job.data.uuid }, 'fastify-task-api: a cancel could not be done'))
}

/** Options of a worker. */
export interface WorkerOptions extends QueueOptions {
  /** Tasks run at once (each in a child process of its pool). @default 1 */
  concurrency?: number
  /**
   * How long (ms) a job's lock lasts without renewal: a worker that dies (SIGKILL, its
   * machine lost) leaves its tasks `running` until then, when another worker takes them
   * again (BullMQ's stalled jobs). @default 30000
   */
  lockDuration?: number
  /** How often (ms) workers look for stalled jobs. @default lockDuration */
  stalledInterval?: number
  /** How often (ms) one of the workers looks for tasks without a job (see reconcile). @default 30000 */
  reconcileInterval?: number
}

/** How many of the oldest live tasks one look checks. */
const reconcileBatch = 500

/**
 * Queues again the tasks that have a live record but no job: an API node that died
 * between writing the record and adding the job, or a Redis failover that lost a job,
 * left them `pending` (or `running`) for ever. Only records older than `olderThan` ms are
 * touched (a submission under way adds its job within `dispatchTimeout`); the job id is
 * the uuid, so a job added meanwhile by its API node is not doubled, and the worker that
 * takes it reads the record as for any job (a `running` one ends as a crash would end it).
 * Resolves with the uuids queued again.
 */
async function reconcile (client: RedisClient, queue: BullQueue<JobData>, store: ExecutorContext['store'], prefix: string, olderThan: number, now: number): Promise<string[]> {
  const uuids = await client.zrange(`${prefix}:live`, 0, reconcileBatch - 1)
  if (uuids.length === 0) return []
  const exists = await client.pipeline(uuids.map(uuid => ['exists', `${prefix}:${queueName}:${uuid}`])).exec()
  const queued: string[] = []
  for (let i = 0; i < uuids.length; i++) {
    if (exists?.[i]?.[1] !== 0) continue
    const uuid = uuids[i] as string
    const record = await store.get(uuid)
    if (record === undefined || finalStatuses.has(record.status) || now - Date.parse(record.created) < olderThan) continue
    await queue.add(record.task, { uuid }, { jobId: uuid, removeOnComplete: true, removeOnFail: true, attempts: 1 })
    queued.push(uuid)
  }
  return queued
}

/**
 * A worker: takes tasks from the queue and runs them with `executor` (a LocalExecutor of
 * its own over the shared store). Resolves once it takes jobs.
 */
export async function startQueueWorker (context: ExecutorContext & { runner: Runner }, options: WorkerOptions): Promise<{ close: () => Promise<void>, executor: LocalExecutor }> {
  const { Worker, WaitingError, DelayedError } = loadBullMQ()
  const prefix = options.prefix ?? '{fastify-task-api}'
  const concurrency = options.concurrency ?? 1
  const lockDuration = options.lockDuration ?? 30_000
  const executor = new LocalExecutor({ ...context, recover: false, deferRetries: true, fence: true })
  await executor.start()
  const subscriber = connect(options.connection, { subscriber: true, name: 'fastify-task-api:worker-cancels' }, 'startWorker').client
  const marks = connect(options.connection, { name: 'fastify-task-api:worker-marks' }, 'startWorker').client
  /**
   * Tasks this worker handed back to the queue (a retry's backoff) lately: no longer live
   * in the executor, their job being delayed, or delayed a moment ago. A cancel for one
   * (the API node saw its job still active) is done here: noted until the job is delayed,
   * then by removing it; kept `handBackGrace` ms, for a cancel already on its way.
   */
  const handingBack = new Map<string, { job: BullJob<JobData>, delayed: boolean, cancelled: boolean }>()
  const cancelHere = (uuid: string): void => {
    if (executor.isLive(uuid)) {
      void executor.cancel(uuid)
      return
    }
    const handing = handingBack.get(uuid)
    if (handing === undefined || handing.cancelled) return
    handing.cancelled = true
    if (handing.delayed) void cancelDelayed(handing.job, context)
  }
  subscriber.on('message', (_channel: string, uuid: string) => cancelHere(uuid))
  let closing = false
  const connectionState = { closing: false }
  // The marks catch the cancels that pub/sub missed: one MGET a look, only while tasks are here.
  let looking = false
  const lookForCancels = async (): Promise<void> => {
    const uuids = [...executor.liveTasks(), ...[...handingBack].filter(([, handing]) => !handing.cancelled).map(([uuid]) => uuid)]
    if (looking || closing || uuids.length === 0) return
    looking = true
    try {
      const found = await marks.mget(uuids.map(uuid => cancelKey(prefix, uuid)))
      found.forEach((mark, i) => { if (mark !== null) cancelHere(uuids[i]!) })
    } catch {
      // Redis is away: the next look.
    } finally {
      looking = false
    }
  }
  const cancelTimer = setInterval(() => { void lookForCancels() }, cancelCheckInterval)
  cancelTimer.unref()
  // Resubscribed after a cut: what was published meanwhile is looked for at once.
  subscriber.on('ready', () => { void lookForCancels() })
  await subscriber.subscribe(cancelChannel(prefix))
  // Tasks without a job: one worker a period looks (a key taken with NX), the oldest first.
  const reconcileInterval = options.reconcileInterval ?? 30_000
  const { Queue } = loadBullMQ()
  const requeue = new Queue<JobData>(queueName, { connection: bullConnection(options.connection, connectionState) as never, prefix })
  requeue.on('error', () => {})
  let reconciling = false
  const reconcileTimer = setInterval(() => {
    if (reconciling || closing) return
    reconciling = true
    void (async () => {
      if (await marks.set(`${prefix}:reconcile`, '1', 'PX', reconcileInterval - 10, 'NX') !== 'OK') return
      const queued = await reconcile(marks, requeue, context.store, prefix, reconcileInterval, Date.now())
      if (queued.length > 0) context.log.warn({ uuids: queued.slice(0, 20), count: queued.length }, 'fastify-task-api: tasks without a job were queued again')
    })().catch((err: unknown) => {
      context.log.error({ err }, 'fastify-task-api: looking for tasks without a job failed')
    }).finally(() => { reconciling = false })
  }, reconcileInterval)
  reconcileTimer.unref()
  /** Processors under way: a close lets them finish their last Redis calls. */
  const inFlight = new Set<Promise<unknown>>()
  const worker: BullWorker<JobData> = new Worker<JobData>(queueName, async (job, token) => {
    const processing = (async () => {
      const how = await executor.adopt(job.data.uuid)
      if (how === 'unrun' && token !== undefined) {
        // Stopped by this worker's graceful close: back to the queue for another worker.
        await job.moveToWait(token)
        throw new WaitingError()
      }
      if (typeof how === 'object' && token !== undefined) {
        // A failed attempt with retries left: the job waits out the backoff in the queue
        // (delayed), taking no slot of this worker, and any worker makes the next attempt.
        const { uuid } = job.data
        const handing = { job, delayed: false, cancelled: false }
        handingBack.set(uuid, handing)
        const forget = (): void => { if (handingBack.get(uuid) === handing) handingBack.delete(uuid) }
        try {
          await job.moveToDelayed(Date.now() + how.retryIn, token)
        } catch (err) {
          forget()
          throw err
        }
        handing.delayed = true
        setTimeout(forget, handBackGrace).unref()
        // Cancelled while it was being handed back: the cancel the API node could not do.
        if (handing.cancelled) await cancelDelayed(job, context)
        throw new DelayedError()
      }
    })()
    inFlight.add(processing)
    try {
      await processing
    } finally {
      inFlight.delete(processing)
    }
  }, {
    connection: bullConnection(options.connection, connectionState) as never,
    prefix,
    concurrency,
    lockDuration,
    stalledInterval: options.stalledInterval ?? lockDuration,
    // A stalled job always comes back: whether it runs again is the task's retries' to say.
    maxStalledCount: Number.MAX_SAFE_INTEGER,
  })
  worker.on('error', err => context.log.error({ err }, 'fastify-task-api: the queue worker failed'))
  await worker.waitUntilReady()
  return {
    executor,
    async close () {
      if (closing) return
      closing = true
      executor.stopAccepting()
      // Stop taking jobs, let the executor end or hand back what runs, and the processors
      // report it; then close without waiting for BullMQ's view of the jobs (with Redis
      // gone it would wait for ever). Each wait for Redis is bounded.
      await bounded(worker.pause(true).catch(() => {}), closeTimeout)
      await executor.close()
      await bounded(Promise.allSettled([...inFlight]), closeTimeout)
      connectionState.closing = true
      await bounded(worker.close(true).catch(() => {}), closeTimeout)
      clearInterval(cancelTimer)
      clearInterval(reconcileTimer)
      await bounded(requeue.close().catch(() => {}), closeTimeout)
      await closeClient(subscriber)
      await closeClient(marks)
    },
  }
}
