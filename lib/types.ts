import type { ClientTasks, OptionalInputsTask, TaskTypeMap, Types } from './client/types.js'
import type { TaskListener } from './events.js'
import type { SubmitOptions, TaskStats } from './service.js'
import type { ListFilter, TaskState, TaskStatus, TaskSummary } from './store/types.js'

/**
 * A task's state typed from its task: `task` is its name, and `outputs` its outputs:
 * whole once it has succeeded (narrow on `status`), partial (`{}`) before.
 */
export type TypedTaskState<M, N extends keyof M & string> = Omit<TaskState, 'task' | 'status' | 'outputs'> & { task: N } & (
  | { status: 'succeeded', outputs: Types<M[N]>['outputs'] }
  | { status: Exclude<TaskStatus, 'succeeded'>, outputs: Partial<Types<M[N]>['outputs']> }
)

/** What names a task for `get`, `wait` and `cancel`: its uuid, or a state (then the answer is typed by its task). */
export interface TaskRef<N extends string = string> { uuid: string, task: N }

/**
 * What the plugin decorates the instance with, as `app.tasks`. `M` maps task names to
 * their `{ inputs, outputs }` (a `TaskMap`): with it, a wrong task name or input is a
 * compile error and outputs are typed. `app.tasks` gets it from `TaskRegistry` (declare
 * your task modules there); untyped, any name and inputs compile.
 */
export interface TaskApi<M = TaskTypeMap> {
  /** The registered task names. */
  readonly names: ReadonlyArray<keyof M & string>
  /**
   * Validates and converts the inputs, creates the task and queues it. Resolves with
   * its first state (`pending`). Rejects with FST_TASK_API_TASK_UNKNOWN or
   * FST_TASK_API_INPUT_INVALID.
   */
  submit<N extends keyof M & string> (task: N, inputs: Types<M[N]>['inputs'], options?: SubmitOptions): Promise<TypedTaskState<M, N>>
  /** Submits a task that needs no input. */
  submit<N extends OptionalInputsTask<M>> (task: N): Promise<TypedTaskState<M, N>>
  /**
   * The task's current state, or undefined when no task has this uuid. Given a state
   * (`submit`'s answer, say) instead of a uuid, the answer is typed by its task.
   */
  get<N extends keyof M & string> (task: TaskRef<N>): Promise<TypedTaskState<M, N> | undefined>
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
  cancel<N extends keyof M & string> (task: TaskRef<N>): Promise<TypedTaskState<M, N> | undefined>
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
  /**
   * Resolves with the task's final state once it has succeeded, failed or been
   * cancelled. Given a state instead of a uuid, typed by its task: narrow on `status` to
   * read the outputs (`if (done.status === 'succeeded') done.outputs.output`).
   */
  wait<N extends keyof M & string> (task: TaskRef<N>): Promise<TypedTaskState<M, N>>
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

/**
 * Declare the app's task modules here to type `app.tasks` (the same forms as
 * `createClient<T>`: a module namespace, a tuple of definitions, or an array of both):
 *
 * ```ts
 * declare module 'fastify-task-api' {
 *   interface TaskRegistry { tasks: typeof import('./tasks/wait.js') }
 * }
 * ```
 */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface TaskRegistry {}

/** The task map `app.tasks` is typed with: from `TaskRegistry`, else any task. */
export type RegisteredTasks = TaskRegistry extends { tasks: infer T } ? ClientTasks<T> : TaskTypeMap

/**
 * `app.tasks` (or a second registration's decorator) typed with the task modules `T`,
 * without declaring them globally: `const tasks = typedTasks<typeof import('./tasks.js')>(app.tasks)`.
 * Only a view: the same object.
 */
export function typedTasks<T> (api: TaskApi<any>): TaskApi<ClientTasks<T>> {
  return api as TaskApi<ClientTasks<T>>
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The task API: submit, get, subscribe, wait. Added by fastify-task-api. */
    tasks: TaskApi<RegisteredTasks>
  }
}
