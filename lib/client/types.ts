// Types only: this file compiles to nothing, so the browser bundle never pulls in
// TypeBox or anything from the server side.
import type { TProperties } from '@sinclair/typebox'
import type { TaskInputs, TaskOutputs } from '../task.js'
import type { TaskEvent } from '../events.js'
import type { TaskState, TaskStatus, TaskSummary } from '../store/types.js'

export type { TaskEvent, TaskState, TaskStatus, TaskSummary }
export type { ProgressEvent, MessageEvent, StatusEvent } from '../events.js'

/** The first frame of a stream: the task's state and the seq of the last event it reflects. */
export interface SnapshotFrame {
  type: 'snapshot'
  /** The task's uuid, as on every frame (also `task.uuid`). */
  uuid: string
  seq: number
  task: TaskState
}

/** A task as `GET {prefix}/catalog` lists it. */
export interface CatalogEntry {
  name: string
  /** The task's `description`, or null. */
  description: string | null
  /** JSON Schema of its `inputs`: `{ type: 'object', properties, required }`. */
  inputs: Record<string, unknown>
  /** JSON Schema of a succeeded task's `outputs`. */
  outputs: Record<string, unknown>
  /** Milliseconds a run may take; null for no limit. */
  timeout: number | null
  /** How many more runs after a failed one. */
  retries: number
}

/** Any frame of a task's event stream. */
export type Frame = SnapshotFrame | TaskEvent

/** What the client knows about one task: the types of its inputs and of its outputs. */
export interface TaskTypes {
  inputs: Record<string, unknown>
  outputs: Record<string, unknown>
}

/** An entry of a task map, as `TaskTypes`. */
export type Types<E> = E extends TaskTypes ? E : TaskTypes

/** Task name -> its types. What an untyped client (`createClient()`) uses. */
export type TaskTypeMap = Record<string, TaskTypes>

/** What the client reads of a `defineTask` result (a `TaskDefinition`). */
interface AnyDefinition {
  readonly name: string
  readonly inputs: TProperties
  readonly outputs: TProperties
  run (...args: never[]): unknown
}

/** What the client reads of a `Task` subclass's instances: a literal `name` (`name = 'x' as const`). */
interface AnyTaskInstance {
  name: string
  inputs: TProperties
  outputs: TProperties
}

/** A `Task` subclass as a definition, when its name is a literal; never otherwise. */
type ClassDefinition<C> = C extends abstract new () => infer I
  ? I extends AnyTaskInstance ? (string extends I['name'] ? never : I) : never
  : never

type DefinitionsIn<T> = T extends AnyDefinition
  ? T
  : T extends abstract new () => unknown
    ? ClassDefinition<T>
    : T extends object ? Extract<T[keyof T], AnyDefinition> | ClassDefinition<T[keyof T]> : never

/** The task definitions held by `T`: an array or tuple of definitions and modules, or one module. */
export type DefinitionsOf<T> = T extends readonly unknown[] ? DefinitionsIn<T[number]> : DefinitionsIn<T>

/**
 * Task name -> `{ inputs, outputs }`, from the server's task definitions. `T` is an array
 * or tuple of `defineTask` results (`[typeof wait, typeof resize]`), a module namespace
 * (`typeof import('./tasks/wait.js')`), or an array mixing both. Inputs wrapped in
 * `Type.Optional` are optional. `Task` subclasses count when their name is a literal
 * (`name = 'resize' as const`); other exports are ignored.
 */
export type TaskMap<T> = {
  [D in DefinitionsOf<T> as D['name']]: { inputs: TaskInputs<D['inputs']>, outputs: TaskOutputs<D['outputs']> }
}

/** The map a client with type argument `T` uses: `TaskMap<T>`, or any task when `T` is not given. */
export type ClientTasks<T> = unknown extends T ? TaskTypeMap : TaskMap<T>

/** Callbacks for the updates of one task. Each receives the client's current view of the record. */
export interface UpdateHandlers {
  /** Any change: a snapshot, progress, a message or a status. */
  onUpdate? (task: TaskState): void
  /** Progress or target changed. */
  onProgress? (progress: number | null, target: number | null, task: TaskState): void
  /** A message was added; each message once, in order. */
  onMessage? (message: string, task: TaskState): void
  /** The status changed (`running`, then a final one; `pending` again before a retry). */
  onStatus? (status: TaskStatus, task: TaskState): void
}

/** Callbacks of `client.subscribe`. */
export interface SubscribeHandlers extends UpdateHandlers {
  /** Each frame received, after deduplication: seq only grows. Polling makes no frames. */
  onEvent? (frame: Frame): void
  /** The task ended (succeeded, failed or cancelled); nothing follows. */
  onEnd? (task: TaskState): void
  /** Following failed for good (an unknown task, an HTTP error while polling); nothing follows. */
  onError? (error: Error): void
}

/** Options of `client.run`. */
export interface RunOptions extends UpdateHandlers {
  /** Aborting it cancels the task (POST /tasks/:uuid/cancel); `run` then rejects once the task ends. */
  signal?: AbortSignal
}

/** django-task-api's progress callback: the whole record at each update. */
export type ProgressCallback = (task: TaskState) => void

/** The names of the tasks in `M` that need no input. */
export type OptionalInputsTask<M> = { [K in keyof M]: {} extends Types<M[K]>['inputs'] ? K : never }[keyof M] & string

/** A WebSocket constructor: the browser's, or `WebSocket` from the `ws` package in Node. */
export type WebSocketConstructor = new (url: string, protocols?: undefined, options?: { headers: Record<string, string> }) => { close (): void }

/** An EventSource constructor: the browser's, or a WHATWG-compatible one in Node. */
export type EventSourceConstructor = new (url: string) => { close (): void }

/** A way to follow a task, in the order the client tries them. */
export type Transport = 'websocket' | 'sse' | 'poll'

/** Options of `createClient`. */
export interface ClientOptions {
  /**
   * Where the task API lives. Relative URLs resolve against the page; outside a browser
   * it must be absolute (`http://127.0.0.1:3000/tasks`).
   * @default '/tasks'
   */
  baseURL?: string
  /**
   * Extra headers for every HTTP request (a CSRF token, an Authorization header), or a
   * function returning them, called per request. Browsers cannot send headers on a
   * WebSocket or an EventSource: use a cookie session or `streamToken` for those.
   */
  headers?: Record<string, string> | (() => Record<string, string>)
  /**
   * Fetches a stream token (`GET /tasks/:uuid/token`, with `headers`) before each stream
   * connection, for servers that authenticate with a header.
   * @default false
   */
  streamToken?: boolean
  /** @default globalThis.fetch */
  fetch?: typeof fetch
  /** @default globalThis.WebSocket (Node 20 has none: pass `WebSocket` from `ws`) */
  WebSocket?: WebSocketConstructor
  /** @default globalThis.EventSource */
  EventSource?: EventSourceConstructor
  /**
   * How to follow tasks, tried in this order; one without its constructor is skipped.
   * @default ['websocket', 'sse', 'poll']
   */
  transports?: Transport[]
  /**
   * Milliseconds between two `GET /tasks/:uuid` while polling.
   * @default 1000
   */
  pollInterval?: number
  /**
   * Milliseconds before reconnecting a stream that dropped.
   * @default 500
   */
  retryDelay?: number
}

/** What `client.list` asks for: the query of `GET /tasks`. */
export interface ListQuery<N extends string = string> {
  status?: TaskStatus
  task?: N
  /** 1 to 100. @default 20 */
  limit?: number
  /** The `next` of the previous page. */
  cursor?: string
}

/** A page of `GET /tasks`: summaries, newest first, and the cursor of the next page (null on the last). */
export interface TaskPage {
  tasks: TaskSummary[]
  next: string | null
}

/** The client, typed by its task map `M`. */
export interface Client<M = TaskTypeMap> {
  /** Submits a task (POST /tasks); resolves with its first record. */
  submit<N extends keyof M & string> (task: N, inputs: Types<M[N]>['inputs']): Promise<TaskState>
  /** Submits a task that needs no input. */
  submit<N extends OptionalInputsTask<M>> (task: N): Promise<TaskState>
  /** The task's record (GET /tasks/:uuid). */
  get (uuid: string): Promise<TaskState>
  /** Cancels the task (POST /tasks/:uuid/cancel); resolves with the record as it stands after the request. */
  cancel (uuid: string): Promise<TaskState>
  /**
   * A page of the caller's tasks, newest first (GET /tasks). The server answers 404 when
   * listing is off (neither `owner` nor `auth`, and no `list: true`).
   */
  list (query?: ListQuery<keyof M & string>): Promise<TaskPage>
  /**
   * Removes a finished task's record (DELETE /tasks/:uuid). Rejects with a `TaskApiError`
   * 409 (`FST_TASK_API_TASK_LIVE`) while the task is pending or running: cancel it first.
   */
  delete (uuid: string): Promise<void>
  /**
   * The tasks the caller may run (GET /tasks/catalog): name, description, the JSON
   * Schemas of their inputs and outputs, timeout and retries; what a form is built from.
   */
  catalog (): Promise<CatalogEntry[]>
  /**
   * Follows a task: over a WebSocket, reconnecting with resume; else SSE; else polling.
   * Returns the function that stops following.
   */
  subscribe (uuid: string, handlers: SubscribeHandlers): () => void
  /**
   * Submits a task and follows it to its end. Resolves with its outputs; rejects with a
   * `TaskRunError` (carrying the record as `.task`) when it fails or is cancelled, or a
   * `TaskApiError` when the server refuses it. Also takes django-task-api's
   * `(task, inputs, progressCallback, callback, errback)`.
   */
  run<N extends keyof M & string> (
    task: N,
    inputs: Types<M[N]>['inputs'],
    options?: RunOptions | ProgressCallback | null,
    callback?: ((task: TaskState) => void) | null,
    errback?: ((error: Error) => void) | null,
  ): Promise<Types<M[N]>['outputs']>
  /** Runs a task that needs no input. */
  run<N extends OptionalInputsTask<M>> (task: N): Promise<Types<M[N]>['outputs']>
}
