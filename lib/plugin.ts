import type { FastifyInstance } from 'fastify'
import fastifyAuth from '@fastify/auth'
import websocket from '@fastify/websocket'
import fp from 'fastify-plugin'
import { Access } from './access.js'
import { loadClientBundle, registerClientBundle } from './client-bundle.js'
import { normalizeOptions, type TaskApiOptions } from './options.js'
import { loadRegistry } from './registry.js'
import { registerRoutes, toSummary } from './routes.js'
import { registerStreams, type StreamStats } from './stream.js'
import { InlineRunner } from './runner/inline.js'
import { ProcessPool } from './runner/pool.js'
import type { Runner } from './runner/types.js'
import { TaskService } from './service.js'
import type { LoadedTask } from './task.js'
import type { TaskApi } from './types.js'

async function taskApiPlugin (app: FastifyInstance, options: TaskApiOptions): Promise<void> {
  const normalized = normalizeOptions(options as TaskApiOptions & Record<string, unknown>)
  const registry = await loadRegistry(normalized.modules)
  const clientBundle = normalized.client ? await loadClientBundle() : undefined
  const log = app.log
  let runner: Runner
  if (normalized.runner === 'inline') {
    const tasks = new Map<string, LoadedTask>([...registry.values()].map(entry => [entry.name, entry.task]))
    runner = new InlineRunner({ tasks, concurrency: normalized.concurrency, progressInterval: normalized.progressInterval, limits: normalized.limits })
  } else {
    runner = new ProcessPool({
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
  const service = new TaskService({
    registry,
    store: normalized.store,
    runner,
    log,
    history: { size: normalized.streams.historySize, ttl: normalized.streams.historyTtl },
    execution: normalized.execution,
    limits: normalized.limits,
    inputLimits: normalized.inputLimits,
    retention: normalized.retention,
    now: normalized.clock,
  })
  // preClose: refuse submissions while in-flight requests finish; onClose: drain the tasks.
  // Added before the children start, so that a close while they are starting (Fastify's
  // pluginTimeout passed, say) still ends them.
  app.addHook('preClose', async () => service.stopAccepting())
  app.addHook('onClose', async () => service.close())
  try {
    await service.start()
  } catch (err) {
    await service.close()
    throw err
  }

  let streams: StreamStats | undefined
  const names = Object.freeze(service.taskNames)
  const api: TaskApi = {
    names,
    submit: (task, inputs, options) => service.submit(task, inputs, options),
    get: uuid => service.get(uuid),
    snapshot: uuid => service.snapshot(uuid),
    subscribe: (uuid, listener) => service.subscribe(uuid, listener),
    wait: uuid => service.wait(uuid),
    cancel: uuid => service.cancel(uuid),
    delete: uuid => service.delete(uuid),
    list: async (filter = {}) => {
      const { records, next } = await service.list({ ...filter, limit: filter.limit ?? 50 })
      return { tasks: records.map(toSummary), next }
    },
    sweep: () => service.sweep(),
    stats: () => ({ ...service.stats(), streams: streams?.open ?? 0 }),
    streamToken: () => { throw new Error('fastify-task-api is not ready yet') },
  }
  app.decorate('tasks', api)
  if (normalized.access.auth !== undefined && !app.hasDecorator('auth')) await app.register(fastifyAuth)
  const access = new Access(app, normalized.access)
  api.streamToken = (uuid, ttl) => access.token(uuid, ttl)
  await registerRoutes(app, service, access, normalized.prefix, { list: normalized.list })
  if (clientBundle !== undefined) registerClientBundle(app, normalized.prefix, clientBundle)
  const streamOptions = { ...normalized.streams, progressInterval: normalized.progressInterval }
  if (app.hasDecorator('websocketServer')) {
    // The app registered @fastify/websocket itself: use it.
    streams = registerStreams(app, service, access, normalized.prefix, streamOptions)
  } else {
    // Registered in a context of its own, so that its onRequest and onResponse hooks run
    // for the event routes only, not for every route of the app.
    await app.register(async (context) => {
      await context.register(websocket, {
        // One client frame per turn of the event loop and socket: a client flooding tiny
        // frames cannot hold the event loop (ws would otherwise emit every frame it has
        // read, up to megabytes of them, in one go).
        options: { maxPayload: normalized.streams.maxPayload, allowSynchronousEvents: false },
        // A client's garbage (bad frames, oversized payloads) is the client's problem: log it quietly.
        errorHandler: (err, socket, request) => {
          request.log.info({ err }, 'fastify-task-api: websocket error')
          socket.terminate()
        },
      })
      streams = registerStreams(context, service, access, normalized.prefix, streamOptions)
    })
  }
}

/**
 * The plugin. Register it with the task modules to serve:
 * `await app.register(taskApi, { tasks: [new URL('./tasks/wait.js', import.meta.url)] })`.
 */
export const taskApi = fp(taskApiPlugin, { fastify: '5.x', name: 'fastify-task-api' })
