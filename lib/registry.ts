import { isAbsolute } from 'node:path'
import { pathToFileURL } from 'node:url'
import { compileParameters, type CompiledSchema } from './params.js'
import { describe, tasksOfModule, type LoadedTask } from './task.js'
import { FST_TASK_API_OPT_INVALID, FST_TASK_API_TASK_DUPLICATE, FST_TASK_API_TASK_MODULE, FST_TASK_API_TASK_SCHEMA } from './errors.js'

/** A registered task: where it came from and its compiled schemas. */
export interface RegisteredTask {
  name: string
  /** The module's file: URL. */
  module: string
  task: LoadedTask
  inputs: CompiledSchema
  outputs: CompiledSchema
  /** Output names, in declaration order. */
  outputNames: string[]
}

/** Module locations accepted by the `tasks` option. */
export type TaskModuleLocation = URL | string

/** Normalizes a module location to a file: URL string, or throws naming the bad value. */
export function moduleUrl (location: unknown, index: number): string {
  if (location instanceof URL) {
    if (location.protocol !== 'file:') throw new FST_TASK_API_OPT_INVALID(`tasks[${index}]`, 'a file: URL or an absolute path', location.href)
    return location.href
  }
  if (typeof location === 'string') {
    if (location.startsWith('file:')) return new URL(location).href
    if (isAbsolute(location)) return pathToFileURL(location).href
  }
  throw new FST_TASK_API_OPT_INVALID(`tasks[${index}]`, 'a file: URL or an absolute path', describe(location))
}

/** Imports every module, collects their tasks, compiles their schemas. */
export async function loadRegistry (modules: string[]): Promise<Map<string, RegisteredTask>> {
  const registry = new Map<string, RegisteredTask>()
  for (const module of modules) {
    let namespace: Record<string, unknown>
    try {
      namespace = await import(module)
    } catch (err) {
      const error = new FST_TASK_API_TASK_MODULE(module, `cannot be imported: ${(err as Error).message}`)
      error.cause = err
      throw error
    }
    let tasks: LoadedTask[]
    try {
      tasks = tasksOfModule(namespace)
    } catch (err) {
      throw new FST_TASK_API_TASK_MODULE(module, (err as Error).message)
    }
    if (tasks.length === 0) {
      throw new FST_TASK_API_TASK_MODULE(module, 'exports no task (export default defineTask({...}) or a Task subclass)')
    }
    for (const task of tasks) {
      const existing = registry.get(task.name)
      if (existing !== undefined) throw new FST_TASK_API_TASK_DUPLICATE(task.name, existing.module, module)
      registry.set(task.name, {
        name: task.name,
        module,
        task,
        inputs: compile(task, 'inputs', true),
        outputs: compile(task, 'outputs', false),
        outputNames: Object.keys(task.outputs),
      })
    }
  }
  return registry
}

function compile (task: LoadedTask, part: 'inputs' | 'outputs', convert: boolean): CompiledSchema {
  try {
    return compileParameters(task[part], part, convert)
  } catch (err) {
    throw new FST_TASK_API_TASK_SCHEMA(task.name, part.slice(0, -1), (err as Error).message)
  }
}
