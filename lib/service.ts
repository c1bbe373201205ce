import { randomUUID } from 'node:crypto'
import { EventBus, EventHistory, type CreatedListener, type TaskBus, type TaskEvent, type TaskListener } from './events.js'
import {
  FST_TASK_API_INPUT_INVALID,
  FST_TASK_API_INPUT_TOO_DEEP,
  FST_TASK_API_INPUT_TOO_LARGE,
  FST_TASK_API_QUEUE_FULL,
  FST_TASK_API_RUNNER_CLOSED,
  FST_TASK_API_RUNNER_UNAVAILABLE,
  FST_TASK_API_TASK_LIVE,
  FST_TASK_API_TASK_NOT_FOUND,
  FST_TASK_API_TASK_UNKNOWN,
} from './errors.js'
import { maxReported, measureInputs } from './params.js'
import { parametersSchema } from './openapi.js'
import type { CatalogEntry } from './client/types.js'
import { LocalExecutor, type ExecutionOptions, type Executor, type ExecutorContext, type Recovery, type ServiceLogger } from './executor.js'
import type { MessageLimits } from './protocol.js'
import type { RegisteredTask } from './registry.js'
import type { Runner } from './runner/types.js'
import { toState } from './state.js'
import { finalStatuses, newRecord, toSummary, type FinalStatus, type ListFilter, type ListPage, type Store, type TaskRecord, type TaskState } from './store/types.js'
import { describe } from './task.js'
import { clip } from './text.js'

export type { CatalogEntry }


export { toState } from './state.js'
export { interruptedError, type ExecutionOptions, type Recovery, type ServiceLogger } from './executor.js'

/** Options of a submission. */
export interface SubmitOptions {
  /** Who the task belongs to; only requests with the same owner can see it. */
  owner?: string | null
}

/** Counts of what the runner and the streams hold. */
export interface TaskStats {
  /** Tasks waiting for a worker. */
  queued: number
  /** Tasks being run. */
  running: number
  /** Event listeners subscribed: `app.tasks.subscribe` callbacks and one per task a stream follows. */
  subscribers: number
  /** Event streams open: WebSockets on both event routes and SSE responses. */
  streams: number
}


/** Bounds on a submission's inputs, checked before anything else sees them. */
export interface InputLimits {
  /** Bytes of the inputs as JSON. */
  maxInputSize: number
  /** Nesting of objects and arrays; the inputs object is level 1. */
  maxInputDepth: number
  /** Inputs the task does not declare: refused (400 naming them) or dropped. @default 'reject' */
  undeclaredInputs?: 'reject' | 'strip'
}


/** One minute of `finishedStats`: how many tasks finished in it, by final status. */
export interface StatsMinute {
  /** ISO 8601: the minute's first millisecond (UTC). */
  start: string
  succeeded: number
  failed: number
  cancelled: number
}

/** How long the runs of one task took (`finished - started`, in ms), over the window of `finishedStats`. */
export interface StatsDurations {
  task: string
  /** The runs measured: tasks that ended succeeded or failed and had started. */
  count: number
  /** Nearest-rank percentiles, ms. */
  p50: number
  p95: number
}

/** What `GET {prefix}/stats` answers: the tasks finished over the last minutes. */
export interface FinishedStats {
  /** ISO 8601: the start of the first minute. */
  from: string
  /** ISO 8601: now, within the last minute. */
  to: string
  /** One per minute, oldest first; the last is the current minute, so far. */
  minutes: StatsMinute[]
  /** One per task that had a measured run, by task name. */
  durations: StatsDurations[]
  /** True when a final status had more records in the window than are read (`statsReadLimit`): the oldest minutes then count fewer. */
  truncated: boolean
}

/** What `finishedStats` counts. */
export interface StatsQuery {
  /** The window: this many minutes, the current one last (1 to `maxStatsMinutes`). */
  minutes: number
  /** Only this owner's records (null: those without an owner). Unset: everyone's. */
  owner?: string | null
  /** Only the records this says yes to (an `authorize` of `read`, for one request). */
  include?: (record: Readonly<TaskRecord>) => boolean | Promise<boolean>
}

/** The longest window of `finishedStats`, in minutes: a day. */
export const maxStatsMinutes = 1440

/**
 * Records `finishedStats` reads per final status, at most (the stores read them in
 * pages, a turn of the event loop between), so a request stays bounded however many
 * tasks finish; past it, the oldest are left out and the answer says `truncated`.
 */
export const statsReadLimit = 10_000

const minuteMs = 60_000

/** How long finished records are kept, per final status, in ms; absent: forever. */
export type Retention = Partial<Record<FinalStatus, number>>

/** Records the retention sweep removes per store call; it yields to the event loop between calls. */
const sweepBatch = 200



const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i

/**
 * The one API over tasks: routes, streams and `app.tasks` all go through it. It
 * owns the order of events: it gives each its `seq`, writes it to the store, then
 * publishes it. Transports never reach the store or the runner directly.
 */
export class TaskService {
  readonly #registry: Map<string, RegisteredTask>
  readonly #store: Store
  readonly #executor: Executor
  readonly #log: ServiceLogger
  readonly #bus: TaskBus
  /** `finishedStats` under way, by what they count (those without a per-request filter). */
  readonly #statsInFlight = new Map<string, Promise<FinishedStats>>()
  /** The last `finishedStats` reading queued: the next one starts after it. */
  #statsTail: Promise<void> = Promise.resolve()
  readonly #history: EventHistory
  readonly #busWatchers = new Set<{ lost (): void, restored (): void }>()
  #busLost = false
  #catalog: CatalogEntry[] | undefined
  readonly #execution: ExecutionOptions
  readonly #inputLimits: InputLimits
  readonly #now: () => number
  readonly #retention: Retention
  #sweepTimer: NodeJS.Timeout | undefined
  #sweeping: Promise<number> | undefined
  #closing: Promise<void> | undefined
  #closed = false

  constructor (options: {
    registry: Map<string, RegisteredTask>
    store: Store
    /** Runs the tasks in this process (with `LocalExecutor`)... */
    runner?: Runner
    /** ...or this executor does (an executor over a shared queue). */
    executor?: (context: ExecutorContext) => Executor
    log: ServiceLogger
    /** Where events travel to subscribers (default: this process only). */
    bus?: TaskBus
    /** Events kept per followed task for reconnecting clients, and for how long after it ends. */
    history?: { size: number, ttl: number }
    execution?: Partial<ExecutionOptions>
    limits?: MessageLimits
    inputLimits?: InputLimits
    /** Milliseconds since the epoch: record times and retention (tests inject their own). */
    now?: () => number
    /** How long finished records are kept, per final status. */
    retention?: Retention
  }) {
    this.#now = options.now ?? Date.now
    this.#retention = options.retention ?? {}
    this.#inputLimits = options.inputLimits ?? { maxInputSize: 256 * 1024, maxInputDepth: 32 }
    this.#execution = { timeout: 0, cancelGrace: 5000, maxQueued: 0, shutdownTimeout: 10_000, ...options.execution }
    this.#history = new EventHistory(options.history?.size ?? 0, options.history?.ttl ?? 0)
    this.#registry = options.registry
    this.#store = options.store
    this.#bus = options.bus ?? new EventBus()
    this.#log = options.log
    const context: ExecutorContext = {
      registry: options.registry,
      store: options.store,
      log: options.log,
      execution: this.#execution,
      limits: options.limits ?? { maxMessages: 1000, maxMessageLength: 2000, maxOutputSize: 1024 * 1024 },
      now: this.#now,
      publish: event => this.#publish(event),
      followed: uuid => this.#followed(uuid),
    }
    const { runner } = options
    if (options.executor !== undefined) this.#executor = options.executor(context)
    else if (runner !== undefined) this.#executor = new LocalExecutor({ ...context, runner })
    else throw new TypeError('TaskService needs a runner or an executor')
  }

  /** Opens the store and the bus, starts the executor (restart recovery included). */
  async start (): Promise<void> {
    await this.#store.open?.()
    await this.#bus.start?.({
      error: err => this.#log.error({ err }, 'fastify-task-api: a task event listener threw'),
      lost: () => {
        this.#busLost = true
        this.#log.warn({}, 'fastify-task-api: events from other servers are interrupted (the connection to Redis is lost); streams catch up when it is back')
        for (const watcher of this.#busWatchers) watcher.lost()
      },
      restored: () => {
        this.#busLost = false
        this.#log.info?.({}, 'fastify-task-api: events from other servers arrive again')
        for (const watcher of this.#busWatchers) watcher.restored()
      },
    })
    this.recovery = await this.#executor.start()
    this.#scheduleSweep(0)
  }

  #iso (): string {
    return new Date(this.#now()).toISOString()
  }

  /** What the last start found in the store (restart recovery). */
  recovery: Recovery = { requeued: 0, retried: 0, failed: 0 }

  /** Runs the retention sweep after `delay` ms, then again periodically. */
  #scheduleSweep (delay: number): void {
    const ages = Object.values(this.#retention).filter((ms): ms is number => ms !== undefined)
    if (ages.length === 0 || this.#closed) return
    // Often enough that a record outlives its retention by a tenth of it at most; between
    // once a second and once an hour.
    const every = Math.min(3_600_000, Math.max(1000, Math.min(...ages) / 10))
    this.#sweepTimer = setTimeout(() => {
      void this.sweep().finally(() => this.#scheduleSweep(every))
    }, delay).unref()
  }

  /**
   * Removes the finished records older than their status's retention, in small batches
   * with a turn of the event loop between them. Resolves with how many were removed.
   * Runs by itself periodically; calling it runs it now (one sweep at a time).
   */
  async sweep (): Promise<number> {
    this.#sweeping ??= this.#sweepNow().finally(() => { this.#sweeping = undefined })
    return await this.#sweeping
  }

  async #sweepNow (): Promise<number> {
    let removed = 0
    for (const [status, ms] of Object.entries(this.#retention) as Array<[FinalStatus, number | undefined]>) {
      if (ms === undefined) continue
      const before = new Date(this.#now() - ms).toISOString()
      while (!this.#closed) {
        let uuids: string[]
        try {
          uuids = await this.#store.expire(status, before, sweepBatch)
        } catch (err) {
          this.#log.error({ err }, 'fastify-task-api: the retention sweep failed; it runs again later')
          return removed
        }
        for (const uuid of uuids) this.#history.forget(uuid)
        removed += uuids.length
        if (uuids.length < sweepBatch) break
        await new Promise(resolve => setImmediate(resolve))
      }
    }
    return removed
  }

  /** The registered task names. */
  get taskNames (): string[] {
    return [...this.#registry.keys()]
  }

  /** The registered tasks, in registration order. */
  get registered (): RegisteredTask[] {
    return [...this.#registry.values()]
  }

  /** The registered task with this name, or undefined. */
  task (name: string): RegisteredTask | undefined {
    return this.#registry.get(name)
  }

  /**
   * Every registered task as a UI needs it to build a form: its name, description, the
   * JSON Schemas of its inputs and outputs, its timeout (its own, else the plugin's; null
   * for none) and retries. In registration order; `GET {prefix}/catalog` filters it.
   */
  catalog (): readonly CatalogEntry[] {
    // Tasks and options are fixed once registered: built at the first call, then kept.
    this.#catalog ??= [...this.#registry.values()].map(({ task }) => ({
      name: task.name,
      description: task.description ?? null,
      inputs: parametersSchema(task.inputs),
      outputs: parametersSchema(task.outputs),
      timeout: task.timeout ?? (this.#execution.timeout > 0 ? this.#execution.timeout : null),
      retries: task.retries,
    }))
    return this.#catalog
  }

  /**
   * Validates and converts the inputs, creates the record and queues the task.
   * Throws FST_TASK_API_TASK_UNKNOWN or FST_TASK_API_INPUT_INVALID (both 400).
   */
  async submit (name: string, inputs: unknown = {}, options: SubmitOptions = {}): Promise<TaskState> {
    const registered = this.#registry.get(name)
    if (registered === undefined) throw new FST_TASK_API_TASK_UNKNOWN(clip(name))
    return this.submitChecked(registered, this.checkInputs(registered, inputs), options)
  }

  /**
   * Bounds, converts and validates inputs for a task: FST_TASK_API_INPUT_TOO_LARGE (413)
   * or FST_TASK_API_INPUT_TOO_DEEP (400) before anything else looks at them, then
   * FST_TASK_API_INPUT_INVALID naming the input.
   */
  checkInputs (registered: RegisteredTask, inputs: unknown): Record<string, unknown> {
    if (typeof inputs !== 'object' || inputs === null || Array.isArray(inputs)) {
      throw new FST_TASK_API_INPUT_INVALID(`inputs must be an object, got ${describe(inputs)}`)
    }
    const { maxInputSize, maxInputDepth } = this.#inputLimits
    const excess = measureInputs(inputs as Record<string, unknown>, maxInputSize, maxInputDepth)
    if (excess !== undefined) {
      if (excess.limit === 'size') throw new FST_TASK_API_INPUT_TOO_LARGE(maxInputSize)
      const path = clip(['inputs', ...excess.path.map(key => clip(key, 32))].join('/'), 256)
      if (excess.limit === 'depth') throw new FST_TASK_API_INPUT_TOO_DEEP(path, maxInputDepth)
      throw new FST_TASK_API_INPUT_INVALID(`${path} must be a finite number`)
    }
    const checked = registered.inputs.check(inputs as Record<string, unknown>)
    const undeclared = this.#inputLimits.undeclaredInputs === 'strip' ? [] : undeclaredInputs(registered, inputs as Record<string, unknown>)
    if (checked.error !== undefined || undeclared.length > 0) {
      throw new FST_TASK_API_INPUT_INVALID([checked.error, ...undeclared].filter(part => part !== undefined).join('; '))
    }
    return checked.value
  }

  /**
   * Creates and queues a task whose inputs were already checked by `checkInputs`.
   * Resolves with its state as created (`pending`), whatever happened since.
   */
  async submitChecked (registered: RegisteredTask, inputs: Record<string, unknown>, options: SubmitOptions = {}): Promise<TaskState> {
    if (this.#closed) throw new FST_TASK_API_RUNNER_CLOSED()
    const unavailable = this.#executor.unavailable
    if (unavailable !== undefined) {
      // Accepting would only pile up tasks that cannot start; the cause is in the log already.
      throw new FST_TASK_API_RUNNER_UNAVAILABLE()
    }
    const { maxQueued } = this.#execution
    if (maxQueued > 0 && this.#executor.queued >= maxQueued) throw new FST_TASK_API_QUEUE_FULL(maxQueued)
    const record = newRecord({ uuid: randomUUID(), task: registered.name, inputs, created: this.#iso(), owner: options.owner ?? null })
    await this.#store.create(record)
    const created = toState(record)
    const queued = this.#executor.dispatch(registered, record)
    if (queued !== undefined) {
      try {
        await queued
      } catch (err) {
        // Never queued: the record goes too, so that no accepted task waits forever.
        await this.#store.delete(record.uuid).catch(() => {})
        throw err
      }
    }
    this.#bus.announce({ uuid: record.uuid, owner: record.owner, summary: toSummary(record) },
      err => this.#log.warn({ err, uuid: record.uuid }, 'fastify-task-api: a new task could not be announced to the watching streams'))
    return created
  }

  /**
   * Calls `listener` for each task created from now on, on this server or (on Redis) any
   * other, with its owner and its summary as created. Returns the function that stops it.
   */
  watchCreated (listener: CreatedListener): () => void {
    return this.#bus.watch(listener)
  }

  /** The task's current state, or undefined when no task has this uuid. */
  async get (uuid: string): Promise<TaskState | undefined> {
    if (!uuidPattern.test(uuid)) return undefined
    const record = await this.#store.get(uuid)
    return record === undefined ? undefined : toState(record)
  }

  /** The stored record, internals included (owner, inputs): for access checks. Read-only. */
  async record (uuid: string): Promise<Readonly<TaskRecord> | undefined> {
    if (!uuidPattern.test(uuid)) return undefined
    return this.#store.get(uuid)
  }

  /** A page of stored records, newest first. */
  async list (filter: ListFilter): Promise<ListPage> {
    return this.#store.list(filter)
  }

  /**
   * The tasks finished over the last `query.minutes` minutes (the current one last, by the
   * service's clock): how many ended each minute (UTC) by final status, and the p50 and
   * p95 durations (`finished - started`) per task of those that succeeded or failed.
   * Read from the store's index of finished records, at most `statsReadLimit` per
   * status, newest first (`truncated` says when that left some out). `owner` and
   * `include` select what counts (after that read: the limit is over every owner's).
   */
  finishedStats (query: StatsQuery): Promise<FinishedStats> {
    // Requests that ask the same (no per-request filter) share one reading of the store:
    // a flood of them costs one.
    if (query.include !== undefined) return this.#queuedStats(query)
    const key = JSON.stringify([query.minutes, query.owner === undefined ? 0 : query.owner])
    let shared = this.#statsInFlight.get(key)
    if (shared === undefined) {
      shared = this.#queuedStats(query).finally(() => this.#statsInFlight.delete(key))
      this.#statsInFlight.set(key, shared)
    }
    return shared
  }

  /**
   * One reading at a time: readings that differ (other owners, windows, an authorize)
   * wait their turn instead of each running its slices in the same turns of the event
   * loop, which held it for as many slices as there were readings.
   */
  #queuedStats (query: StatsQuery): Promise<FinishedStats> {
    const reading = this.#statsTail.then(async () => await this.#finishedStats(query))
    this.#statsTail = reading.then(() => {}, () => {})
    return reading
  }

  async #finishedStats (query: StatsQuery): Promise<FinishedStats> {
    const { minutes, owner, include } = query
    if (!Number.isInteger(minutes) || minutes < 1 || minutes > maxStatsMinutes) {
      throw new RangeError(`minutes must be an integer from 1 to ${maxStatsMinutes}, got ${describe(minutes)}`)
    }
    const now = this.#now()
    const first = Math.floor(now / minuteMs) * minuteMs - (minutes - 1) * minuteMs
    const buckets: StatsMinute[] = Array.from({ length: minutes }, (_, i) => ({ start: new Date(first + i * minuteMs).toISOString(), succeeded: 0, failed: 0, cancelled: 0 }))
    const durations = new Map<string, number[]>()
    let truncated = false
    for (const status of ['succeeded', 'failed', 'cancelled'] as const) {
      // One more than the limit tells whether there were more.
      let records = await this.#store.finishedSince(status, new Date(first).toISOString(), statsReadLimit + 1)
      if (records.length > statsReadLimit) {
        truncated = true
        records = records.slice(0, statsReadLimit)
      }
      for (const record of records) {
        if (owner !== undefined && record.owner !== owner) continue
        const finished = Date.parse(record.finished ?? '')
        // Finished after now: another server's clock is ahead; counted once ours gets there.
        if (!(finished >= first && finished <= now)) continue
        if (include !== undefined && !await include(record)) continue
        (buckets[Math.floor((finished - first) / minuteMs)] as StatsMinute)[status]++
        const started = Date.parse(record.started ?? '')
        if (status === 'cancelled' || !Number.isFinite(started)) continue
        let runs = durations.get(record.task)
        if (runs === undefined) durations.set(record.task, runs = [])
        runs.push(Math.max(0, finished - started))
      }
    }
    return {
      from: new Date(first).toISOString(),
      to: new Date(now).toISOString(),
      minutes: buckets,
      durations: [...durations.keys()].sort().map((task) => {
        const runs = (durations.get(task) as number[]).sort((a, b) => a - b)
        return { task, count: runs.length, p50: nearestRank(runs, 50), p95: nearestRank(runs, 95) }
      }),
      truncated,
    }
  }

  /** The task's stored record with its seq: what a stream's snapshot needs. */
  async snapshot (uuid: string): Promise<{ seq: number, task: TaskState } | undefined> {
    if (!uuidPattern.test(uuid)) return undefined
    const record = await this.#store.get(uuid)
    return record === undefined ? undefined : { seq: record.seq, task: toState(record) }
  }

  /**
   * Calls `listener` with each event the task emits from now on; returns the function
   * that stops it. Subscribe first, then read the snapshot, and drop events whose seq
   * the snapshot already covers: nothing falls between the two.
   */
  subscribe (uuid: string, listener: TaskListener, options: { history?: boolean } = {}): () => void {
    if (options.history === true && this.#bus.history === undefined) {
      // Streams ask for history: their clients may reconnect and ask for what they missed.
      const seq = this.#executor.seqOf(uuid)
      if (seq !== undefined) this.#history.watch(uuid, seq)
    }
    return this.#bus.subscribe(uuid, listener)
  }

  /**
   * The events published after `seq`, when the server still holds all of them (the task
   * was followed recently: in memory, or in the bus's own history across servers);
   * undefined otherwise, and the caller sends a snapshot instead. Call it after
   * `subscribe` (and `keepHistory`), keeping what the listener gets meanwhile, and drop
   * the events the answer already holds (by seq): nothing falls between.
   */
  async eventsSince (uuid: string, seq: number): Promise<{ events: TaskEvent[], ended: boolean } | undefined> {
    const shared = this.#bus.history
    if (shared === undefined) return this.#history.since(uuid, seq)
    return await shared.since(uuid, seq).catch((err: unknown) => {
      this.#log.warn({ err, uuid }, 'fastify-task-api: the event history could not be read; the stream sends a snapshot')
      return undefined
    })
  }

  /**
   * With a bus across servers: starts keeping the task's events there (what `subscribe`
   * does with `history` in memory). A stream awaits it before it reads, so that the
   * history holds every event after what it reads. Never throws: without a history a
   * reconnecting client gets a snapshot.
   */
  async keepHistory (uuid: string): Promise<void> {
    await this.#bus.history?.watch(uuid).catch((err: unknown) => {
      this.#log.warn({ err, uuid }, 'fastify-task-api: the event history could not be started; a reconnecting client gets a snapshot')
    })
  }

  /** True while the bus has lost its connection (events from other servers may be missed). */
  get eventsInterrupted (): boolean {
    return this.#busLost
  }

  /**
   * Tells `watcher` when events from other servers stop arriving (the bus lost its
   * connection) and when they arrive again; returns the function that stops telling.
   */
  watchBus (watcher: { lost (): void, restored (): void }): () => void {
    this.#busWatchers.add(watcher)
    return () => this.#busWatchers.delete(watcher)
  }

  /**
   * Cancels a task. A pending one leaves the queue at once; a running one has its signal
   * aborted, and its process is stopped if it has not ended after `cancelGrace`; either
   * way it ends `cancelled`. A finished task is left as it is. Resolves with the task's
   * state after the request (a running task is still `running` then), or undefined.
   */
  async cancel (uuid: string): Promise<TaskState | undefined> {
    const record = await this.record(uuid)
    if (record === undefined) return undefined
    if (finalStatuses.has(record.status) || !await this.#executor.cancel(uuid)) return toState(record)
    return this.get(uuid)
  }

  /**
   * Removes a finished task's record. Resolves with false for an unknown uuid; throws
   * FST_TASK_API_TASK_LIVE (409) for a task that is pending or running (cancel it first).
   * Every stream following the task got its final status already; one opened afterwards
   * gets 404.
   */
  async delete (uuid: string): Promise<boolean> {
    const record = await this.record(uuid)
    if (record === undefined) return false
    if (this.#executor.isLive(uuid) || !finalStatuses.has(record.status)) throw new FST_TASK_API_TASK_LIVE(uuid)
    const deleted = await this.#store.delete(uuid)
    this.#history.forget(uuid)
    await this.#bus.history?.forget(uuid).catch(() => {})
    return deleted
  }

  /** Resolves with the task's final state once it has succeeded, failed or been cancelled. */
  async wait (uuid: string): Promise<TaskState> {
    let unsubscribe: (() => void) | undefined
    let unwatch: (() => void) | undefined
    const ended = new Promise<TaskState>((resolve) => {
      unsubscribe = this.subscribe(uuid, (event: TaskEvent) => {
        if (event.type === 'status' && event.task !== undefined && finalStatuses.has(event.status)) resolve(event.task)
      })
      // The final event may have been published while the bus had lost Redis: read again
      // once it is back.
      unwatch = this.watchBus({
        lost: () => {},
        restored: () => {
          this.get(uuid).then((state) => {
            if (state !== undefined && finalStatuses.has(state.status)) resolve(state)
          }, () => {})
        },
      })
    })
    try {
      const current = await this.get(uuid)
      if (current === undefined) throw new FST_TASK_API_TASK_NOT_FOUND(uuid)
      if (finalStatuses.has(current.status)) return current
      return await ended
    } finally {
      unsubscribe?.()
      unwatch?.()
    }
  }

  /** What the runner holds now, and the event listeners (the streams are counted by the plugin). */
  stats (): Omit<TaskStats, 'streams'> {
    return { queued: this.#executor.queued, running: this.#executor.running, subscribers: this.#bus.size }
  }

  /** Refuses new submissions (503) from now on; called as the server starts closing. */
  stopAccepting (): void {
    this.#closed = true
    this.#executor.stopAccepting()
  }

  /**
   * Graceful shutdown: refuses new submissions, waits up to `shutdownTimeout` ms for the
   * running tasks, then stops the rest and the runner; no process is left. Over a durable
   * store, tasks that have not run stay `pending` for the next server, and stopped ones end
   * as restart recovery ends interrupted ones: `pending` again when they have retries left,
   * otherwise `failed`. Over any other store every task ends cancelled.
   */
  async close (): Promise<void> {
    if (this.#closing !== undefined) return await this.#closing
    this.#closed = true
    clearTimeout(this.#sweepTimer)
    this.#closing = (async () => {
      await this.#executor.close()
      this.#history.clear()
      await this.#sweeping
      await this.#store.close?.()
      await this.#bus.close?.()
    })()
    await this.#closing
  }

  #followed (uuid: string): boolean {
    return this.#bus.has(uuid) || this.#history.isWatched(uuid)
  }

  #publish (event: TaskEvent): void {
    this.#history.record(event)
    this.#bus.publish(event, err => this.#log.error({ err, uuid: event.uuid }, 'fastify-task-api: a task event listener threw'))
  }
}

/** The nearest-rank `p`th percentile of ascending values (at least one). */
function nearestRank (sorted: number[], p: number): number {
  // p * n first: the quotient is exact whenever the rank is a whole number.
  return sorted[Math.max(0, Math.ceil(p * sorted.length / 100) - 1)] as number
}

/**
 * The inputs a task does not declare, as error text (a typo is refused, not dropped):
 * `inputs/nmae is not a declared input of "hello" (it declares: name, count)`, the first
 * few named, then how many more.
 */
function undeclaredInputs (registered: RegisteredTask, inputs: Record<string, unknown>): string[] {
  const declared = registered.task.inputs
  const extra = Object.keys(inputs).filter(key => !Object.hasOwn(declared, key))
  if (extra.length === 0) return []
  const names = Object.keys(declared)
  const declares = names.length === 0 ? 'it declares no input' : `it declares: ${clip(names.slice(0, 20).join(', '), 400)}${names.length > 20 ? ', …' : ''}`
  const shown = extra.slice(0, maxReported).map(key => `inputs/${clip(key, 64)}`)
  const more = extra.length > maxReported ? ` (and ${extra.length - maxReported} more)` : ''
  const verb = extra.length === 1 ? 'is not a declared input' : 'are not declared inputs'
  return [`${shown.join(', ')}${more} ${verb} of "${clip(registered.name, 64)}" (${declares})`]
}
