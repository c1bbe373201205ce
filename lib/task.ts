import type { Static, TObject, TProperties } from '@sinclair/typebox'

/*
 * What a task module exports, in its two forms, and the context `run()` reports
 * through. This file is loaded inside the child processes: it must never import
 * fastify, only types.
 */

/** Brand that marks task definitions and Task subclasses, shared across copies of this package. */
export const kTask: unique symbol = Symbol.for('fastify-task-api.task') as never
const kContext: unique symbol = Symbol.for('fastify-task-api.context') as never
const kTaskError: unique symbol = Symbol.for('fastify-task-api.task-error') as never

/**
 * An error a task throws to fail on purpose. `{ retry: false }` fails the task at once,
 * whatever its `retries`: for failures another attempt cannot fix (bad data, a missing
 * record). Any other thrown value counts as retryable.
 *
 * ```ts
 * if (!found) throw new TaskError(`no invoice ${id}`, { retry: false })
 * ```
 */
export class TaskError extends Error {
  /** False when the task must not be retried after this error. */
  readonly retry: boolean
  declare readonly [kTaskError]: true

  constructor (message: string, options: { retry?: boolean, cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'TaskError'
    this.retry = options.retry !== false
    Object.defineProperty(this, kTaskError, { value: true })
  }

  /** True for a TaskError from any copy of this package. */
  static override [Symbol.hasInstance] (value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Partial<TaskError>)[kTaskError] === true
  }
}

/**
 * What a thrown value says, for a failed task's record: its message and stack, and
 * `retry: false` for a TaskError that forbids retries. Used by both runners.
 */
export function thrown (err: unknown): { message: string, stack?: string, retry?: boolean } {
  if (err instanceof TaskError && !err.retry) return { message: err.message || err.name, stack: err.stack, retry: false }
  if (err instanceof Error) return { message: err.message || err.name, stack: err.stack }
  return { message: `a non-Error value was thrown: ${String(err)}` }
}

/**
 * How long to wait before a retry: a number of milliseconds (fixed), or a fixed or
 * exponential schedule. Exponential waits `delay`, then twice that, four times, and so
 * on, each at most `maxDelay`.
 */
export type Backoff = number | { type: 'fixed' | 'exponential', delay: number, maxDelay?: number }

/** Milliseconds to wait before the attempt that follows failed attempt `attempt` (1-based). */
export function backoffDelay (backoff: Backoff, attempt: number): number {
  if (typeof backoff === 'number') return backoff
  if (backoff.type === 'fixed') return backoff.delay
  const delay = backoff.delay * 2 ** (attempt - 1)
  return Math.min(delay, backoff.maxDelay ?? Number.MAX_SAFE_INTEGER)
}

/** What `run()` receives as its second argument (and what a `Task` subclass reaches through `this`). */
export interface TaskContext {
  /** The task's uuid. */
  readonly uuid: string
  /** Which run this is: 1 for the first, 2 for the first retry, and so on. */
  readonly attempt: number
  /** Aborted when the task is cancelled or times out. */
  readonly signal: AbortSignal
  /** Sets the target that progress counts towards: a finite number greater than 0. */
  setTarget (target: number): void
  /** Sets the progress: a finite number of 0 or more. Cheap enough to call in a tight loop. */
  setProgress (progress: number): void
  /** Adds `by` (default 1) to the progress; starts from 0 while progress is still null. */
  incProgress (by?: number): void
  /** Appends a message to the task's messages. */
  addMessage (message: string): void
}

type IsUnion<T, U = T> = T extends unknown ? ([U] extends [T] ? false : true) : never

/** The inputs `run()` receives: the static type of the declared input schemas. */
export type TaskInputs<I extends TProperties> = Static<TObject<I>>

/**
 * What `run()` returns: nothing in particular when no output is declared, the value of
 * the one output when one is declared, an object keyed by output name when several are.
 */
export type TaskResult<O extends TProperties> =
  [keyof O] extends [never] ? unknown
    : true extends IsUnion<keyof O> ? Static<TObject<O>>
      : Static<O[keyof O]>

/** The stored outputs of a succeeded task. */
export type TaskOutputs<O extends TProperties> = Static<TObject<O>>

/** The options accepted by `defineTask`. */
export interface TaskOptions<I extends TProperties, O extends TProperties, N extends string = string> {
  /** The name clients submit the task by. Unique among the registered tasks. */
  name: N
  /** What the task does, for people: shown by `GET {prefix}/catalog` (and UIs built on it). */
  description?: string
  /** The input schemas, keyed by input name. Inputs are required unless wrapped in `Type.Optional`. */
  inputs?: I
  /** The output schemas, keyed by output name. */
  outputs?: O
  /**
   * Milliseconds a run may take; past it the task's signal is aborted, then its process
   * is stopped, and it ends `failed` with `timed out after N ms`. Overrides the plugin's
   * `timeout` option.
   */
  timeout?: number
  /**
   * How many more times a failed run is tried (0, the default: none). A thrown error, a
   * crash of its process (out of memory included) and a timeout are retried; a cancel,
   * invalid outputs and `new TaskError(message, { retry: false })` are not.
   */
  retries?: number
  /** The wait before each retry. @default { type: 'exponential', delay: 1000 } */
  backoff?: Backoff
  /** The task's code. Sync or async. */
  run (inputs: TaskInputs<I>, task: TaskContext): TaskResult<O> | Promise<TaskResult<O>>
}

/** A task created by `defineTask`. */
export interface TaskDefinition<I extends TProperties = TProperties, O extends TProperties = TProperties, N extends string = string> {
  readonly [kTask]: 'definition'
  readonly name: N
  readonly description: string | undefined
  readonly inputs: I
  readonly outputs: O
  readonly timeout: number | undefined
  readonly retries: number | undefined
  readonly backoff: Backoff | undefined
  run (inputs: TaskInputs<I>, task: TaskContext): TaskResult<O> | Promise<TaskResult<O>>
}

/**
 * Defines a task; the recommended form, since the input and output types flow into `run()`.
 *
 * ```ts
 * export default defineTask({
 *   name: 'my-task',
 *   inputs: { name: Type.String(), count: Type.Optional(Type.Integer()) },
 *   outputs: { output: Type.String() },
 *   async run ({ name, count = 5 }, task) { task.setTarget(count); return `Hello ${name}` },
 * })
 * ```
 */
export function defineTask<const I extends TProperties = {}, const O extends TProperties = {}, const N extends string = string> (
  options: TaskOptions<I, O, N>
): TaskDefinition<I, O, N> {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`defineTask expects an options object, got ${describe(options)}`)
  }
  return Object.freeze({
    [kTask]: 'definition' as const,
    name: options.name,
    description: options.description,
    inputs: options.inputs ?? ({} as I),
    outputs: options.outputs ?? ({} as O),
    timeout: options.timeout,
    retries: options.retries,
    backoff: options.backoff,
    run: options.run,
  })
}

/**
 * Base class for the seed's style of task (django-task-api's `Task`):
 *
 * ```ts
 * export default class MyTask extends Task {
 *   name = 'my-task'
 *   inputs = { name: Type.String() }
 *   outputs = { output: Type.String() }
 *   run ({ name }: { name: string }) { this.setTarget(1); return `Hello ${name}` }
 * }
 * ```
 * A new instance runs each task, so instance fields are per run.
 */
export abstract class Task {
  static readonly [kTask] = 'class'
  /** The name clients submit the task by. */
  abstract name: string
  /** What the task does, for people; see {@link TaskOptions.description}. */
  description: string | undefined = undefined
  /** The input schemas, keyed by input name. */
  inputs: TProperties = {}
  /** The output schemas, keyed by output name. */
  outputs: TProperties = {}
  /** Milliseconds a run may take; see {@link TaskOptions.timeout}. */
  timeout: number | undefined = undefined
  /** How many more times a failed run is tried; see {@link TaskOptions.retries}. */
  retries: number | undefined = undefined
  /** The wait before each retry; see {@link TaskOptions.backoff}. */
  backoff: Backoff | undefined = undefined
  declare [kContext]?: TaskContext

  /** The task's code; receives the converted inputs. */
  abstract run (inputs: any, task: TaskContext): unknown

  #context (): TaskContext {
    const context = this[kContext]
    if (context === undefined) throw new Error('this task is not running: progress can only be reported from run()')
    return context
  }

  /** The running task's uuid. */
  get uuid (): string { return this.#context().uuid }
  /** Which run this is; see {@link TaskContext.attempt}. */
  get attempt (): number { return this.#context().attempt }
  /** Aborted when the task is cancelled or times out. */
  get signal (): AbortSignal { return this.#context().signal }
  /** See {@link TaskContext.setTarget}. */
  setTarget (target: number): void { this.#context().setTarget(target) }
  /** See {@link TaskContext.setProgress}. */
  setProgress (progress: number): void { this.#context().setProgress(progress) }
  /** See {@link TaskContext.incProgress}. */
  incProgress (by?: number): void { this.#context().incProgress(by) }
  /** See {@link TaskContext.addMessage}. */
  addMessage (message: string): void { this.#context().addMessage(message) }
}

type TaskClass = (abstract new () => Task) & { [kTask]: 'class' }

/** A task as the runners use it, whichever form it was written in. */
export interface LoadedTask {
  name: string
  description: string | undefined
  inputs: TProperties
  outputs: TProperties
  timeout: number | undefined
  /** Retries after a failed run: 0 for none. */
  retries: number
  backoff: Backoff
  /** Runs the task once with converted inputs. */
  invoke (inputs: Record<string, unknown>, context: TaskContext): unknown
}

/** True for the value of a `defineTask` call or a `Task` subclass. */
export function isTask (value: unknown): boolean {
  if (typeof value === 'function') return (value as Partial<TaskClass>)[kTask] === 'class' && value.prototype instanceof Object
  return typeof value === 'object' && value !== null && (value as Partial<TaskDefinition>)[kTask] === 'definition'
}

/**
 * Turns one exported task (either form) into a LoadedTask. Throws a plain Error
 * describing what is wrong; the caller adds the module's name.
 */
export function loadTask (exported: unknown, exportName: string): LoadedTask {
  if (typeof exported === 'function') {
    const Ctor = exported as unknown as new () => Task
    let probe: Task
    try {
      probe = new Ctor()
    } catch (err) {
      throw new Error(`export "${exportName}": the Task subclass cannot be constructed without arguments: ${(err as Error).message}`)
    }
    checkShape(probe, exportName)
    return {
      name: probe.name,
      description: probe.description,
      inputs: probe.inputs ?? {},
      outputs: probe.outputs ?? {},
      timeout: probe.timeout,
      retries: probe.retries ?? 0,
      backoff: probe.backoff ?? defaultBackoff,
      invoke (inputs, context) {
        const instance = new Ctor()
        instance[kContext] = context
        return instance.run(inputs, context)
      },
    }
  }
  const definition = exported as TaskDefinition
  checkShape(definition, exportName)
  return {
    name: definition.name,
    description: definition.description,
    inputs: definition.inputs,
    outputs: definition.outputs,
    timeout: definition.timeout,
    retries: definition.retries ?? 0,
    backoff: definition.backoff ?? defaultBackoff,
    invoke: (inputs, context) => definition.run(inputs as never, context),
  }
}

const defaultBackoff: Backoff = { type: 'exponential', delay: 1000 }

const isMs = (value: unknown, min: number): boolean =>
  typeof value === 'number' && Number.isInteger(value) && value >= min && value <= 2 ** 31 - 1

function checkShape (task: { name: unknown, description?: unknown, inputs: unknown, outputs: unknown, run: unknown, timeout?: unknown, retries?: unknown, backoff?: unknown }, exportName: string): void {
  if (task.description !== undefined && typeof task.description !== 'string') {
    throw new Error(`export "${exportName}": description must be a string, got ${describe(task.description)}`)
  }
  if (task.timeout !== undefined && !isMs(task.timeout, 1)) {
    throw new Error(`export "${exportName}": timeout must be a positive number of milliseconds, got ${describe(task.timeout)}`)
  }
  if (task.retries !== undefined && !(isMs(task.retries, 0) && (task.retries as number) <= 1000)) {
    throw new Error(`export "${exportName}": retries must be an integer from 0 to 1000, got ${describe(task.retries)}`)
  }
  if (task.backoff !== undefined && !isBackoff(task.backoff)) {
    throw new Error(`export "${exportName}": backoff must be milliseconds or { type: 'fixed' | 'exponential', delay, maxDelay? }, got ${describe(task.backoff)}`)
  }
  if (typeof task.name !== 'string' || task.name.length === 0) {
    throw new Error(`export "${exportName}": name must be a non-empty string, got ${describe(task.name)}`)
  }
  if (typeof task.run !== 'function') {
    throw new Error(`export "${exportName}" (task "${task.name}"): run must be a function, got ${describe(task.run)}`)
  }
  for (const key of ['inputs', 'outputs'] as const) {
    const schemas = task[key]
    if (schemas === undefined) continue
    if (typeof schemas !== 'object' || schemas === null || Array.isArray(schemas)) {
      throw new Error(`export "${exportName}" (task "${task.name}"): ${key} must be an object of schemas, got ${describe(schemas)}`)
    }
    for (const [field, schema] of Object.entries(schemas)) {
      if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) {
        throw new Error(`export "${exportName}" (task "${task.name}"): ${key}.${field} must be a TypeBox schema, got ${describe(schema)}`)
      }
    }
  }
}

function isBackoff (value: unknown): value is Backoff {
  if (isMs(value, 0)) return true
  if (typeof value !== 'object' || value === null) return false
  const { type, delay, maxDelay } = value as Record<string, unknown>
  return (type === 'fixed' || type === 'exponential') && isMs(delay, 0) && (maxDelay === undefined || isMs(maxDelay, 0))
}

/**
 * Every task a module exports: its default export and its named exports, each once.
 * Exports that are not tasks are ignored.
 */
export function tasksOfModule (namespace: Record<string, unknown>): LoadedTask[] {
  const seen = new Set<unknown>()
  const tasks: LoadedTask[] = []
  for (const [exportName, value] of Object.entries(namespace)) {
    if (!isTask(value) || seen.has(value)) continue
    seen.add(value)
    tasks.push(loadTask(value, exportName))
  }
  return tasks
}

/** A short description of a value for error messages. */
export function describe (value: unknown): string {
  if (value === null) return 'null'
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value)
  if (typeof value === 'object') return Array.isArray(value) ? 'an array' : 'an object'
  return String(value)
}
