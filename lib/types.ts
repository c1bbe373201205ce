import type { TaskListener } from './events.js'
import type { TaskStats } from './service.js'
import type { TaskState } from './store/types.js'

/** What the plugin decorates the instance with, as `app.tasks`. */
export interface TaskApi {
  /** The registered task names. */
  readonly names: readonly string[]
  /**
   * Validates and converts the inputs, creates the task and queues it. Resolves with
   * its first state (`pending`). Rejects with FST_TASK_API_TASK_UNKNOWN or
   * FST_TASK_API_INPUT_INVALID.
   */
  submit (task: string, inputs?: Record<string, unknown>): Promise<TaskState>
  /** The task's current state, or undefined when no task has this uuid. */
  get (uuid: string): Promise<TaskState | undefined>
  /**
   * Calls `listener` with each progress, message and status event from now on; returns
   * the function that stops it. Each event carries the task's seq.
   */
  subscribe (uuid: string, listener: TaskListener): () => void
  /** Resolves with the task's final state once it has succeeded or failed. */
  wait (uuid: string): Promise<TaskState>
  /** How many tasks wait for a worker and how many run. */
  stats (): TaskStats
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The task API: submit, get, subscribe, wait. Added by fastify-task-api. */
    tasks: TaskApi
  }
}
