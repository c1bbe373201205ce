import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { cut, isChildMessage, maxDetailLength, type ChildInit, type ChildMessage, type MessageLimits, type ParentMessage } from '../protocol.js'
import { Fifo } from './queue.js'
import { Reaper } from './reaper.js'
import type { Job, JobResult, Runner, RunnerEvents } from './types.js'

/** Options of the child-process pool. */
export interface ProcessPoolOptions {
  /** Task module URLs every child loads once. */
  modules: string[]
  /** How many children, each running one task at a time. */
  concurrency: number
  /** Milliseconds between progress flushes from a child. */
  progressInterval: number
  /** Caps on each task's messages. */
  limits: MessageLimits
  /** Node flags for the children. @default process.execArgv (so a tsx loader carries over) */
  execArgv?: string[]
  /** The children's environment. @default process.env */
  env?: NodeJS.ProcessEnv
  /** Tasks a child runs before it is replaced; 0: no limit. */
  maxTasksPerChild?: number
  /** Each child's V8 old-space limit in MB (`--max-old-space-size`); undefined: Node's default. */
  maxOldGenerationSizeMb?: number
  /** Milliseconds a child has to acknowledge a task before it is replaced. @default 5000 */
  ackTimeout?: number
  /** Runs every task in a fresh child, with one spare child forked ahead. */
  childPerTask?: boolean
  /** Where child failures are logged. */
  log?: { warn (obj: object, msg: string): void, error? (obj: object, msg: string): void }
}

// Under tsx the sources run as .ts; compiled, as .js. The child entry sits beside this file.
const here = fileURLToPath(import.meta.url)
const childEntry = here.replace(/pool\.([cm]?[jt]s)$/, 'child.$1')

const killGrace = 2000
// A child that keeps failing to start is forked again after 100 ms, 200 ms, ... up to 5 s.
const respawnBase = 100
const respawnMax = 5000
// How long an exited child's stderr may take to deliver its last words (an out-of-memory report).
const stderrGrace = 250
const stderrTailSize = 4096
const outOfMemory = /JavaScript heap out of memory|Reached heap limit|Ineffective mark-compacts near heap limit/

/**
 * A child's life: `starting` until its `ready`; then `idle` or `busy` with one job; then
 * `stopping` once the pool has decided to end it (recycled, misbehaving, closing). Every
 * message must fit the state, or the child is replaced (see #violation).
 */
type State = 'starting' | 'idle' | 'busy' | 'stopping'

interface Worker {
  readonly child: ChildProcess
  state: State
  job: Job | undefined
  /** The child acknowledged the job's `run`. */
  acked: boolean
  /** The ack deadline, and the escalation of an abort (SIGTERM, then SIGKILL). */
  timers: NodeJS.Timeout[]
  /**
   * The running task's acknowledgement deadline. Apart from `timers`: the acknowledgement
   * clears this one only, never the stop timers of a cancel or a timeout that came first.
   */
  ackTimer?: NodeJS.Timeout
  /** Tasks this child has run. */
  tasks: number
  /** The end of what the child wrote to stderr: tells an out-of-memory death from others. */
  stderrTail: string
  /** An abort's grace ran out: the pool is stopping the child (SIGTERM, then SIGKILL). */
  forced?: boolean
  /** Why the pool ended this child, when it did: what its job's failure says. */
  ending?: { error: string, retry: boolean, detail?: string }
  ended: boolean
  /** Settles once the child is gone and its job, if any, was reported. */
  gone: Promise<void>
  settle: () => void
}

/**
 * A warm pool of forked children. Forking costs about 100 ms, so children are forked
 * once and reused; a child that exits, crashes or breaks the protocol fails the job it
 * was running and is replaced. Each child leads its own process group, so stopping it
 * stops what its task spawned; a reaper process ends the groups if this process dies.
 */
export class ProcessPool implements Runner {
  readonly #options: ProcessPoolOptions
  readonly #queue = new Fifo<Job>(job => job.uuid)
  readonly #workers = new Set<Worker>()
  readonly #idle: Worker[] = []
  readonly #reaper: Reaper
  /** Children the pool keeps: one per concurrent task, plus a spare when each task gets a fresh child. */
  readonly #size: number
  /** Jobs put back in the queue once because their child died before acknowledging them. */
  readonly #requeued = new WeakSet<Job>()
  #events: RunnerEvents | undefined
  #running = 0
  #closing = false
  /** Children that failed to start in a row, and the last cause. */
  #failures = 0
  #lastFailure: string | undefined
  #refillTimer: NodeJS.Timeout | undefined
  #startup: { ready: number, resolve: () => void, reject: (err: Error) => void } | undefined

  constructor (options: ProcessPoolOptions) {
    this.#options = options
    this.#size = options.concurrency + (options.childPerTask === true ? 1 : 0)
    this.#reaper = new Reaper(options.log)
  }

  get queued (): number { return this.#queue.length }
  get running (): number { return this.#running }

  /** Why no task can run now: no child is up and the last ones failed to start. */
  get unavailable (): string | undefined {
    if (this.#lastFailure === undefined) return undefined
    for (const worker of this.#workers) {
      if (worker.state === 'idle' || worker.state === 'busy') return undefined
    }
    return this.#lastFailure
  }

  /** Forks every child; resolves once all are ready, rejects with the cause when one cannot start. */
  async start (events: RunnerEvents): Promise<void> {
    this.#events = events
    this.#reaper.start()
    await new Promise<void>((resolve, reject) => {
      this.#startup = { ready: 0, resolve, reject }
      for (let i = 0; i < this.#size; i++) this.#spawn()
    })
  }

  enqueue (job: Job): void {
    this.#queue.push(job)
    this.#dispatch()
  }

  dequeue (uuid: string): boolean {
    return this.#queue.remove(uuid) !== undefined
  }

  abort (uuid: string, grace: number): void {
    for (const worker of this.#workers) {
      if (worker.job?.uuid !== uuid || worker.state !== 'busy') continue
      const message: ParentMessage = { type: 'abort', id: uuid }
      try {
        worker.child.send(message, () => {})
      } catch {}
      // A task that ignores its signal, or never yields (while (true) {}), is ended for
      // real: SIGTERM to its group after the grace period, SIGKILL if that is ignored too.
      worker.timers.push(
        setTimeout(() => {
          worker.forced = true
          signal(worker.child, 'SIGTERM')
          signal(worker.child, 'SIGCONT') // a stopped child handles its SIGTERM
        }, grace).unref(),
        setTimeout(() => signal(worker.child, 'SIGKILL'), grace + killGrace).unref())
      return
    }
  }

  async close (): Promise<Job[]> {
    this.#closing = true
    clearTimeout(this.#refillTimer)
    const dropped = this.#queue.drain()
    await Promise.all([...this.#workers].map(async (worker) => {
      // A task still running is told first (its signal), then its group gets SIGTERM.
      if (worker.state === 'busy' && worker.job !== undefined) {
        try {
          worker.child.send({ type: 'abort', id: worker.job.uuid } satisfies ParentMessage, () => {})
        } catch {}
      }
      this.#stop(worker)
      await worker.gone
    }))
    this.#reaper.close()
    this.#startup?.reject(new Error('fastify-task-api: the pool closed while starting'))
    this.#startup = undefined
    return dropped
  }

  #spawn (): void {
    const init: ChildInit = { modules: this.#options.modules, progressInterval: this.#options.progressInterval, limits: this.#options.limits }
    const heap = this.#options.maxOldGenerationSizeMb
    let child: ChildProcess
    try {
      child = fork(childEntry, [JSON.stringify(init)], {
        execArgv: [...(this.#options.execArgv ?? process.execArgv), ...(heap === undefined ? [] : [`--max-old-space-size=${heap}`])],
        env: this.#options.env ?? process.env,
        serialization: 'json',
        // Its own process group: a cancel, a timeout or a close stops what the task spawned too.
        detached: true,
        // stderr passes through to ours, and its tail is kept to recognize an out-of-memory death.
        stdio: ['inherit', 'inherit', 'pipe', 'ipc'],
      })
    } catch (err) {
      this.#startFailed(`it cannot be forked: ${(err as Error).message}`)
      return
    }
    let settle!: () => void
    const gone = new Promise<void>((resolve) => { settle = resolve })
    const worker: Worker = { child, state: 'starting', job: undefined, acked: false, timers: [], tasks: 0, stderrTail: '', ended: false, gone, settle }
    this.#workers.add(worker)
    if (child.pid !== undefined) this.#reaper.add(child.pid)
    child.stderr?.on('data', (chunk: Buffer) => {
      process.stderr.write(chunk)
      worker.stderrTail = (worker.stderrTail + chunk.toString('utf8')).slice(-stderrTailSize)
    })
    child.on('message', (message: unknown) => this.#onMessage(worker, message))
    child.on('error', (err: NodeJS.ErrnoException) => {
      // No pid: the fork itself failed (EMFILE, EAGAIN, ENOENT); no 'exit' will follow.
      if (child.pid === undefined) this.#ended(worker, `cannot be forked: ${err.message}`, false)
      else this.#options.log?.warn({ err, pid: child.pid }, 'fastify-task-api: child process error')
    })
    child.once('exit', (code, signal) => {
      clearTimers(worker)
      // Its last stderr bytes can arrive just after 'exit': wait for them, briefly.
      afterStderr(child, () => this.#ended(worker, this.#how(worker, code, signal)))
    })
  }

  #how (worker: Worker, code: number | null, signal: NodeJS.Signals | null): string {
    const heap = this.#options.maxOldGenerationSizeMb
    if (outOfMemory.test(worker.stderrTail)) return `ran out of memory (heap limit ${heap === undefined ? 'the Node.js default' : `${heap} MB`})`
    return signal !== null ? `was killed by signal ${signal}` : `exited with code ${String(code)}`
  }

  /** The child is gone: report its job, free its slot, fork a replacement. */
  #ended (worker: Worker, how: string, forked = true): void {
    if (worker.ended) return
    worker.ended = true
    clearTimers(worker)
    this.#workers.delete(worker)
    const index = this.#idle.indexOf(worker)
    if (index !== -1) this.#idle.splice(index, 1)
    const pid = worker.child.pid
    if (pid !== undefined) {
      // Whatever the task spawned and left behind in the child's group goes with it.
      signalGroup(pid, 'SIGKILL')
      this.#reaper.remove(pid)
    }
    const job = worker.job
    if (job !== undefined) {
      worker.job = undefined
      this.#running--
      if (!worker.acked && worker.ending?.retry !== false && !this.#requeued.has(job) && !this.#closing) {
        // The child died before it took the job: not the job's fault. Another child runs it.
        this.#requeued.add(job)
        this.#queue.unshift(job)
      } else {
        const { error, retry, detail } = worker.ending ?? { error: `the child process running the task ${how}`, retry: true }
        const result: JobResult = { ok: false, error, retry }
        if (detail !== undefined) result.detail = detail
        if (worker.forced === true) result.forced = true
        this.#events?.finished(job.uuid, result)
      }
    }
    if (worker.state === 'starting') this.#startFailed(forked ? `it ${how} before it was ready${lastError(worker.stderrTail)}` : `it ${how}`)
    worker.settle()
    if (!this.#closing) this.#refill()
    this.#dispatch()
  }

  #startFailed (cause: string): void {
    this.#failures++
    this.#lastFailure = cut(`a child process could not start: ${cause}`, maxDetailLength)
    if (this.#startup !== undefined) {
      this.#startup.reject(new Error(`fastify-task-api: ${this.#lastFailure}`))
      this.#startup = undefined
      return
    }
    if (!this.#closing) {
      this.#options.log?.warn({ failures: this.#failures, cause: this.#lastFailure }, 'fastify-task-api: a child process could not start; retrying')
      this.#refill()
    }
  }

  /** Forks children until the pool is full again: at once, or after a backoff while they keep failing to start. */
  #refill (): void {
    if (this.#closing || this.#refillTimer !== undefined || this.#startup !== undefined) return
    const fill = (): void => {
      this.#refillTimer = undefined
      while (!this.#closing && this.#kept() < this.#size) {
        const before = this.#failures
        this.#spawn()
        if (this.#failures > before) return // failed at once: the backoff is scheduled
      }
    }
    if (this.#failures === 0) {
      fill()
      return
    }
    const delay = Math.min(respawnMax, respawnBase * 2 ** Math.min(this.#failures - 1, 16))
    this.#refillTimer = setTimeout(fill, delay).unref()
  }

  /**
   * Children that count against the pool's size. A child recycled after `maxTasksPerChild`
   * counts until it has exited, so the pool never holds more than its size; with
   * `childPerTask` its replacement is forked at once instead, while it exits.
   */
  #kept (): number {
    if (this.#options.childPerTask !== true) return this.#workers.size
    let kept = 0
    for (const worker of this.#workers) if (worker.state !== 'stopping') kept++
    return kept
  }

  #onMessage (worker: Worker, raw: unknown): void {
    if (worker.state === 'stopping' || worker.ended) return
    if (!isChildMessage(raw)) {
      this.#violation(worker, 'a malformed message')
      return
    }
    const message: ChildMessage = raw
    const job = worker.job
    switch (message.type) {
      case 'ready':
        if (worker.state !== 'starting') {
          this.#violation(worker, 'a second "ready"')
          return
        }
        this.#ready(worker, message.loadErrors)
        return
      case 'crash':
        this.#crashed(worker, message)
        return
      case 'ack':
        if (worker.state !== 'busy' || job === undefined || message.id !== job.uuid || worker.acked) {
          this.#violation(worker, `an unexpected "ack" for ${message.id === job?.uuid ? 'the task twice' : 'another task'}`, message.id !== job?.uuid)
          return
        }
        worker.acked = true
        clearTimeout(worker.ackTimer)
        this.#events?.started(job.uuid)
        return
      default:
        if (worker.state !== 'busy' || job === undefined || !worker.acked || message.id !== job.uuid) {
          this.#violation(worker, `"${message.type}" ${job === undefined ? 'while no task runs' : !worker.acked ? 'before the task was acknowledged' : 'for another task'}`, message.id !== job?.uuid)
          return
        }
    }
    const events = this.#events as RunnerEvents
    if (message.type === 'update') {
      events.update(job.uuid, message.update)
      return
    }
    if (message.update !== undefined) events.update(job.uuid, message.update)
    clearTimers(worker)
    worker.job = undefined
    this.#running--
    if (message.type === 'done') {
      events.finished(job.uuid, { ok: true, value: message.value })
    } else {
      const result: JobResult = { ok: false, error: message.message }
      if (message.stack !== undefined) result.stack = message.stack
      if (message.detail !== undefined) result.detail = message.detail
      if (message.retry !== undefined) result.retry = message.retry
      events.finished(job.uuid, result)
    }
    const limit = this.#options.childPerTask === true ? 1 : this.#options.maxTasksPerChild ?? 0
    if (limit > 0 && ++worker.tasks >= limit) {
      // Recycled: a fresh one is forked once it has exited (or at once, per task).
      this.#stop(worker)
      if (this.#options.childPerTask === true) this.#refill()
      return
    }
    worker.state = 'idle'
    this.#release(worker)
  }

  #ready (worker: Worker, loadErrors: string[] | undefined): void {
    worker.state = 'idle'
    this.#failures = 0
    this.#lastFailure = undefined
    if (loadErrors !== undefined) {
      this.#options.log?.warn({ pid: worker.child.pid, loadErrors }, 'fastify-task-api: task modules failed to load in a child process; their tasks are unavailable')
    }
    const startup = this.#startup
    if (startup !== undefined && ++startup.ready === this.#size) {
      this.#startup = undefined
      startup.resolve()
    }
    this.#release(worker)
  }

  /** An uncaught exception or unhandled rejection in the child: it exits; its task fails. */
  #crashed (worker: Worker, message: Extract<ChildMessage, { type: 'crash' }>): void {
    const job = worker.job
    const ownTask = job !== undefined && message.id === job.uuid && message.own
    const detail = `${message.message}${message.stack === undefined ? '' : `\n${message.stack}`}`
    this.#options.log?.warn({ pid: worker.child.pid, uuid: job?.uuid, error: cut(detail, maxDetailLength) },
      'fastify-task-api: uncaught exception in a child process; it is replaced')
    if (job !== undefined) {
      // Only the task's own error goes into its record: a leftover of another task's code
      // must not write its text there.
      worker.ending = ownTask
        ? { error: `uncaught exception in the child process: ${message.message}`, retry: true }
        : { error: 'the child process running the task had an uncaught exception outside this task\'s code (see the server log)', retry: true }
    }
    worker.state = 'stopping'
    signal(worker.child, 'SIGKILL')
  }

  /**
   * A message that does not fit the child's state: a second `ready`, an update or a
   * result for another task or for none, anything after the result. Whatever wrote it
   * (task code calling process.send, say), the child can no longer be trusted: its task
   * fails and it is replaced. `foreign`: the message names another task (a leftover of an
   * earlier task's code), so the running task is its victim and may be retried.
   */
  #violation (worker: Worker, what: string, foreign = false): void {
    this.#options.log?.warn({ pid: worker.child.pid, uuid: worker.job?.uuid, what }, 'fastify-task-api: protocol error from a child process; it is replaced')
    if (worker.job !== undefined) worker.ending = { error: `protocol error from the child process: ${what}`, retry: foreign }
    worker.state = 'stopping'
    signal(worker.child, 'SIGKILL')
  }

  /** Ends a child: SIGTERM to its group, then SIGKILL if it has not exited after a grace period. */
  #stop (worker: Worker): void {
    if (worker.ended) return
    const { child } = worker
    worker.state = 'stopping'
    if (child.exitCode !== null || child.signalCode !== null) return
    signal(child, 'SIGTERM')
    signal(child, 'SIGCONT')
    worker.timers.push(setTimeout(() => signal(child, 'SIGKILL'), killGrace).unref())
  }

  #release (worker: Worker): void {
    if (this.#closing || !this.#workers.has(worker) || worker.state !== 'idle') return
    this.#idle.push(worker)
    this.#dispatch()
  }

  #dispatch (): void {
    while (this.#idle.length > 0 && this.#queue.length > 0 && this.#running < this.#options.concurrency && !this.#closing) {
      const worker = this.#idle.pop() as Worker
      const job = this.#queue.shift() as Job
      const message: ParentMessage = { type: 'run', id: job.uuid, task: job.task, inputs: job.inputs, attempt: job.attempt }
      try {
        worker.child.send(message, (err) => {
          // The channel broke (the child is dying): its exit handler reports the job.
          if (err !== null && err !== undefined && worker.job === job) {
            worker.ending = { error: `the task could not be sent to the child process: ${err.message}`, retry: true }
            this.#stop(worker)
          }
        })
      } catch (err) {
        // The job cannot be serialized (inputs nested too deep for JSON, say): nothing
        // was written, so this job fails alone and the child stays ready.
        this.#idle.push(worker)
        this.#events?.finished(job.uuid, { ok: false, error: 'the task\'s inputs cannot be sent to a child process', detail: (err as Error).message, retry: false })
        continue
      }
      worker.state = 'busy'
      worker.job = job
      worker.acked = false
      this.#running++
      const ackTimeout = this.#options.ackTimeout ?? 5000
      worker.ackTimer = setTimeout(() => {
        if (worker.job !== job || worker.acked) return
        worker.ending = { error: `the child process did not acknowledge the task within ${ackTimeout} ms`, retry: true }
        this.#options.log?.warn({ pid: worker.child.pid, uuid: job.uuid, ackTimeout }, 'fastify-task-api: a child process did not acknowledge its task; it is replaced')
        worker.state = 'stopping'
        signal(worker.child, 'SIGKILL')
      }, ackTimeout).unref()
    }
  }
}

/** The error a child printed as it died (Node prints the error's first line, then its stack), for the cause. */
function lastError (stderr: string): string {
  const lines = stderr.split('\n').map(line => line.trim()).filter(line => line !== '')
  const error = lines.findLast(line => /^[A-Za-z]*Error\b.*: /.test(line))
  const shown = error ?? lines.at(-1)
  return shown === undefined ? '' : `: ${shown}`
}

function clearTimers (worker: Worker): void {
  for (const timer of worker.timers) clearTimeout(timer)
  worker.timers = []
  clearTimeout(worker.ackTimer)
}

/** Signals a child's whole process group (it leads one), or the child alone if that fails. */
function signal (child: ChildProcess, name: NodeJS.Signals): void {
  if (child.pid === undefined) return
  if (!signalGroup(child.pid, name)) {
    try {
      child.kill(name)
    } catch {}
  }
}

function signalGroup (group: number, name: NodeJS.Signals): boolean {
  try {
    process.kill(-group, name)
    return true
  } catch {
    return false
  }
}

/** Calls `then` once the child's stderr has ended, or after a short grace period. */
function afterStderr (child: ChildProcess, then: () => void): void {
  const stderr = child.stderr
  if (stderr === null || stderr.readableEnded || stderr.destroyed) {
    then()
    return
  }
  let done = false
  const once = (): void => {
    if (done) return
    done = true
    clearTimeout(timer)
    then()
  }
  const timer = setTimeout(once, stderrGrace)
  stderr.once('end', once)
  stderr.once('close', once)
}
