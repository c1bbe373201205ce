import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, FastifySchemaValidationError, onRequestHookHandler } from 'fastify'
import { TaskStateSchema } from './events.js'
import { documented, errorResponses, recordSchema, stringifyCompiler, submissionSchema } from './openapi.js'
import { codes, FST_TASK_API_BODY_INVALID, FST_TASK_API_CURSOR_INVALID, FST_TASK_API_FORBIDDEN, FST_TASK_API_STORE_UNAVAILABLE, FST_TASK_API_TASK_UNKNOWN } from './errors.js'
import { answerable, redactedRequest, type Access } from './access.js'
import { maxStatsMinutes, statsReadLimit, toState, type TaskService } from './service.js'
import { statuses, toSummary, type TaskRecord, type TaskStatus, type TaskSummary } from './store/types.js'
import { describe } from './task.js'
import { clip } from './text.js'

interface Submission {
  task: string
  inputs: Record<string, unknown>
}

/** Both spellings of a path, unless the server already treats them as one. */
export function paths (app: FastifyInstance, path: string): string[] {
  const config = app.initialConfig as { ignoreTrailingSlash?: boolean, routerOptions?: { ignoreTrailingSlash?: boolean } }
  if (config.ignoreTrailingSlash === true || config.routerOptions?.ignoreTrailingSlash === true) return [path]
  return path.endsWith('/') ? [path] : [path, path + '/']
}

/**
 * The second spelling of a path (with the trailing slash) is left out of documents
 * (`hide`, as @fastify/swagger reads it): an OpenAPI document lists each route once.
 */
export const docOnce = (url: string, all: string[]): { hide?: true } => url === all[0] ? {} : { hide: true }

const summaryFields = ['uuid', 'task', 'status', 'progress', 'target', 'attempt', 'created', 'started', 'finished', 'error'] as const
const TaskSummarySchema = {
  type: 'object',
  properties: Object.fromEntries(summaryFields.map(field => [field, TaskStateSchema.properties[field]])),
}

/**
 * A 5xx never carries an internal message (a store's, or an authorize or owner callback's
 * that threw) to the client: the detail goes to the log, and the app's own error handler
 * (the parent context's, which runs next) gets a generic error with the same status and
 * code. The plugin's own 5xx codes keep their messages: they say nothing internal.
 */
function hideInternalErrors (error: FastifyError, request: FastifyRequest, reply: FastifyReply): never {
  if ((error as { storeUnavailable?: unknown } | null)?.storeUnavailable === true) {
    // The store says so itself (SQLite busy past its retries, say): a 503 to retry, not a 500.
    request.log.warn({ err: error }, 'fastify-task-api: the store is unavailable')
    void reply.header('retry-after', '1')
    throw new FST_TASK_API_STORE_UNAVAILABLE()
  }
  // Whatever was thrown: an Error or not.
  const { statusCode, status: otherStatus, code } = (typeof error === 'object' && error !== null ? error : {}) as Record<string, unknown>
  const status = [statusCode, otherStatus].find(value => typeof value === 'number' && value >= 400 && value <= 599) as number | undefined ?? 500
  const own = typeof code === 'string' ? (codes as Record<string, unknown>)[code] as (new () => Error) | undefined : undefined
  if (own !== undefined && error instanceof own) throw error
  // A 4xx from the app's own callbacks (authorize, owner) or another plugin: as it says,
  // with a code (its own, else by status).
  if (status < 500) throw answerable(error, status, status === 401 ? 'FST_TASK_API_UNAUTHENTICATED' : status === 403 ? 'FST_TASK_API_FORBIDDEN' : 'FST_TASK_API_REFUSED', STATUS_CODES[status] ?? 'Refused')
  request.log.error({ err: error }, 'fastify-task-api: internal error')
  const generic = new Error(STATUS_CODES[status] ?? 'Internal Server Error') as FastifyError
  generic.statusCode = status
  // Every error body carries a code: the error's own, else ours.
  generic.code = typeof code === 'string' && code !== '' ? code : 'FST_TASK_API_INTERNAL'
  throw generic
}

/** Options of the REST routes. */
export interface RouteOptions {
  /** Whether `GET {prefix}` exists. */
  list: boolean
}

/**
 * The REST routes: submit, fetch, cancel, list, and stream tokens. They live in a context
 * of their own, so that their error handler (hideInternalErrors) is theirs only: the
 * plugin is not encapsulated (fastify-plugin), and the app's own handler still runs after.
 */
export async function registerRoutes (app: FastifyInstance, service: TaskService, access: Access, prefix: string, options: RouteOptions): Promise<void> {
  await app.register(async (rest) => {
    rest.setErrorHandler(hideInternalErrors)
    registerRestRoutes(rest, service, access, prefix, options)
  })
}

function registerRestRoutes (app: FastifyInstance, service: TaskService, access: Access, prefix: string, options: RouteOptions): void {
  // Routes that change state refuse pages of other sites (cross-site request forgery), as
  // the WebSocket upgrades do, before anything else: authentication, body parsing.
  const sameSite: onRequestHookHandler = (request, _reply, done) => done(access.checkOrigin(request))

  // The body validator is the task's own: compiled once at registration (see params.ts),
  // it converts inputs the seed's way and names the input that fails.
  const validateSubmission = (body: unknown): { value: Submission } | { error: Error } => {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      return { error: new FST_TASK_API_BODY_INVALID(`body must be an object {"task": name, "inputs": {...}}, got ${describe(body)}`) }
    }
    const { task, inputs = {} } = body as Record<string, unknown>
    if (typeof task !== 'string') {
      return { error: new FST_TASK_API_BODY_INVALID(`body/task must be a string naming a registered task, got ${describe(task)}`) }
    }
    const registered = service.task(task)
    if (registered === undefined) return { error: new FST_TASK_API_TASK_UNKNOWN(clip(task)) }
    try {
      return { value: { task, inputs: service.checkInputs(registered, inputs) } }
    } catch (err) {
      return { error: err as Error }
    }
  }

  // For documents (openapi.ts): the body and the record as oneOfs over the tasks.
  const record = recordSchema(service.registered)
  const submission = submissionSchema(service.registered)
  const rootPaths = paths(app, prefix === '' ? '/' : prefix)
  for (const url of rootPaths) {
    app.route<{ Body: Submission }>({
      method: 'POST',
      url,
      logSerializers: { req: redactedRequest },
      schema: documented({
        ...docOnce(url, rootPaths),
        summary: 'Submit a task',
        body: submission,
        response: { 201: { description: 'the task, created pending', ...record }, ...errorResponses(400, 401, 403, 413, 429, 500, 503) },
      }),
      validatorCompiler: () => validateSubmission as unknown as (body: unknown) => boolean | { error: FastifySchemaValidationError[] },
      serializerCompiler: stringifyCompiler,
      onRequest: sameSite,
      // Authentication runs before the body is validated, so a stranger learns nothing
      // about the tasks or their inputs.
      ...(access.hook !== undefined ? { preValidation: access.hook } : {}),
      handler: async (request, reply) => {
        const { task, inputs } = request.body
        // Without authorize and owner options the hot path awaits nothing extra.
        if (access.authorizes && !await access.authorize(request, { action: 'submit', task, inputs, record: undefined })) {
          throw new FST_TASK_API_FORBIDDEN()
        }
        const owner = access.scoped ? await access.ownerOf(request) : null
        try {
          const state = await service.submitChecked(service.task(task) as NonNullable<ReturnType<TaskService['task']>>, inputs, { owner })
          return await reply.code(201).send(state)
        } catch (err) {
          const code = (err as { code?: string }).code
          if (code === 'FST_TASK_API_QUEUE_FULL' || code === 'FST_TASK_API_RUNNER_UNAVAILABLE') void reply.header('retry-after', '1')
          throw err
        }
      },
    })
  }

  // The routes about one task share their checks: authentication, then the task must
  // exist and be visible to the requester (404 alike otherwise), then authorize.
  const taskRoute = (
    method: 'GET' | 'POST' | 'DELETE',
    suffix: string,
    action: 'read' | 'cancel' | 'delete',
    doc: { summary: string, response: object, errors: number[] },
    handler: (request: FastifyRequest<{ Params: { uuid: string } }>, reply: FastifyReply, record: Readonly<TaskRecord>) => Promise<unknown>
  ): void => {
    const all = paths(app, `${prefix}/:uuid${suffix}`)
    for (const url of all) {
      app.route<{ Params: { uuid: string } }>({
        method,
        url,
        logSerializers: { req: redactedRequest },
        schema: documented({
          ...docOnce(url, all),
          summary: doc.summary,
          params: { type: 'object', required: ['uuid'], properties: { uuid: { type: 'string', description: 'the task\'s uuid' } } },
          response: { [method === 'DELETE' ? 204 : 200]: doc.response, ...errorResponses(401, 403, 404, ...doc.errors, 500, 503) },
        }),
        serializerCompiler: stringifyCompiler,
        ...(method !== 'GET' ? { onRequest: sameSite } : {}),
        ...(access.hook !== undefined ? { preHandler: access.hook } : {}),
        handler: async (request, reply) => {
          const { uuid } = request.params
          const visible = await access.visible(request, uuid, await service.record(uuid), action)
          if (!visible.ok) throw visible.error
          return await handler(request, reply, visible.record)
        },
      })
    }
  }

  taskRoute('GET', '', 'read', { summary: 'Fetch a task', response: { description: 'the record', ...record }, errors: [414] }, async (_request, _reply, record) => toState(record))

  taskRoute('POST', '/cancel', 'cancel', { summary: 'Cancel a task', response: { description: 'the record as it stands after the request', ...record }, errors: [] }, async (_request, _reply, record) =>
    await service.cancel(record.uuid) ?? toState(record))

  taskRoute('DELETE', '', 'delete', { summary: 'Delete a finished task', response: { description: 'deleted', type: 'null' }, errors: [409] }, async (_request, reply, record) => {
    await service.delete(record.uuid)
    return await reply.code(204).send()
  })

  taskRoute('GET', '/token', 'read', {
    summary: 'A short-lived token to follow this task from a browser (?token= on its event stream)',
    response: { description: 'the token', type: 'object', required: ['token', 'expires'], properties: { token: { type: 'string' }, expires: { type: 'string', format: 'date-time' } } },
    errors: [],
  },
    async (_request, reply, record) => {
      void reply.header('cache-control', 'no-store')
      return access.token(record.uuid)
    })

  // The catalog: the tasks this user may run, as a UI builds its forms from them. A
  // static path: it wins over `/:uuid` (no uuid reads "catalog").
  const catalogPaths = paths(app, `${prefix}/catalog`)
  for (const url of catalogPaths) {
    app.route({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      schema: documented({
        ...docOnce(url, catalogPaths),
        summary: 'The tasks this user may run, with their input and output JSON Schemas',
        response: {
          200: {
            description: 'the catalog',
            type: 'object',
            properties: {
              tasks: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    name: { type: 'string' },
                    description: { type: ['string', 'null'] },
                    inputs: { type: 'object', additionalProperties: true },
                    outputs: { type: 'object', additionalProperties: true },
                    timeout: { type: ['integer', 'null'] },
                    retries: { type: 'integer' },
                  },
                },
              },
            },
          },
          ...errorResponses(401, 500, 503),
        },
      }),
      ...(access.hook !== undefined ? { preHandler: access.hook } : {}),
      handler: async (request, reply) => {
        const tasks = []
        for (const entry of service.catalog()) {
          if (await access.authorize(request, { action: 'catalog', task: entry.name, inputs: {}, record: undefined })) tasks.push(entry)
        }
        // Per user when there is authentication or authorize: never in a shared cache.
        void reply.header('cache-control', access.hook !== undefined || access.authorizes ? 'private, no-cache' : 'no-cache')
        return { tasks }
      },
    })
  }

  // Listing is a way to see tasks that a uuid alone never gave: without owner or auth it
  // would show every client every task, so then it exists only when asked for. So are
  // the statistics, which count what a list would show.
  if (!options.list) return

  // What a request sees of the records a list or the statistics read: its own, with
  // owner (null: those without one), and those authorize lets it read.
  const ownerFilter = async (request: FastifyRequest): Promise<{ owner?: string | null }> =>
    access.scoped ? { owner: await access.ownerOf(request) } : {}
  const readable = async (request: FastifyRequest, record: Readonly<TaskRecord>): Promise<boolean> =>
    await access.authorize(request, { action: 'read', task: record.task, inputs: record.inputs, record })
  // Listing shares POST's path, so it takes both spellings only when POST does.
  for (const url of rootPaths) {
    app.route<{ Querystring: { status?: TaskStatus, task?: string, limit: number, cursor?: string } }>({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      schema: documented({
        ...docOnce(url, rootPaths),
        summary: 'List tasks, newest first',
        querystring: {
          type: 'object',
          properties: {
            status: { type: 'string', enum: [...statuses] },
            task: { type: 'string' },
            limit: { type: 'integer', minimum: 1, maximum: 1000, default: 50 },
            cursor: { type: 'string', maxLength: 128 },
          },
          additionalProperties: false,
        },
        response: {
          200: { description: 'a page of summaries, and the cursor of the next page (null at the end)', type: 'object', properties: { tasks: { type: 'array', items: TaskSummarySchema }, next: { type: ['string', 'null'] } } },
          ...errorResponses(400, 401, 500, 503),
        },
      }),
      ...(access.hook !== undefined ? { preHandler: access.hook } : {}),
      handler: async (request) => {
        const { status, task, limit, cursor } = request.query
        let page
        try {
          page = await service.list({
            ...await ownerFilter(request),
            ...(status !== undefined ? { status } : {}),
            ...(task !== undefined ? { task } : {}),
            ...(cursor !== undefined ? { cursor } : {}),
            limit,
          })
        } catch (err) {
          if ((err as { invalidCursor?: unknown }).invalidCursor === true) throw new FST_TASK_API_CURSOR_INVALID()
          throw err
        }
        const { records, next } = page
        const tasks: TaskSummary[] = []
        for (const record of records) {
          if (await readable(request, record)) tasks.push(toSummary(record))
        }
        return { tasks, next }
      },
    })
  }

  // For a dashboard's charts: tasks finished per minute by status, durations per task. A
  // static path: it wins over `/:uuid`, as the catalog does.
  const statsPaths = paths(app, `${prefix}/stats`)
  const count = { type: 'integer', minimum: 0 }
  const ms = { type: 'integer', minimum: 0, description: 'ms' }
  // Per user when there is authentication, authorize or owner: never in a shared cache.
  const statsCache = access.hook !== undefined || access.authorizes || access.scoped ? 'private, no-cache' : 'no-cache'
  for (const url of statsPaths) {
    app.route<{ Querystring: { minutes: number } }>({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      schema: documented({
        ...docOnce(url, statsPaths),
        summary: 'Tasks finished per minute by final status, and run durations per task, over the last minutes',
        querystring: {
          type: 'object',
          properties: {
            minutes: { type: 'integer', minimum: 1, maximum: maxStatsMinutes, default: 60, description: 'the window, the current minute last' },
          },
          additionalProperties: false,
        },
        response: {
          200: {
            description: 'one entry per minute, oldest first (the last is the current minute, so far), and the p50 and p95 durations of the runs that succeeded or failed, per task',
            type: 'object',
            required: ['from', 'to', 'minutes', 'durations', 'truncated'],
            properties: {
              from: { type: 'string', format: 'date-time' },
              to: { type: 'string', format: 'date-time' },
              minutes: {
                type: 'array',
                items: {
                  type: 'object',
                  required: ['start', 'succeeded', 'failed', 'cancelled'],
                  properties: { start: { type: 'string', format: 'date-time' }, succeeded: count, failed: count, cancelled: count },
                },
              },
              durations: {
                type: 'array',
                items: {
                  type: 'object',
                  required: ['task', 'count', 'p50', 'p95'],
                  properties: { task: { type: 'string' }, count, p50: ms, p95: ms },
                },
              },
              truncated: { type: 'boolean', description: `a final status had more than ${statsReadLimit} tasks in the window: the oldest were left out` },
            },
          },
          ...errorResponses(400, 401, 500, 503),
        },
      }),
      serializerCompiler: stringifyCompiler,
      ...(access.hook !== undefined ? { preHandler: access.hook } : {}),
      handler: async (request, reply) => {
        const stats = await service.finishedStats({
          minutes: request.query.minutes,
          ...await ownerFilter(request),
          // Without authorize, nothing to ask per record.
          ...(access.authorizes ? { include: async (record: Readonly<TaskRecord>) => await readable(request, record) } : {}),
        })
        void reply.header('cache-control', statsCache)
        return stats
      },
    })
  }
}
