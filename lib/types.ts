import type { TaskListener } from './events.js'
import type { SubmitOptions, TaskStats } from './service.js'
import type { ListFilter, TaskState, TaskSummary } from './store/types.js'

/** What the plugin decorates the instance with, as `app.tasks`. */
export interface TaskApi {
  /** The registered task names. */
  readonly names: readonly string[]
  /**
   * Validates and converts the inputs, creates the task and queues it. Resolves with
   * its first state (`pending`). Rejects with FST_TASK_API_TASK_UNKNOWN or
   * FST_TASK_API_INPUT_INVALID.
   */
  submit (task: string, inputs?: Record<string, unknown>, options?: SubmitOptions): Promise<TaskState>
  /** The task's current state, or undefined when no task has this uuid. */
  get (uuid: string): Promise<TaskState | undefined>
  /**
   * Calls `listener` with each progress, message and status event from now on; returns
   * the function that stops it. Each event carries the task's seq.
   */
  subscribe (uuid: string, listener: TaskListener): () => void
  /**
   * The task's state with the seq of the last event it reflects, or undefined. To follow
   * a task without missing anything: subscribe, then take the snapshot, then drop the
   * events whose seq the snapshot covers.
   */
  snapshot (uuid: string): Promise<{ seq: number, task: TaskState } | undefined>
  /**
   * Cancels a task: a pending one at once, a running one through its signal, then its
   * process after `cancelGrace`; it ends `cancelled`. A finished task is left as it is.
   * Resolves with the state after the request, or undefined for an unknown uuid.
   */
  cancel (uuid: string): Promise<TaskState | undefined>
  /**
   * Removes a finished task's record: resolves true, or false for an unknown uuid. Rejects
   * with FST_TASK_API_TASK_LIVE for a task that is pending or running (cancel it first).
   */
  delete (uuid: string): Promise<boolean>
  /**
   * A page of task summaries, newest first: `limit` (default 50), filtered by `owner`,
   * `status`, `task`, after `cursor` (the `next` of the previous page; null on the last).
   * No owner filter unless given: this is the server's own view.
   */
  list (filter?: Partial<ListFilter>): Promise<{ tasks: TaskSummary[], next: string | null }>
  /**
   * Runs the retention sweep now (it also runs by itself periodically): removes finished
   * records older than their `retention`. Resolves with how many it removed.
   */
  sweep (): Promise<number>
  /** Resolves with the task's final state once it has succeeded, failed or been cancelled. */
  wait (uuid: string): Promise<TaskState>
  /**
   * How many tasks wait for a worker and how many run; how many event listeners are
   * subscribed (`app.tasks.subscribe` callbacks, and one per task each stream follows) and
   * how many event streams are open.
   */
  stats (): TaskStats
  /**
   * Mints a short-lived token that lets its holder follow one task
   * (`/tasks/:uuid/events?token=…`), for browsers, which cannot set headers on a
   * WebSocket. Check that the user may read the task before handing it out.
   */
  streamToken (uuid: string, ttl?: number): { token: string, expires: string }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The task API: submit, get, subscribe, wait. Added by fastify-task-api. */
    tasks: TaskApi
  }
}
