import type { NormalizedOptions } from '../options.js'
import type { RegisteredTask } from '../registry.js'
import type { LoadedTask } from '../task.js'
import { InlineRunner } from './inline.js'
import { ProcessPool, type ProcessPoolOptions } from './pool.js'
import type { Runner } from './types.js'

/** The runner the options ask for: the child-process pool, or inline. */
export function createRunner (normalized: NormalizedOptions, registry: Map<string, RegisteredTask>, log: ProcessPoolOptions['log']): Runner {
  if (normalized.runner === 'inline') {
    const tasks = new Map<string, LoadedTask>([...registry.values()].map(entry => [entry.name, entry.task]))
    return new InlineRunner({ tasks, concurrency: normalized.concurrency, progressInterval: normalized.progressInterval, limits: normalized.limits })
  }
  return new ProcessPool({
    modules: normalized.modules,
    concurrency: normalized.concurrency,
    progressInterval: normalized.progressInterval,
    limits: normalized.limits,
    execArgv: normalized.execArgv,
    env: normalized.env,
    maxTasksPerChild: normalized.maxTasksPerChild,
    maxOldGenerationSizeMb: normalized.maxOldGenerationSizeMb,
    ackTimeout: normalized.ackTimeout,
    childPerTask: normalized.childPerTask,
    log,
  })
}
