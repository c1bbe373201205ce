import type { FastifyInstance } from 'fastify'
import fastifyAuth from '@fastify/auth'
import websocket from '@fastify/websocket'
import fp from 'fastify-plugin'
import { Access } from './access.js'
import { loadClientBundle, registerClientBundle } from './client-bundle.js'
import { loadDashboard, registerDashboard } from './dashboard-assets.js'
import { FST_TASK_API_OPT_INVALID } from './errors.js'
import { normalizeOptions, type TaskApiOptions } from './options.js'
import { loadRegistry } from './registry.js'
import { registerRoutes } from './routes.js'
import { toSummary } from './store/types.js'
import { registerStreams, type StreamStats } from './stream.js'
import { createRunner } from './runner/create.js'
import type { TaskBus } from './events.js'
import type { Executor, ExecutorContext } from './executor.js'
import { TaskService, type SubmitOptions } from './service.js'
import type { TaskApi } from './types.js'

/** Servers on which a registration of the plugin registered @fastify/websocket for itself. */
const serversWithOwnWebsocket = new WeakSet<object>()

async function taskApiPlugin (app: FastifyInstance, options: TaskApiOptions): Promise<void> {
  const normalized = normalizeOptions(options as TaskApiOptions & Record<string, unknown>)
  // Before anything starts: a second registration under the same name fails here, saying how.
  if (app.hasDecorator(normalized.decorate)) {
    throw new FST_TASK_API_OPT_INVALID('decorate', `a name not yet decorated on this instance (app.${normalized.decorate} exists: fastify-task-api registered twice? give each registration its own decorate and prefix)`, JSON.stringify(normalized.decorate))
  }
  // Two @fastify/websocket of the plugin's own on one server would both answer each upgrade.
  if (!app.hasDecorator('websocketServer') && serversWithOwnWebsocket.has(app.server)) {
    throw new FST_TASK_API_OPT_INVALID('decorate', 'given to a second registration on a server whose first one registered @fastify/websocket for itself: register @fastify/websocket in the app before both (app.register(websocket, { options: { maxPayload: 4096, allowSynchronousEvents: false } })) so that they share it', JSON.stringify(normalized.decorate))
  }
  const registry = await loadRegistry(normalized.modules)
  const clientBundle = normalized.client ? await loadClientBundle() : undefined
  const dashboard = normalized.dashboard ? await loadDashboard() : undefined
  const log = app.log
  const runner = createRunner(normalized, registry, log)
  // On Redis: records in a RedisStore, events across servers, tasks as BullMQ jobs; this
  // server runs its share in an embedded worker (none with concurrency 0).
  let store = normalized.store
  let bus: TaskBus | undefined
  let executor: ((context: ExecutorContext) => Executor) | undefined
  let startWorker: (() => Promise<{ close: () => Promise<void> }>) | undefined
  const { redis } = normalized
  if (redis !== undefined) {
    const [{ RedisStore }, { RedisBus }, { BullMQExecutor, startQueueWorker }] = await Promise.all([
      import('./redis/store.js'), import('./redis/bus.js'), import('./redis/queue.js'),
    ])
    const shared = { connection: redis.connection, ...(redis.prefix === undefined ? {} : { prefix: redis.prefix }) }
    const redisStore = new RedisStore({ ...shared, exclusive: false })
    const redisBus = new RedisBus({ ...shared, history: { size: normalized.streams.historySize, ttl: normalized.streams.historyTtl } })
    store = redisStore
    bus = redisBus
    executor = context => new BullMQExecutor(context, shared)
    if (normalized.concurrency > 0) {
      startWorker = async () => startQueueWorker({
        registry,
        store: redisStore,
        log,
        execution: normalized.execution,
        limits: normalized.limits,
        now: normalized.clock ?? Date.now,
        publish: event => redisBus.publish(event, err => log.error({ err }, 'fastify-task-api: an event could not be published')),
        followed: () => true,
        runner,
      }, { ...shared, concurrency: normalized.concurrency, ...(redis.lockDuration === undefined ? {} : { lockDuration: redis.lockDuration }), ...(redis.reconcileInterval === undefined ? {} : { reconcileInterval: redis.reconcileInterval }) })
    }
  }
  const service = new TaskService({
    registry,
    store,
    ...(executor === undefined ? { runner } : { executor }),
    ...(bus === undefined ? {} : { bus }),
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
  let worker: { close: () => Promise<void> } | undefined
  app.addHook('onClose', async () => {
    await worker?.close()
    await service.close()
  })
  try {
    await service.start()
    worker = await startWorker?.()
  } catch (err) {
    await worker?.close()
    await service.close()
    throw err
  }

  let streams: StreamStats | undefined
  const names = Object.freeze(service.taskNames)
  // A task is named by its uuid or by a state (typed answers: types.ts).
  const uuidOf = (task: string | { uuid: string }): string => typeof task === 'string' ? task : task?.uuid
  const api: TaskApi = {
    names,
    submit: ((task: string, inputs?: Record<string, unknown>, options?: SubmitOptions) => service.submit(task, inputs, options)) as TaskApi['submit'],
    get: ((task: string | { uuid: string }) => service.get(uuidOf(task))) as TaskApi['get'],
    snapshot: uuid => service.snapshot(uuid),
    subscribe: (uuid, listener) => service.subscribe(uuid, listener),
    wait: ((task: string | { uuid: string }) => service.wait(uuidOf(task))) as TaskApi['wait'],
    cancel: ((task: string | { uuid: string }) => service.cancel(uuidOf(task))) as TaskApi['cancel'],
    delete: uuid => service.delete(uuid),
    list: async (filter = {}) => {
      const { records, next } = await service.list({ ...filter, limit: filter.limit ?? 50 })
      return { tasks: records.map(toSummary), next }
    },
    sweep: () => service.sweep(),
    stats: () => ({ ...service.stats(), streams: streams?.open ?? 0 }),
    streamToken: () => { throw new Error('fastify-task-api is not ready yet') },
  }
  app.decorate(normalized.decorate, api)
  if (normalized.access.auth !== undefined && !app.hasDecorator('auth')) await app.register(fastifyAuth)
  const access = new Access(app, normalized.access)
  api.streamToken = (uuid, ttl) => access.token(uuid, ttl)
  await registerRoutes(app, service, access, normalized.prefix, { list: normalized.list })
  if (clientBundle !== undefined) registerClientBundle(app, normalized.prefix, clientBundle)
  if (dashboard !== undefined) registerDashboard(app, normalized.prefix, dashboard)
  const streamOptions = { ...normalized.streams, progressInterval: normalized.progressInterval }
  if (app.hasDecorator('websocketServer')) {
    // The app registered @fastify/websocket itself: use it.
    streams = registerStreams(app, service, access, normalized.prefix, streamOptions)
  } else {
    // Registered in a context of its own, so that its onRequest and onResponse hooks run
    // for the event routes only, not for every route of the app.
    serversWithOwnWebsocket.add(app.server)
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
