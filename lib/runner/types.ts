import type { ProgressUpdate } from '../protocol.js'

/** One task handed to a runner. */
export interface Job {
  uuid: string
  task: string
  inputs: Record<string, unknown>
  /** Which run this is: 1, then 2 on the first retry, and so on. */
  attempt: number
}

/** How a run ended, as the runner saw it. Outputs are validated later, by the service. */
export type JobResult =
  | { ok: true, value: unknown }
  /**
   * `retry: false`: the task must not be retried after this failure, whatever its `retries`.
   * `error` goes into the record; `stack` and `detail` only into the server log.
   */
  | {
    ok: false, error: string, stack?: string, detail?: string, retry?: boolean,
    /** The runner stopped the task's process after an abort's grace: it did not end on its signal. */
    forced?: boolean
  }

/** What a runner reports back, in order, for each job. */
export interface RunnerEvents {
  /** A worker took the job and `run()` is starting. */
  started (uuid: string): void
  /** Coalesced progress, target and messages. */
  update (uuid: string, update: ProgressUpdate): void
  /**
   * The job ended; called exactly once per job taken out of the queue (a job that
   * could not be handed to a worker ends without `started`).
   */
  finished (uuid: string, result: JobResult): void
}

/** Runs jobs somewhere: child processes, this process, or (later) another machine. */
export interface Runner {
  /** Starts the workers; resolves when they are ready to take jobs. */
  start (events: RunnerEvents): Promise<void>
  /** Queues a job (FIFO). */
  enqueue (job: Job): void
  /** Jobs waiting for a worker. */
  readonly queued: number
  /** Jobs being run. */
  readonly running: number
  /**
   * Set while no job can run at all (no worker is up and the last ones failed to
   * start): why, for the log. Submissions are refused (503) meanwhile.
   */
  readonly unavailable: string | undefined
  /**
   * Asks a running job to stop: its signal is aborted, and if it has not ended after
   * `grace` ms its worker is stopped for real; its `finished` event follows. Queued
   * jobs are taken back with `dequeue` instead.
   */
  abort (uuid: string, grace: number): void
  /** Takes a job out of the queue if it is still there; true when it was. */
  dequeue (uuid: string): boolean
  /** Stops every worker. Jobs still queued are returned, so the caller can settle them. */
  close (): Promise<Job[]>
}
