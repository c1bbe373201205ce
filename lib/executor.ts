import { randomUUID } from 'node:crypto'
import type { TaskEvent } from './events.js'
import { cut, encodeResult, maxDetailLength, maxErrorLength, type MessageLimits, type ProgressUpdate } from './protocol.js'
import type { RegisteredTask } from './registry.js'
import type { Job, JobResult, Runner, RunnerEvents } from './runner/types.js'
import { finalStatuses, type RecordPatch, type Store, type TaskRecord, type UpdateFence } from './store/types.js'
import { toState } from './state.js'
import { backoffDelay, describe } from './task.js'
import { clip } from './text.js'

/*
 * The executor: what runs a task through its life once its record exists. It hands the
 * task to a runner, and for each thing the runner reports (started, progress, finished)
 * writes the change to the store, then publishes the event; it makes the retries, the
 * timeouts, the cancels and the graceful stop, and picks up at start what the store holds
 * live (restart recovery). The service (lib/service.ts) is the API in front of it.
 */

/** The logger calls the service makes (a pino/fastify logger fits). */
export interface ServiceLogger {
  info? (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  error (obj: object, msg: string): void
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
  stopping?: { reason: 'cancel' } | { reason: 'timeout', ms: number, at: number } | { reason: 'shutdown' }
  timer?: NodeJS.Timeout
  /** Called once the task leaves this executor: see `Departure`. */
  done?: (how: Departure) => void
  /** Left pending for another server by a graceful close. */
  unrun?: boolean
  /** Another worker took the task over: this one's writes were refused. */
  takenOver?: boolean
  /** The record's status and attempt as this executor last wrote or read them: what a fenced write expects. */
  expected?: UpdateFence
  /** Left pending for its next attempt, due in this many ms, for the queue to hand out (`deferRetries`). */
  retryIn?: number
}

/**
 * How an adopted task left an executor: `ended` (a final status is written), `unrun` (a
 * graceful close left it pending, for another worker), or, with `deferRetries`, pending
 * for its next attempt in `retryIn` ms.
 */
export type Departure = 'ended' | 'unrun' | { retryIn: number }

/** What an executor gets from the service around it. */
export interface ExecutorContext {
  registry: Map<string, RegisteredTask>
  store: Store
  log: ServiceLogger
  execution: ExecutionOptions
  limits: MessageLimits
  /** Milliseconds since the epoch. */
  now: () => number
  /** Publishes an event (after its store write). */
  publish: (event: TaskEvent) => void
  /** Whether anybody follows the task: events of a task nobody follows are never built. */
  followed: (uuid: string) => boolean
}

/** What `LocalExecutor` needs: the service's context and a runner. */
export interface ExecutorOptions extends ExecutorContext {
  runner: Runner
  /**
   * Pick up the store's live records at start (restart recovery). False for a worker fed
   * by a shared queue, which recovers what a dead worker left instead.
   * @default true
   */
  recover?: boolean
  /**
   * A failed attempt with retries left leaves this executor once its `pending` status is
   * written, `{ retryIn }` ms before the next attempt is due, instead of waiting here:
   * the shared queue holds it meanwhile (a delayed job), so the wait takes no worker slot.
   * @default false
   */
  deferRetries?: boolean
  /**
   * Other workers share the store and may take this executor's tasks over (its queue lock
   * lapsed while it was paused or cut off): every write of a task is fenced by its
   * attempt (`UpdateFence`), and a task whose write is refused is dropped here, its run
   * stopped, leaving the record to the worker that has it now.
   * @default false
   */
  fence?: boolean
}

/** A fenced write was refused: another worker has the task now (or it ended). */
class TakenOverError extends Error {}

/**
 * The executor port: what the service asks of whatever runs tasks. `LocalExecutor` runs
 * them in this process's runner; an executor over a shared queue (BullMQ) hands them to
 * workers elsewhere.
 */
export interface Executor {
  /** Starts; resolves with what restart recovery found (nothing, where the queue recovers). */
  start (): Promise<Recovery>
  /** Why no task can start now (submissions get 503 meanwhile), or undefined. */
  readonly unavailable: string | undefined
  /** Tasks waiting for a worker, and being run (as far as this server knows). */
  readonly queued: number
  readonly running: number
  /** Runs a task whose record was just created, `pending`. */
  dispatch (registered: RegisteredTask, record: Readonly<TaskRecord>): void | Promise<void>
  /** Whether the task is live here (a finished record is never live). */
  isLive (uuid: string): boolean
  /** The seq of the last event published for a task live here, if known. */
  seqOf (uuid: string): number | undefined
  /** Cancels a live task; resolves with false when it is not live here. */
  cancel (uuid: string): Promise<boolean>
  /** The server is closing: no retry starts from now on. */
  stopAccepting (): void
  /** Stops gracefully (see LocalExecutor.close). */
  close (): Promise<void>
}

/** Runs tasks in this process's runner (a pool of child processes, or inline). */
export class LocalExecutor implements Executor {
  readonly #registry: Map<string, RegisteredTask>
  readonly #store: Store
  readonly #runner: Runner
  readonly #log: ServiceLogger
  readonly #active = new Map<string, ActiveTask>()
  readonly #execution: ExecutionOptions
  readonly #limits: MessageLimits
  readonly #now: () => number
  readonly #publish: (event: TaskEvent) => void
  readonly #followed: (uuid: string) => boolean
  readonly #recoverAtStart: boolean
  readonly #deferRetries: boolean
  readonly #fence: boolean
  #closed = false

  constructor (options: ExecutorOptions) {
    this.#recoverAtStart = options.recover ?? true
    this.#deferRetries = options.deferRetries ?? false
    this.#fence = options.fence ?? false
    this.#registry = options.registry
    this.#store = options.store
    this.#runner = options.runner
    this.#log = options.log
    this.#execution = options.execution
    this.#limits = options.limits
    this.#now = options.now
    this.#publish = options.publish
    this.#followed = options.followed
  }

  /** Starts the runner's workers, then picks up what the store holds live (restart recovery). */
  async start (): Promise<Recovery> {
    const events: RunnerEvents = {
      started: uuid => this.#apply(uuid, () => this.#started(uuid)),
      update: (uuid, update) => this.#apply(uuid, () => this.#updated(uuid, update)),
      finished: (uuid, result) => this.#apply(uuid, () => this.#finished(uuid, result)),
    }
    await this.#runner.start(events)
    return this.#recoverAtStart ? await this.recover() : { requeued: 0, retried: 0, failed: 0 }
  }

  /** Why no task can start now (submissions are refused meanwhile), or undefined. */
  get unavailable (): string | undefined {
    return this.#runner.unavailable
  }

  /** Tasks waiting for a worker. */
  get queued (): number {
    return this.#runner.queued
  }

  /** Tasks being run. */
  get running (): number {
    return this.#runner.running
  }

  /** Runs a task whose record was just created, `pending`, with these (checked) inputs. */
  dispatch (registered: RegisteredTask, record: Readonly<TaskRecord>): void {
    const job: Job = { uuid: record.uuid, task: record.task, inputs: record.inputs, attempt: 1 }
    this.#active.set(record.uuid, { registered, job, seq: 0, ended: false, kept: 0, dropped: 0, steps: [], draining: undefined })
    this.#runner.enqueue(job)
  }

  /**
   * Runs a task whose record another server created, handed over by a shared queue:
   * resolves once it has left this executor, `ended` (a final status is written) or
   * `unrun` (a graceful close left it pending, for another worker). A record found
   * `running` was interrupted (its worker died): it runs again as a new attempt when it
   * has retries left, otherwise it fails, as restart recovery would have it.
   */
  async adopt (uuid: string): Promise<Departure> {
    if (this.#active.has(uuid)) throw new Error(`task ${uuid} is already running in this worker`)
    const record = await this.#retrying(async () => await this.#store.get(uuid), uuid)
    if (record === undefined || finalStatuses.has(record.status)) return 'ended'
    if (!this.#registry.has(record.task)) this.#log.warn({ uuid, task: clip(record.task) }, 'fastify-task-api: a task this worker does not have: failed')
    let done: (how: Departure) => void = () => {}
    const left = new Promise<Departure>((resolve) => { done = resolve })
    if (await this.#resume(record, 'is not registered on this worker', done) === 'failed') return 'ended'
    return await left
  }


  /** Whether the task is live here (pending, running, or waiting for a retry). */
  isLive (uuid: string): boolean {
    return this.#active.has(uuid)
  }

  /** The uuids of the tasks live here. */
  liveTasks (): string[] {
    return [...this.#active.keys()]
  }

  /** The seq of the last event published for a task live here. */
  seqOf (uuid: string): number | undefined {
    return this.#active.get(uuid)?.seq
  }

  /**
   * Cancels a task live here: a pending one leaves the queue at once; a running one has
   * its signal aborted, and its process is stopped after `cancelGrace`. Resolves once the
   * change is written (false when the task is not live here).
   */
  async cancel (uuid: string): Promise<boolean> {
    const active = this.#active.get(uuid)
    if (active === undefined) return false
    this.#stop(uuid, active, { reason: 'cancel' })
    await active.draining
    return true
  }

  /** Refuses to retry in this process from now on: the server is closing. */
  stopAccepting (): void {
    this.#closed = true
  }

  /**
   * Graceful stop: waits up to `shutdownTimeout` ms for the running tasks, then stops the
   * rest and the runner; no process is left. Over a durable store, tasks that have not run
   * stay `pending` for the next server, and stopped ones end as restart recovery ends
   * interrupted ones; over any other store every task ends cancelled.
   */
  async close (): Promise<void> {
    this.#closed = true
    await this.#shutdown()
  }

  #iso (): string {
    return new Date(this.#now()).toISOString()
  }

  /**
   * Restart recovery: the store's `pending` and `running` records belong to a server that
   * stopped (this one, before its restart). Pending ones run now. Running ones were
   * interrupted: they run again as a new attempt when their task has retries left,
   * otherwise they fail with `interruptedError`. Seq goes on from the stored one.
   */
  async recover (): Promise<Recovery> {
    const recovery: Recovery = { requeued: 0, retried: 0, failed: 0 }
    for (const record of await this.#store.live()) recovery[await this.#resume(record, 'is no longer registered')]++
    if (recovery.requeued + recovery.retried + recovery.failed > 0) {
      this.#log.warn({ ...recovery }, 'fastify-task-api: tasks left pending or running by the last server: picked up')
    }
    return recovery
  }

  /**
   * Takes up a live record that a server (this one before a restart, or a worker that
   * died) left: a pending one is queued; a running one was interrupted, and runs again as
   * a new attempt when its task has retries left, otherwise it fails; a task not registered
   * here fails (`task "x" <unregistered>`). Seq goes on from the stored one.
   */
  async #resume (record: Readonly<TaskRecord>, unregistered: string, done?: ActiveTask['done']): Promise<keyof Recovery> {
    const { uuid } = record
    const seq = record.seq + 1
    const publish = (changed: Readonly<TaskRecord>): void => {
      if (this.#followed(uuid)) this.#publish({ type: 'status', uuid, seq, status: changed.status, task: toState(changed) })
    }
    const registered = this.#registry.get(record.task)
    // Fenced at the status and attempt found: if another worker changed the record
    // meanwhile, the task is not this worker's to run.
    const found = record.status === 'pending' || record.status === 'running' ? { status: record.status, attempt: record.attempt } : undefined
    const fail = async (error: string): Promise<'failed'> => {
      publish(await this.#write(uuid, { status: 'failed', error, finished: this.#iso(), seq }, found))
      return 'failed'
    }
    try {
      if (registered === undefined) return await fail(`task "${clip(record.task)}" ${unregistered}`)
      if (record.status === 'running') {
        if (record.attempt > registered.task.retries) return await fail(interruptedError)
        publish(await this.#write(uuid, { status: 'pending', error: interruptedError, progress: null, target: null, seq }, found))
      }
    } catch (err) {
      if (err instanceof TakenOverError) return 'failed'
      throw err
    }
    const interrupted = record.status === 'running'
    const active: ActiveTask = {
      registered,
      job: { uuid, task: record.task, inputs: record.inputs, attempt: record.attempt + 1 },
      seq: interrupted ? seq : record.seq,
      ended: false,
      kept: record.messages.length,
      dropped: record.messagesDropped,
      steps: [],
      draining: undefined,
      expected: { status: 'pending', attempt: record.attempt },
      ...(done === undefined ? {} : { done }),
    }
    this.#active.set(uuid, active)
    this.#runner.enqueue(active.job)
    return interrupted ? 'retried' : 'requeued'
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
      active.unrun = true
    })
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
        if (err instanceof TakenOverError) this.#takenOver(uuid, active)
        else this.#log.error({ err, uuid }, 'fastify-task-api: could not record a task event')
      }
      if (active.ended && this.#active.get(uuid) === active) {
        this.#active.delete(uuid)
        active.done?.(active.unrun === true ? 'unrun' : active.retryIn !== undefined ? { retryIn: active.retryIn } : 'ended')
      }
      step = active.steps.shift()
    }
    active.draining = undefined
  }

  /**
   * Another worker has the task now (this one lost its queue lock): its run here stops,
   * and it leaves this executor without another write.
   */
  #takenOver (uuid: string, active: ActiveTask): void {
    if (active.takenOver === true) return
    active.takenOver = true
    this.#log.warn({ uuid, attempt: active.job.attempt }, 'fastify-task-api: another worker took this task over (this one lost its queue lock); its run here is stopped and its changes dropped')
    if (active.ended) return // its final write was the refused one
    clearTimeout(active.timer)
    active.steps.length = 0
    active.ended = true
    if (!this.#withdraw(uuid, active)) this.#runner.abort(uuid, this.#execution.cancelGrace)
  }

  async #started (uuid: string): Promise<void> {
    const active = this.#active.get(uuid) as ActiveTask
    const seq = ++active.seq
    const { attempt } = active.job
    const timeout = active.registered.task.timeout ?? this.#execution.timeout
    if (timeout > 0) active.timer = setTimeout(() => this.#stop(uuid, active, { reason: 'timeout', ms: timeout, at: this.#now() - timeout }), timeout)
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
    // A task that did not end on its signal was stopped after cancelGrace: its record says
    // so, and how long it took in all.
    const forced = !result.ok && result.forced === true
      ? `it did not end on its signal, so its process was stopped after cancelGrace (${this.#execution.cancelGrace} ms)`
      : undefined
    if (stopping?.reason === 'cancel') {
      patch = forced === undefined ? { status: 'cancelled' } : { status: 'cancelled', error: `cancelled; ${forced}` }
    } else if (stopping?.reason === 'shutdown' && !result.ok) {
      // Stopped by a graceful close over a durable store: as restart recovery would end it.
      // (One that ended well as it was being stopped keeps its outputs.)
      patch = { status: 'failed', error: interruptedError }
    } else if (stopping?.reason === 'timeout') {
      patch = { status: 'failed', error: forced === undefined ? `timed out after ${stopping.ms} ms` : `timed out after ${stopping.ms} ms; ${forced}: ${Math.round(this.#now() - stopping.at)} ms in all` }
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
    if (this.#deferRetries && active.done !== undefined) {
      // The queue waits, not this worker (this runs as one of the task's steps: the
      // drain that called it sees it ended and lets it go).
      clearTimeout(active.timer)
      active.ended = true
      active.retryIn = delay
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
   * While closing, for up to 2 s: a close does not wait a minute for a store that is away
   * (what it could not write is as a crash would leave it, and recovered as such).
   */
  async #write (uuid: string, patch: RecordPatch, expected = this.#active.get(uuid)?.expected): Promise<Readonly<TaskRecord>> {
    // With `fence`: only over the record as this executor last wrote or read it (else another
    // worker has the task: TakenOverError). A fenced write carries an id, the same when it is
    // sent again: a write whose answer was lost (Redis went away) is not applied twice.
    const fence = this.#fence && expected !== undefined ? { ...expected, write: randomUUID() } : undefined
    if (this.#fence && fence === undefined) throw new TakenOverError(`task ${uuid} is not live here any more`)
    const record = await this.#retrying(async () => await this.#store.update(uuid, patch, fence), uuid)
    if (record === undefined && fence !== undefined) throw new TakenOverError(`task ${uuid} was taken over by another worker, or ended`)
    if (record === undefined) throw new Error(`the store lost task ${uuid}`)
    const active = this.#active.get(uuid)
    if (active !== undefined) active.expected = record.status === 'pending' || record.status === 'running' ? { status: record.status, attempt: record.attempt } : undefined
    return record
  }

  /** Runs a store call, again while the store is unavailable (up to a minute; 2 s while closing). */
  async #retrying<T> (call: () => Promise<T>, uuid: string): Promise<T> {
    let delay = 50
    const start = Date.now()
    for (;;) {
      const deadline = start + (this.#closed ? 2000 : 60_000)
      try {
        return await call()
      } catch (err) {
        if ((err as { storeUnavailable?: unknown }).storeUnavailable !== true || Date.now() + delay > deadline) throw err
        this.#log.warn({ uuid, delay, err: (err as Error).message }, 'fastify-task-api: the store is unavailable; the task\'s change is written again')
        await new Promise(resolve => setTimeout(resolve, delay))
        delay = Math.min(delay * 2, 2000)
      }
    }
  }

}
