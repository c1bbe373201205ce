import { availableParallelism } from 'node:os'
import { FST_TASK_API_OPT_INVALID } from './errors.js'
import { moduleUrl, type TaskModuleLocation } from './registry.js'
import { MemoryStore } from './store/memory.js'
import { finalStatuses, type FinalStatus, type Store } from './store/types.js'
import type { Retention } from './service.js'
import { describe } from './task.js'
import type { AccessOptions } from './access.js'
import { streamDefaults, type NormalizedStreamOptions, type StreamOptions } from './stream.js'

/** Options of `app.register(taskApi, options)`. */
export interface TaskApiOptions extends AccessOptions {
  /**
   * The task modules: `file:` URLs (URL objects or strings) or absolute paths. Each
   * module default-exports one task or exports several as named exports.
   */
  tasks: TaskModuleLocation[]
  /**
   * Where the routes live. fastify-plugin ignores the prefix given to `register`, so
   * the plugin takes its own.
   * @default '/tasks'
   */
  prefix?: string
  /**
   * The name the API is decorated under: `app.tasks` by default. To register the plugin
   * twice on one instance (two sets of tasks, say), register @fastify/websocket in the
   * app before both, give the second its own `decorate` and `prefix`, and reach it as
   * `app.getDecorator<TaskApi>('reports')` (only
   * `app.tasks` is typed on FastifyInstance).
   * @default 'tasks'
   */
  decorate?: string
  /**
   * Serves the browser client at `GET {prefix}/client.js` (an ES module, see
   * `fastify-task-api/client`). False leaves the route out.
   * @default true
   */
  client?: boolean
  /**
   * Serves a live dashboard at `GET {prefix}/dashboard`: a table of tasks, a task's
   * detail, a form to start any task from the catalog, charts. The page holds no data:
   * it reads everything through the API's routes, under their `auth`, `owner` and
   * `authorize`. It needs the list (`list`, on by default with `owner` or `auth`).
   * @default false
   */
  dashboard?: boolean
  /**
   * `'process'` runs tasks in a warm pool of child processes; `'inline'` runs them in
   * the server's own process (for unit tests; a CPU-bound task blocks the server).
   * @default 'process'
   */
  runner?: 'process' | 'inline'
  /**
   * How many tasks run at once: the number of child processes in the pool.
   * @default os.availableParallelism()
   */
  concurrency?: number
  /**
   * Milliseconds between two progress flushes of a running task: setProgress, setTarget
   * and addMessage calls are coalesced to at most one update per interval.
   * @default 50
   */
  progressInterval?: number
  /** Where records live. @default new MemoryStore() */
  store?: Store
  /**
   * Run on Redis and BullMQ (ioredis 5 and bullmq 6, optional peer dependencies): records
   * in a `RedisStore`, submissions as jobs of one queue, events across servers. Every
   * server with the same `connection` and `prefix` serves every task; this one runs
   * `concurrency` of them at once in its own pool (0: an API-only node; workers elsewhere
   * run them, see `startWorker`). Excludes `store`.
   */
  redis?: RedisOptions
  /**
   * Node.js flags for the child processes.
   * @default process.execArgv (a `--import tsx` loader carries over, so TypeScript task modules load)
   */
  execArgv?: string[]
  /**
   * The environment of the child processes.
   * @default process.env
   */
  env?: NodeJS.ProcessEnv
  /** Limits and timings of the WebSocket and SSE event streams. */
  streams?: StreamOptions
  /**
   * Default milliseconds a task may run (a task's own `timeout` wins); past it the task's
   * signal is aborted, then its process stopped, and it ends `failed`. 0: no limit.
   * @default 0
   */
  timeout?: number
  /**
   * Milliseconds between aborting a cancelled or timed-out task's signal and stopping its
   * child process (SIGTERM, then SIGKILL 2 s later).
   * @default 5000
   */
  cancelGrace?: number
  /**
   * Most tasks waiting for a worker; past it, submit answers 429 with Retry-After and
   * creates nothing. 0: no bound.
   * @default 0
   */
  maxQueued?: number
  /**
   * Milliseconds `app.close()` waits for running tasks to finish; then they are
   * cancelled. Queued tasks are cancelled at once.
   * @default 10000
   */
  shutdownTimeout?: number
  /**
   * Messages a task keeps; past it the oldest are dropped (the record counts them in
   * `messagesDropped`).
   * @default 1000
   */
  maxMessages?: number
  /**
   * Characters a message keeps; a longer one is cut and ends with '…'.
   * @default 2000
   */
  maxMessageLength?: number
  /**
   * Bytes a task's result may take as JSON; a bigger one fails the task with a clear
   * error instead of crossing the process boundary.
   * @default 1048576 (1 MiB)
   */
  maxOutputSize?: number
  /**
   * Bytes a submission's inputs may take as JSON (strings counted in UTF-8); past it the
   * submission answers 413 `FST_TASK_API_INPUT_TOO_LARGE` before any conversion or
   * validation. Fastify's own `bodyLimit` (1 MiB by default) bounds the whole body first.
   * @default 262144 (256 KiB)
   */
  maxInputSize?: number
  /**
   * How deep a submission's inputs may nest objects and arrays (the inputs object itself
   * is level 1); deeper answers 400 `FST_TASK_API_INPUT_TOO_DEEP` naming the path. At most
   * 1000: a value nested deeper than that cannot be handed to a child process safely.
   * @default 32
   */
  maxInputDepth?: number
  /**
   * Inputs a task does not declare: `'reject'` answers 400 `FST_TASK_API_INPUT_INVALID`
   * naming them (a typo shows), `'strip'` drops them silently (as earlier versions did).
   * @default 'reject'
   */
  undeclaredInputs?: 'reject' | 'strip'
  /**
   * Serves `GET {prefix}` (a page of task summaries). With `owner` or `auth` set, it is on
   * unless false; without either it is off unless true, since every client could then
   * see every task.
   * @default true with `owner` or `auth`, false otherwise
   */
  list?: boolean
  /**
   * Tasks a child process runs before it is replaced by a fresh one (recycling, for task
   * code that leaks). 0: no limit.
   * @default 0
   */
  maxTasksPerChild?: number
  /**
   * Milliseconds a child process has to acknowledge a task it is handed. A child that
   * does not (its event loop is blocked by a previous task's leftover code, or it was
   * stopped) is replaced, and the task is handed to another child once; the second
   * time it fails. This bounds the hand-over only: a task with no `timeout` may run forever.
   * @default 5000
   */
  ackTimeout?: number
  /**
   * Runs every task in a fresh child process, which exits after it: no state (globals,
   * caches, timers, cwd, environment) passes from one task to the next. For apps that run
   * tasks for many tenants. One spare child is forked ahead, so a task does not wait for
   * a fork when another has just ended, but throughput is bounded by how fast children
   * fork (about 100 ms each per core).
   * @default false
   */
  childPerTask?: boolean
  /**
   * Memory limits of each child process. A child past its heap limit is ended by V8 and
   * its task fails with `the child process ran out of memory (heap limit N MB)`; the
   * server's own memory is untouched.
   */
  resourceLimits?: {
    /** The child's V8 old-space limit, in MB (`--max-old-space-size`). @default Node's own (about a quarter of RAM, up to 4 GB) */
    maxOldGenerationSizeMb?: number
  }
  /**
   * How long finished records are kept before a periodic sweep removes them: one duration
   * for every final status, or one per status; `false` (or a status left out of the
   * object) keeps them forever. A duration is milliseconds or a string such as `'30s'`,
   * `'15m'`, `'12h'`, `'7d'`.
   * @default { succeeded: '7d', cancelled: '7d', failed: '30d' }
   */
  retention?: Duration | false | Partial<Record<'succeeded' | 'failed' | 'cancelled', Duration | false>>
  /**
   * The clock: milliseconds since the epoch. Record times (`created`, `started`,
   * `finished`) and retention read it. For tests; leave it alone otherwise.
   * @default Date.now
   */
  clock?: () => number
}

/** Options of `redis`. */
export interface RedisOptions {
  /** A `redis://` URL or ioredis options. */
  connection: string | Record<string, unknown>
  /** What every key begins with; keep a `{hash tag}` in it (Redis Cluster). @default '{fastify-task-api}' */
  prefix?: string
  /** How long (ms) a task of a worker that died stays `running` before another worker takes it again. @default 30000 */
  lockDuration?: number
  /**
   * How often (ms) the workers look for tasks that have a record but no job (the API
   * node died between writing the record and queuing the job, or a Redis failover lost
   * the job): those older than this are queued again, and a `running` one is then ended
   * as a crash would end it. One worker looks per period. @default 30000
   */
  reconcileInterval?: number
}

/** Milliseconds, or a number with a unit: `'500ms'`, `'30s'`, `'15m'`, `'12h'`, `'7d'`. */
export type Duration = number | `${number}${'ms' | 's' | 'm' | 'h' | 'd'}`

/** Options after checking, with every default filled in. */
export interface NormalizedOptions {
  modules: string[]
  prefix: string
  decorate: string
  client: boolean
  dashboard: boolean
  runner: 'process' | 'inline'
  concurrency: number
  progressInterval: number
  store: Store
  redis: RedisOptions | undefined
  execArgv: string[] | undefined
  env: NodeJS.ProcessEnv | undefined
  streams: NormalizedStreamOptions
  access: AccessOptions
  execution: { timeout: number, cancelGrace: number, maxQueued: number, shutdownTimeout: number }
  limits: { maxMessages: number, maxMessageLength: number, maxOutputSize: number }
  maxTasksPerChild: number
  maxOldGenerationSizeMb: number | undefined
  ackTimeout: number
  childPerTask: boolean
  inputLimits: { maxInputSize: number, maxInputDepth: number, undeclaredInputs: 'reject' | 'strip' }
  list: boolean
  retention: Retention
  clock: () => number
}

const known = new Set(['tasks', 'prefix', 'decorate', 'client', 'dashboard', 'runner', 'concurrency', 'progressInterval', 'store', 'redis', 'execArgv', 'env', 'streams',
  'auth', 'authRelation', 'authorize', 'owner', 'allowedOrigins', 'streamTokens', 'timeout', 'cancelGrace', 'maxQueued', 'shutdownTimeout', 'maxMessages', 'maxMessageLength',
  'maxOutputSize', 'maxTasksPerChild', 'resourceLimits', 'ackTimeout', 'childPerTask', 'maxInputSize', 'maxInputDepth', 'undeclaredInputs', 'list', 'retention', 'clock'])

/** Checks the options and fills in defaults; throws FST_TASK_API_OPT_INVALID naming the option and the value. */
export function normalizeOptions (options: Partial<TaskApiOptions> & Record<string, unknown>): NormalizedOptions {
  for (const key of Object.keys(options)) {
    // fastify's own register options (prefix handled by us, logLevel, ...) pass through here too.
    if (!known.has(key) && !['logLevel', 'logSerializers'].includes(key)) {
      throw new FST_TASK_API_OPT_INVALID(key, 'a known option (' + [...known].join(', ') + ')', 'an unknown option')
    }
  }
  const { tasks } = options
  if (!Array.isArray(tasks) || tasks.length === 0) {
    throw new FST_TASK_API_OPT_INVALID('tasks', 'a non-empty array of task module URLs or absolute paths', describe(tasks))
  }
  const prefix = options.prefix ?? '/tasks'
  if (typeof prefix !== 'string' || !prefix.startsWith('/') || (prefix.length > 1 && prefix.endsWith('/'))) {
    throw new FST_TASK_API_OPT_INVALID('prefix', 'a path starting with "/" and not ending with "/"', describe(prefix))
  }
  const decorate = options.decorate ?? 'tasks'
  if (typeof decorate !== 'string' || !/^[A-Za-z_$][\w$]*$/.test(decorate)) {
    throw new FST_TASK_API_OPT_INVALID('decorate', 'a JavaScript identifier (the name of the decorator)', describe(decorate))
  }
  const client = options.client ?? true
  if (typeof client !== 'boolean') {
    throw new FST_TASK_API_OPT_INVALID('client', 'a boolean', describe(client))
  }
  const dashboard = options.dashboard ?? false
  if (typeof dashboard !== 'boolean') {
    throw new FST_TASK_API_OPT_INVALID('dashboard', 'a boolean', describe(dashboard))
  }
  const runner = options.runner ?? 'process'
  if (runner !== 'process' && runner !== 'inline') {
    throw new FST_TASK_API_OPT_INVALID('runner', '"process" or "inline"', describe(runner))
  }
  const redis = normalizeRedis(options.redis)
  if (redis !== undefined && options.store !== undefined) {
    throw new FST_TASK_API_OPT_INVALID('store', 'absent when redis is set (the records are in Redis)', describe(options.store))
  }
  const concurrency = options.concurrency ?? availableParallelism()
  if (!Number.isInteger(concurrency) || concurrency < (redis === undefined ? 1 : 0)) {
    throw new FST_TASK_API_OPT_INVALID('concurrency', redis === undefined ? 'a positive integer' : 'an integer, 0 or more (0: an API-only node)', describe(concurrency))
  }
  const progressInterval = options.progressInterval ?? 50
  if (typeof progressInterval !== 'number' || !Number.isFinite(progressInterval) || progressInterval < 0) {
    throw new FST_TASK_API_OPT_INVALID('progressInterval', 'a number of milliseconds, 0 or more', describe(progressInterval))
  }
  const store = options.store ?? new MemoryStore()
  const storeMethods = ['create', 'get', 'update', 'list', 'delete', 'live', 'expire', 'finishedSince'] as const
  if (typeof store !== 'object' || store === null || storeMethods.some(method => typeof store[method] !== 'function')) {
    throw new FST_TASK_API_OPT_INVALID('store', `an object with ${storeMethods.join(', ')} methods (see Store)`, describe(store))
  }
  const { execArgv, env } = options
  if (execArgv !== undefined && !(Array.isArray(execArgv) && execArgv.every(arg => typeof arg === 'string'))) {
    throw new FST_TASK_API_OPT_INVALID('execArgv', 'an array of strings', describe(execArgv))
  }
  if (env !== undefined && (typeof env !== 'object' || env === null || Array.isArray(env))) {
    throw new FST_TASK_API_OPT_INVALID('env', 'an object of environment variables', describe(env))
  }
  const execution = {
    timeout: options.timeout ?? 0,
    cancelGrace: options.cancelGrace ?? 5000,
    maxQueued: options.maxQueued ?? 0,
    shutdownTimeout: options.shutdownTimeout ?? 10_000,
  }
  for (const [name, value] of Object.entries(execution)) {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
      throw new FST_TASK_API_OPT_INVALID(name, 'an integer, 0 or more', describe(value))
    }
  }
  const limits = { maxMessages: options.maxMessages ?? 1000, maxMessageLength: options.maxMessageLength ?? 2000, maxOutputSize: options.maxOutputSize ?? 1024 * 1024 }
  for (const [name, value] of Object.entries(limits)) {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
      throw new FST_TASK_API_OPT_INVALID(name, 'a positive integer', describe(value))
    }
  }
  const maxTasksPerChild = options.maxTasksPerChild ?? 0
  if (typeof maxTasksPerChild !== 'number' || !Number.isInteger(maxTasksPerChild) || maxTasksPerChild < 0) {
    throw new FST_TASK_API_OPT_INVALID('maxTasksPerChild', 'an integer, 0 or more', describe(maxTasksPerChild))
  }
  const ackTimeout = options.ackTimeout ?? 5000
  if (typeof ackTimeout !== 'number' || !Number.isInteger(ackTimeout) || ackTimeout < 1 || ackTimeout > 2 ** 31 - 1) {
    throw new FST_TASK_API_OPT_INVALID('ackTimeout', 'a positive integer number of milliseconds', describe(ackTimeout))
  }
  const childPerTask = options.childPerTask ?? false
  if (typeof childPerTask !== 'boolean') {
    throw new FST_TASK_API_OPT_INVALID('childPerTask', 'a boolean', describe(childPerTask))
  }
  const inputLimits = { maxInputSize: options.maxInputSize ?? 256 * 1024, maxInputDepth: options.maxInputDepth ?? 32, undeclaredInputs: options.undeclaredInputs ?? 'reject' }
  if (inputLimits.undeclaredInputs !== 'reject' && inputLimits.undeclaredInputs !== 'strip') {
    throw new FST_TASK_API_OPT_INVALID('undeclaredInputs', "'reject' or 'strip'", describe(inputLimits.undeclaredInputs))
  }
  if (typeof inputLimits.maxInputSize !== 'number' || !Number.isInteger(inputLimits.maxInputSize) || inputLimits.maxInputSize < 1) {
    throw new FST_TASK_API_OPT_INVALID('maxInputSize', 'a positive integer number of bytes', describe(inputLimits.maxInputSize))
  }
  const { maxInputDepth } = inputLimits
  if (typeof maxInputDepth !== 'number' || !Number.isInteger(maxInputDepth) || maxInputDepth < 1 || maxInputDepth > 1000) {
    throw new FST_TASK_API_OPT_INVALID('maxInputDepth', 'an integer from 1 to 1000', describe(maxInputDepth))
  }
  const list = options.list ?? (options.owner !== undefined || options.auth !== undefined)
  if (typeof list !== 'boolean') {
    throw new FST_TASK_API_OPT_INVALID('list', 'a boolean', describe(list))
  }
  if (dashboard && !list) {
    throw new FST_TASK_API_OPT_INVALID('dashboard', options.list === false
      ? 'false while list is false (the dashboard shows the list)'
      : 'used with owner or auth (each user then sees their own tasks), or with list: true (every visitor then sees every task)', 'true')
  }
  const clock = options.clock ?? Date.now
  if (typeof clock !== 'function') {
    throw new FST_TASK_API_OPT_INVALID('clock', 'a function returning milliseconds since the epoch', describe(clock))
  }
  return {
    decorate,
    retention: normalizeRetention(options.retention),
    clock,
    ackTimeout,
    childPerTask,
    inputLimits,
    list,
    maxTasksPerChild,
    maxOldGenerationSizeMb: normalizeResourceLimits(options.resourceLimits),
    limits,
    execution,
    access: normalizeAccess(options),
    streams: normalizeStreams(options.streams),
    modules: tasks.map((location, index) => moduleUrl(location, index)),
    prefix: prefix === '/' ? '' : prefix,
    client,
    dashboard,
    runner,
    concurrency,
    progressInterval,
    store,
    redis,
    execArgv,
    env,
  }
}

function normalizeRedis (redis: unknown): RedisOptions | undefined {
  if (redis === undefined) return undefined
  if (typeof redis !== 'object' || redis === null) throw new FST_TASK_API_OPT_INVALID('redis', 'an object with a connection', describe(redis))
  const { connection, prefix, lockDuration, reconcileInterval } = redis as Partial<RedisOptions>
  if (typeof connection !== 'string' && (typeof connection !== 'object' || connection === null)) {
    throw new FST_TASK_API_OPT_INVALID('redis.connection', 'a redis:// URL or ioredis options', describe(connection))
  }
  if (typeof (connection as { defineCommand?: unknown }).defineCommand === 'function') {
    // Store, bus and BullMQ each need connections with settings of their own (fail fast,
    // subscriber, blocking): they are made from a URL or options, never shared.
    throw new FST_TASK_API_OPT_INVALID('redis.connection', 'a redis:// URL or ioredis options, not a client (the plugin makes its own connections: pass client.options)', 'an ioredis client')
  }
  if (prefix !== undefined && (typeof prefix !== 'string' || prefix === '')) throw new FST_TASK_API_OPT_INVALID('redis.prefix', 'a non-empty string', describe(prefix))
  if (lockDuration !== undefined && (!Number.isInteger(lockDuration) || lockDuration < 100)) {
    throw new FST_TASK_API_OPT_INVALID('redis.lockDuration', 'an integer number of ms, 100 or more', describe(lockDuration))
  }
  if (reconcileInterval !== undefined && (!Number.isInteger(reconcileInterval) || reconcileInterval < 100)) {
    throw new FST_TASK_API_OPT_INVALID('redis.reconcileInterval', 'an integer number of ms, 100 or more', describe(reconcileInterval))
  }
  return { connection, ...(prefix === undefined ? {} : { prefix }), ...(lockDuration === undefined ? {} : { lockDuration }), ...(reconcileInterval === undefined ? {} : { reconcileInterval }) }
}

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** Milliseconds of a duration option; throws naming the option. */
export function parseDuration (name: string, value: unknown): number {
  let ms: number | undefined
  if (typeof value === 'number') {
    ms = value
  } else if (typeof value === 'string') {
    const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value)
    if (match !== null) ms = Number(match[1]) * (durationUnits[match[2] as string] as number)
  }
  if (ms === undefined || !Number.isFinite(ms) || ms <= 0) {
    throw new FST_TASK_API_OPT_INVALID(name, 'a positive number of milliseconds or a duration such as \'30s\', \'15m\', \'12h\', \'7d\'', describe(value))
  }
  return ms
}

const defaultRetention = { succeeded: '7d', cancelled: '7d', failed: '30d' } as const

function normalizeRetention (retention: unknown): Retention {
  if (retention === false) return {}
  const given = retention ?? defaultRetention
  const normalized: Retention = {}
  if (typeof given !== 'object' || given === null) {
    const ms = parseDuration('retention', given)
    for (const status of finalStatuses) normalized[status as FinalStatus] = ms
    return normalized
  }
  if (Array.isArray(given)) throw new FST_TASK_API_OPT_INVALID('retention', 'a duration, false, or an object per final status', describe(given))
  for (const [key, value] of Object.entries(given)) {
    if (!finalStatuses.has(key as FinalStatus)) {
      throw new FST_TASK_API_OPT_INVALID(`retention.${key}`, 'a final status (succeeded, failed, cancelled)', 'an unknown key')
    }
    if (value === false || value === undefined) continue
    normalized[key as FinalStatus] = parseDuration(`retention.${key}`, value)
  }
  return normalized
}

function normalizeResourceLimits (limits: unknown): number | undefined {
  if (limits === undefined) return undefined
  if (typeof limits !== 'object' || limits === null || Array.isArray(limits)) {
    throw new FST_TASK_API_OPT_INVALID('resourceLimits', 'an object', describe(limits))
  }
  for (const key of Object.keys(limits)) {
    if (key !== 'maxOldGenerationSizeMb') {
      throw new FST_TASK_API_OPT_INVALID(`resourceLimits.${key}`, 'a known option (maxOldGenerationSizeMb)', 'an unknown option')
    }
  }
  const { maxOldGenerationSizeMb: mb } = limits as { maxOldGenerationSizeMb?: unknown }
  if (mb !== undefined && !(typeof mb === 'number' && Number.isInteger(mb) && mb >= 16)) {
    throw new FST_TASK_API_OPT_INVALID('resourceLimits.maxOldGenerationSizeMb', 'an integer number of MB, 16 or more', describe(mb))
  }
  return mb as number | undefined
}

function normalizeStreams (streams: unknown): NormalizedStreamOptions {
  if (streams === undefined) return { ...streamDefaults }
  if (typeof streams !== 'object' || streams === null || Array.isArray(streams)) {
    throw new FST_TASK_API_OPT_INVALID('streams', 'an object', describe(streams))
  }
  const normalized = { ...streamDefaults }
  for (const [key, value] of Object.entries(streams)) {
    if (!(key in streamDefaults)) {
      throw new FST_TASK_API_OPT_INVALID(`streams.${key}`, 'a known option (' + Object.keys(streamDefaults).join(', ') + ')', 'an unknown option')
    }
    const positive = key === 'maxSubscriptions' || key === 'maxPayload'
    if (typeof value !== 'number' || !Number.isInteger(value) || value < (positive ? 1 : 0)) {
      throw new FST_TASK_API_OPT_INVALID(`streams.${key}`, positive ? 'a positive integer' : 'an integer, 0 or more', describe(value))
    }
    normalized[key as keyof NormalizedStreamOptions] = value
  }
  return normalized
}

function normalizeAccess (options: Partial<TaskApiOptions>): AccessOptions {
  const { auth, authRelation, authorize, owner, allowedOrigins, streamTokens } = options
  if (auth !== undefined && !(Array.isArray(auth) && auth.length > 0 && auth.every(strategy => typeof strategy === 'function'))) {
    throw new FST_TASK_API_OPT_INVALID('auth', 'a non-empty array of @fastify/auth strategies (functions)', describe(auth))
  }
  if (authRelation !== undefined && authRelation !== 'or' && authRelation !== 'and') {
    throw new FST_TASK_API_OPT_INVALID('authRelation', '"or" or "and"', describe(authRelation))
  }
  for (const [name, value] of [['authorize', authorize], ['owner', owner]] as const) {
    if (value !== undefined && typeof value !== 'function') throw new FST_TASK_API_OPT_INVALID(name, 'a function', describe(value))
  }
  if (allowedOrigins !== undefined && allowedOrigins !== '*' &&
      !(Array.isArray(allowedOrigins) && allowedOrigins.every(origin => typeof origin === 'string'))) {
    throw new FST_TASK_API_OPT_INVALID('allowedOrigins', 'an array of origins or "*"', describe(allowedOrigins))
  }
  if (streamTokens !== undefined) {
    const { secret, ttl, headers } = streamTokens
    if (headers !== undefined && !(Array.isArray(headers) && headers.every(name => typeof name === 'string' && /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(name)))) {
      throw new FST_TASK_API_OPT_INVALID('streamTokens.headers', 'an array of header names', describe(headers))
    }
    if (secret !== undefined && !((typeof secret === 'string' && secret.length >= 16) || (Buffer.isBuffer(secret) && secret.length >= 16))) {
      throw new FST_TASK_API_OPT_INVALID('streamTokens.secret', 'a string or Buffer of at least 16 characters', describe(secret))
    }
    if (ttl !== undefined && !(Number.isInteger(ttl) && ttl > 0)) {
      throw new FST_TASK_API_OPT_INVALID('streamTokens.ttl', 'a positive number of milliseconds', describe(ttl))
    }
  }
  return { auth, authRelation, authorize, owner, allowedOrigins, streamTokens }
}
