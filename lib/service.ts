import { randomUUID } from 'node:crypto'
import { EventBus, EventHistory, type TaskBus, type TaskEvent, type TaskListener } from './events.js'
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
import { measureInputs } from './params.js'
import { cut, encodeResult, maxDetailLength, maxErrorLength, type MessageLimits, type ProgressUpdate } from './protocol.js'
import type { RegisteredTask } from './registry.js'
import type { Job, JobResult, Runner, RunnerEvents } from './runner/types.js'
import { finalStatuses, newRecord, type FinalStatus, type ListFilter, type ListPage, type RecordPatch, type Store, type TaskRecord, type TaskState } from './store/types.js'
import { backoffDelay, describe } from './task.js'
import { clip } from './text.js'

/** The logger calls the service makes (a pino/fastify logger fits). */
export interface ServiceLogger {
  warn (obj: object, msg: string): void
  error (obj: object, msg: string): void
}

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

interface ActiveTask {
  registered: RegisteredTask
  /** What the runner is given; `job.attempt` is the run being made (or about to be). */
  job: Job
  seq: number
  /** Set while a failed task waits for its retry. */
  retryTimer?: NodeJS.Timeout
  /** The task reached a final status: the drain forgets it after this step. */
  ended: boolean
  /** Messages the record holds, and how many were dropped: to keep the cap without reading it. */
  kept: number
  dropped: number
  /**
   * Store writes for one task happen one after another, in the order the runner
   * reported them: steps wait here while one runs. `draining` settles when the queue is
   * empty. (A queue drained by one async loop costs far fewer promises than a chain.)
   */
  steps: Array<(active: ActiveTask) => Promise<void>>
  draining: Promise<void> | undefined
  /** Why the task is being stopped, once it is: its final status follows from it. */
  /** `shutdown`: stopped by a graceful close over a durable store; it ends as a crash would have it. */
  stopping?: { reason: 'cancel' } | { reason: 'timeout', ms: number } | { reason: 'shutdown' }
  timer?: NodeJS.Timeout
}

/** Bounds on a submission's inputs, checked before anything else sees them. */
export interface InputLimits {
  /** Bytes of the inputs as JSON. */
  maxInputSize: number
  /** Nesting of objects and arrays; the inputs object is level 1. */
  maxInputDepth: number
}

/** Execution limits of the service. */
export interface ExecutionOptions {
  /** Default milliseconds a run may take (a task's own `timeout` wins); 0: none. */
  timeout: number
  /** Milliseconds between aborting a task's signal and stopping its process. */
  cancelGrace: number
  /** Most tasks waiting for a worker; past it submit answers 429. 0: no bound. */
  maxQueued: number
  /** Milliseconds `close()` waits for running tasks before cancelling them. */
  shutdownTimeout: number
}

/** How long finished records are kept, per final status, in ms; absent: forever. */
export type Retention = Partial<Record<FinalStatus, number>>

/** Records the retention sweep removes per store call; it yields to the event loop between calls. */
const sweepBatch = 200

/** What a restart found in the store, and what became of it. */
export interface Recovery {
  /** Accepted, never started (or waiting for a retry): queued again. */
  requeued: number
  /** Interrupted while running, with retries left: queued again as a new attempt. */
  retried: number
  /** Interrupted while running, no retry left (or the task is no longer registered): failed. */
  failed: number
}

/** The error of a task that was running when its server stopped. */
export const interruptedError = 'interrupted: the server stopped while the task was running'

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i

/** The client's view of a record: no inputs, no internals; a copy the caller may keep. */
export function toState (record: Readonly<TaskRecord>): TaskState {
  return {
    uuid: record.uuid,
    task: record.task,
    status: record.status,
    progress: record.progress,
    target: record.target,
    outputs: record.outputs,
    messages: record.messages.slice(),
    messagesDropped: record.messagesDropped,
    attempt: record.attempt,
    created: record.created,
    started: record.started,
    finished: record.finished,
    error: record.error,
  }
}

/**
 * The one API over tasks: routes, streams and `app.tasks` all go through it. It
 * owns the order of events: it gives each its `seq`, writes it to the store, then
 * publishes it. Transports never reach the store or the runner directly.
 */
export class TaskService {
  readonly #registry: Map<string, RegisteredTask>
  readonly #store: Store
  readonly #runner: Runner
  readonly #log: ServiceLogger
  readonly #bus: TaskBus
  readonly #history: EventHistory
  readonly #active = new Map<string, ActiveTask>()
  readonly #execution: ExecutionOptions
  readonly #limits: MessageLimits
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
    runner: Runner
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
    this.#limits = options.limits ?? { maxMessages: 1000, maxMessageLength: 2000, maxOutputSize: 1024 * 1024 }
    this.#execution = { timeout: 0, cancelGrace: 5000, maxQueued: 0, shutdownTimeout: 10_000, ...options.execution }
    this.#history = new EventHistory(options.history?.size ?? 0, options.history?.ttl ?? 0)
    this.#registry = options.registry
    this.#store = options.store
    this.#runner = options.runner
    this.#bus = options.bus ?? new EventBus()
    this.#log = options.log
  }

  /** Starts the runner's workers. */
  async start (): Promise<void> {
    const events: RunnerEvents = {
      started: uuid => this.#apply(uuid, () => this.#started(uuid)),
      update: (uuid, update) => this.#apply(uuid, () => this.#updated(uuid, update)),
      finished: (uuid, result) => this.#apply(uuid, () => this.#finished(uuid, result)),
    }
    await this.#store.open?.()
    await this.#bus.start?.(err => this.#log.error({ err }, 'fastify-task-api: a task event listener threw'))
    await this.#runner.start(events)
    this.recovery = await this.#recover()
    this.#scheduleSweep(0)
  }

  /** What the last start found in the store (restart recovery). */
  recovery: Recovery = { requeued: 0, retried: 0, failed: 0 }

  #iso (): string {
    return new Date(this.#now()).toISOString()
  }

  /**
   * Restart recovery: the store's `pending` and `running` records belong to a server that
   * stopped (this one, before its restart). Pending ones run now. Running ones were
   * interrupted: they run again as a new attempt when their task has retries left,
   * otherwise they fail with `interruptedError`. Seq goes on from the stored one.
   */
  async #recover (): Promise<Recovery> {
    const recovery: Recovery = { requeued: 0, retried: 0, failed: 0 }
    for (const record of await this.#store.live()) {
      const registered = this.#registry.get(record.task)
      const seq = record.seq + 1
      if (registered === undefined) {
        await this.#store.update(record.uuid, { status: 'failed', error: `task "${clip(record.task)}" is no longer registered`, finished: this.#iso(), seq })
        recovery.failed++
        continue
      }
      let patch: RecordPatch | undefined
      if (record.status === 'running') {
        if (record.attempt <= registered.task.retries) {
          patch = { status: 'pending', error: interruptedError, progress: null, target: null, seq }
          recovery.retried++
        } else {
          await this.#store.update(record.uuid, { status: 'failed', error: interruptedError, finished: this.#iso(), seq })
          recovery.failed++
          continue
        }
      } else {
        recovery.requeued++
      }
      const active: ActiveTask = {
        registered,
        job: { uuid: record.uuid, task: record.task, inputs: record.inputs, attempt: record.attempt + 1 },
        seq: record.seq,
        ended: false,
        kept: record.messages.length,
        dropped: record.messagesDropped,
        steps: [],
        draining: undefined,
      }
      if (patch !== undefined) {
        await this.#store.update(record.uuid, patch)
        active.seq = seq
      }
      this.#active.set(record.uuid, active)
      this.#runner.enqueue(active.job)
    }
    if (recovery.requeued + recovery.retried + recovery.failed > 0) {
      this.#log.warn({ ...recovery }, 'fastify-task-api: tasks left pending or running by the last server: picked up')
    }
    return recovery
  }

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

  /** The registered task with this name, or undefined. */
  task (name: string): RegisteredTask | undefined {
    return this.#registry.get(name)
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
    if (checked.error !== undefined) throw new FST_TASK_API_INPUT_INVALID(checked.error)
    return checked.value
  }

  /**
   * Creates and queues a task whose inputs were already checked by `checkInputs`.
   * Resolves with its state as created (`pending`), whatever happened since.
   */
  async submitChecked (registered: RegisteredTask, inputs: Record<string, unknown>, options: SubmitOptions = {}): Promise<TaskState> {
    if (this.#closed) throw new FST_TASK_API_RUNNER_CLOSED()
    const unavailable = this.#runner.unavailable
    if (unavailable !== undefined) {
      // Accepting would only pile up tasks that cannot start; the cause is in the log already.
      throw new FST_TASK_API_RUNNER_UNAVAILABLE()
    }
    const { maxQueued } = this.#execution
    if (maxQueued > 0 && this.#runner.queued >= maxQueued) throw new FST_TASK_API_QUEUE_FULL(maxQueued)
    const record = newRecord({ uuid: randomUUID(), task: registered.name, inputs, created: this.#iso(), owner: options.owner ?? null })
    await this.#store.create(record)
    const created = toState(record)
    const job: Job = { uuid: record.uuid, task: record.task, inputs, attempt: 1 }
    this.#active.set(record.uuid, { registered, job, seq: 0, ended: false, kept: 0, dropped: 0, steps: [], draining: undefined })
    this.#runner.enqueue(job)
    return created
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
    if (options.history === true) {
      // Streams ask for history: their clients may reconnect and ask for what they missed.
      const active = this.#active.get(uuid)
      if (active !== undefined) this.#history.watch(uuid, active.seq)
    }
    return this.#bus.subscribe(uuid, listener)
  }

  /**
   * The events published after `seq`, when the server still holds all of them (the task
   * was followed recently); undefined otherwise, and the caller sends a snapshot instead.
   * Call it right after `subscribe`, in the same tick, so that nothing falls between.
   */
  eventsSince (uuid: string, seq: number): { events: TaskEvent[], ended: boolean } | undefined {
    return this.#history.since(uuid, seq)
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
    const active = this.#active.get(uuid)
    if (active === undefined || finalStatuses.has(record.status)) return toState(record)
    this.#stop(uuid, active, { reason: 'cancel' })
    await active.draining
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
    if (this.#active.has(uuid) || !finalStatuses.has(record.status)) throw new FST_TASK_API_TASK_LIVE(uuid)
    const deleted = await this.#store.delete(uuid)
    this.#history.forget(uuid)
    return deleted
  }

  #stop (uuid: string, active: ActiveTask, why: NonNullable<ActiveTask['stopping']>): void {
    if (active.stopping !== undefined) return
    active.stopping = why
    // Not running (queued, or waiting for a retry): it ends now. Running: the runner stops it.
    if (this.#withdraw(uuid, active)) this.#endUnrun(uuid)
    else this.#runner.abort(uuid, this.#execution.cancelGrace)
  }

  /** Takes back a task that is not running: out of the runner's queue or out of its retry wait. */
  #withdraw (uuid: string, active: ActiveTask): boolean {
    if (active.retryTimer === undefined) return this.#runner.dequeue(uuid)
    clearTimeout(active.retryTimer)
    active.retryTimer = undefined
    return true
  }

  /** Ends a task that is stopping (`active.stopping` set) and not running. */
  #endUnrun (uuid: string): void {
    this.#apply(uuid, () => this.#finished(uuid, { ok: false, error: 'cancelled before it ran' }, false))
  }

  /**
   * A task taken back from the queue at close: cancelled, or over a durable store left as
   * it is recorded (`pending`) for the next server, which runs it.
   */
  #unrun (uuid: string, active: ActiveTask, stop: NonNullable<ActiveTask['stopping']>): void {
    active.stopping ??= stop
    if (active.stopping.reason !== 'shutdown') {
      this.#endUnrun(uuid)
      return
    }
    this.#apply(uuid, async (active) => {
      clearTimeout(active.timer)
      active.ended = true
    })
  }

  /** Resolves with the task's final state once it has succeeded, failed or been cancelled. */
  async wait (uuid: string): Promise<TaskState> {
    let unsubscribe: (() => void) | undefined
    const ended = new Promise<TaskState>((resolve) => {
      unsubscribe = this.subscribe(uuid, (event: TaskEvent) => {
        if (event.type === 'status' && event.task !== undefined && finalStatuses.has(event.status)) resolve(event.task)
      })
    })
    try {
      const current = await this.get(uuid)
      if (current === undefined) throw new FST_TASK_API_TASK_NOT_FOUND(uuid)
      if (finalStatuses.has(current.status)) return current
      return await ended
    } finally {
      unsubscribe?.()
    }
  }

  /** What the runner holds now, and the event listeners (the streams are counted by the plugin). */
  stats (): Omit<TaskStats, 'streams'> {
    return { queued: this.#runner.queued, running: this.#runner.running, subscribers: this.#bus.size }
  }

  /** Refuses new submissions (503) from now on; called as the server starts closing. */
  stopAccepting (): void {
    this.#closed = true
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
    this.#closing = this.#shutdown()
    await this.#closing
  }

  /** Whether records outlive the process: a close then leaves tasks to the next server. */
  get #durable (): boolean {
    return this.#store.durable === true
  }

  /** How a close stops a task: as a crash would over a durable store, else by cancelling it. */
  get #closeStop (): NonNullable<ActiveTask['stopping']> {
    return this.#durable ? { reason: 'shutdown' } : { reason: 'cancel' }
  }

  async #shutdown (): Promise<void> {
    const durable = this.#durable
    const stop = this.#closeStop
    const pending = [...this.#active.entries()].filter(([uuid, active]) =>
      active.stopping === undefined && this.#withdraw(uuid, active))
    for (const [uuid, active] of pending) this.#unrun(uuid, active, stop)
    if (pending.length > 0) {
      this.#log.warn({ count: pending.length }, durable
        ? 'fastify-task-api: closing: queued tasks stay pending for the next server'
        : 'fastify-task-api: closing: queued tasks are cancelled')
    }
    const deadline = Date.now() + this.#execution.shutdownTimeout
    while (this.#runner.running > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    if (this.#runner.running > 0) {
      this.#log.warn({ count: this.#runner.running }, durable
        ? 'fastify-task-api: closing: tasks still running after shutdownTimeout are stopped: retried by the next server when they have retries left, otherwise failed'
        : 'fastify-task-api: closing: tasks still running after shutdownTimeout are cancelled')
      for (const active of this.#active.values()) active.stopping ??= stop
    }
    const dropped = await this.#runner.close()
    for (const job of dropped) {
      const active = this.#active.get(job.uuid)
      if (active !== undefined) this.#unrun(job.uuid, active, stop)
    }
    await Promise.all([...this.#active.values()].map(active => active.draining))
    for (const active of this.#active.values()) clearTimeout(active.timer)
    this.#history.clear()
    await this.#sweeping
    await this.#store.close?.()
    await this.#bus.close?.()
  }

  #apply (uuid: string, step: (active: ActiveTask) => Promise<void>): void {
    const active = this.#active.get(uuid)
    if (active === undefined) return
    active.steps.push(step)
    active.draining ??= this.#drain(uuid, active)
  }

  async #drain (uuid: string, active: ActiveTask): Promise<void> {
    let step = active.steps.shift()
    while (step !== undefined) {
      try {
        await step(active)
      } catch (err) {
        this.#log.error({ err, uuid }, 'fastify-task-api: could not record a task event')
      }
      if (active.ended) this.#active.delete(uuid)
      step = active.steps.shift()
    }
    active.draining = undefined
  }

  async #started (uuid: string): Promise<void> {
    const active = this.#active.get(uuid) as ActiveTask
    const seq = ++active.seq
    const { attempt } = active.job
    const timeout = active.registered.task.timeout ?? this.#execution.timeout
    if (timeout > 0) active.timer = setTimeout(() => this.#stop(uuid, active, { reason: 'timeout', ms: timeout }), timeout)
    await this.#write(uuid, { status: 'running', started: this.#iso(), attempt, seq })
    this.#publish({ type: 'status', uuid, seq, status: 'running' })
  }

  async #updated (uuid: string, update: ProgressUpdate): Promise<void> {
    const active = this.#active.get(uuid) as ActiveTask
    const hasProgress = update.progress !== undefined || update.target !== undefined
    const progressSeq = hasProgress ? ++active.seq : 0
    // The runner's side applied the caps already; they are applied again here, whatever arrived.
    const { maxMessages, maxMessageLength } = this.#limits
    let messages = update.messages ?? []
    let dropped = update.dropped ?? 0
    if (messages.length > maxMessages) {
      dropped += messages.length - maxMessages
      messages = messages.slice(-maxMessages)
    }
    messages = messages.map(message => cut(message, maxMessageLength))
    const firstMessageSeq = active.seq + 1
    active.seq += messages.length
    const patch: RecordPatch = { seq: active.seq }
    if (update.progress !== undefined) patch.progress = update.progress
    if (update.target !== undefined) patch.target = update.target
    if (messages.length > 0) patch.messages = messages
    // The record keeps the newest maxMessages overall.
    const trim = Math.max(0, active.kept + messages.length - maxMessages)
    active.kept += messages.length - trim
    if (trim > 0) patch.trimMessages = trim
    if (trim > 0 || dropped > 0) {
      active.dropped += trim + dropped
      patch.messagesDropped = active.dropped
    }
    const record = await this.#write(uuid, patch)
    if (!this.#followed(uuid)) return // events of a task nobody follows are never built
    if (hasProgress) this.#publish({ type: 'progress', uuid, seq: progressSeq, progress: record.progress, target: record.target })
    for (let i = 0; i < messages.length; i++) {
      this.#publish({ type: 'message', uuid, seq: firstMessageSeq + i, message: messages[i] as string })
    }
  }

  async #finished (uuid: string, result: JobResult, log = true): Promise<void> {
    const active = this.#active.get(uuid) as ActiveTask
    const { registered, stopping } = active
    clearTimeout(active.timer)
    let patch: RecordPatch
    if (stopping?.reason === 'cancel') {
      patch = { status: 'cancelled' }
    } else if (stopping?.reason === 'shutdown' && !result.ok) {
      // Stopped by a graceful close over a durable store: as restart recovery would end it.
      // (One that ended well as it was being stopped keeps its outputs.)
      patch = { status: 'failed', error: interruptedError }
    } else if (stopping?.reason === 'timeout') {
      patch = { status: 'failed', error: `timed out after ${stopping.ms} ms` }
    } else if (result.ok) {
      const outputs = this.#outputs(registered, result.value)
      patch = 'error' in outputs
        ? { status: 'failed', error: outputs.error }
        : { status: 'succeeded', outputs: outputs.outputs }
    } else {
      patch = { status: 'failed', error: cut(result.error, maxErrorLength) }
    }
    const retryable = stopping?.reason === 'shutdown'
      ? !result.ok
      : stopping?.reason !== 'cancel' && (result.ok ? stopping !== undefined : result.retry !== false)
    // Once the server has begun closing (preClose), a retry here would only be cancelled;
    // over a durable store it is left pending, and the next server makes it.
    if (patch.status === 'failed' && retryable && active.job.attempt <= registered.task.retries && (!this.#closed || this.#durable)) {
      await this.#retry(uuid, active, patch.error as string)
      return
    }
    if (patch.status === 'failed' && log) {
      const detail = result.ok ? undefined : result.detail
      const stack = result.ok ? undefined : result.stack
      this.#log.warn({
        uuid,
        task: registered.name,
        error: patch.error,
        ...(detail === undefined ? {} : { detail: cut(detail, maxDetailLength) }),
        ...(stack === undefined ? {} : { stack: cut(stack, maxDetailLength) }),
      }, 'fastify-task-api: task failed')
    }
    if (patch.status === 'succeeded') patch.error = null // an earlier attempt's
    patch.finished = this.#iso()
    patch.seq = ++active.seq
    active.ended = true
    const record = await this.#write(uuid, patch)
    if (this.#followed(uuid)) this.#publish({ type: 'status', uuid, seq: patch.seq, status: record.status, task: toState(record) })
  }

  /**
   * A failed attempt with retries left: back to pending, and queued again after the
   * backoff; while closing (over a durable store) left pending for the next server.
   */
  async #retry (uuid: string, active: ActiveTask, error: string): Promise<void> {
    const { registered: { task }, job } = active
    const delay = backoffDelay(task.backoff, job.attempt)
    active.stopping = undefined // the timeout that ended this attempt, if one did
    if (this.#closed) this.#log.warn({ uuid, task: task.name, attempt: job.attempt, error }, 'fastify-task-api: task failed while closing: the next server retries it')
    else this.#log.warn({ uuid, task: task.name, attempt: job.attempt, error, delay }, 'fastify-task-api: task failed, retrying')
    const seq = ++active.seq
    const record = await this.#write(uuid, { status: 'pending', error, progress: null, target: null, seq })
    if (this.#followed(uuid)) this.#publish({ type: 'status', uuid, seq, status: 'pending', task: toState(record) })
    if (active.stopping !== undefined || this.#closed) {
      // Cancelled, or the server is closing.
      this.#unrun(uuid, active, this.#closeStop)
      return
    }
    active.retryTimer = setTimeout(() => {
      active.retryTimer = undefined
      job.attempt++
      this.#runner.enqueue(job)
    }, delay)
  }

  #outputs (registered: RegisteredTask, value: unknown): { outputs: Record<string, unknown> } | { error: string } {
    // The bound holds whatever the runner let through.
    const encoded = encodeResult(value, this.#limits.maxOutputSize)
    if ('error' in encoded) return encoded
    const names = registered.outputNames
    if (names.length === 0) return { outputs: {} }
    let raw: Record<string, unknown>
    if (names.length === 1) {
      raw = { [names[0] as string]: value }
    } else {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) {
        return { error: `task returned invalid outputs: outputs must be an object keyed by output name (${names.join(', ')}), got ${describe(value)}` }
      }
      raw = value as Record<string, unknown>
    }
    const checked = registered.outputs.check(raw)
    if (checked.error !== undefined) return { error: `task returned invalid outputs: ${checked.error}` }
    const outputs: Record<string, unknown> = {}
    for (const name of names) {
      if (Object.hasOwn(raw, name)) outputs[name] = raw[name]
    }
    return { outputs }
  }

  /**
   * Writes a task's change. A store that is momentarily unavailable (StoreUnavailableError)
   * is tried again, with a growing delay, for up to a minute: the task's events wait in
   * order meanwhile, so no status is skipped and none is published before it is stored.
   */
  async #write (uuid: string, patch: RecordPatch): Promise<Readonly<TaskRecord>> {
    let delay = 50
    const deadline = Date.now() + 60_000
    for (;;) {
      try {
        const record = await this.#store.update(uuid, patch)
        if (record === undefined) throw new Error(`the store lost task ${uuid}`)
        return record
      } catch (err) {
        if ((err as { storeUnavailable?: unknown }).storeUnavailable !== true || Date.now() + delay > deadline) throw err
        this.#log.warn({ uuid, delay, err: (err as Error).message }, 'fastify-task-api: the store is unavailable; the task\'s change is written again')
        await new Promise(resolve => setTimeout(resolve, delay))
        delay = Math.min(delay * 2, 2000)
      }
    }
  }

  #followed (uuid: string): boolean {
    return this.#bus.has(uuid) || this.#history.isWatched(uuid)
  }

  #publish (event: TaskEvent): void {
    this.#history.record(event)
    this.#bus.publish(event, err => this.#log.error({ err, uuid: event.uuid }, 'fastify-task-api: a task event listener threw'))
  }
}
