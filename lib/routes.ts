import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchemaValidationError } from 'fastify'
import { TaskStateSchema } from './events.js'
import { FST_TASK_API_BODY_INVALID, FST_TASK_API_TASK_UNKNOWN } from './errors.js'
import { redactedRequest, type Access } from './access.js'
import { FST_TASK_API_FORBIDDEN } from './errors.js'
import { toState, type TaskService } from './service.js'
import { statuses, type TaskRecord, type TaskStatus } from './store/types.js'
import { describe } from './task.js'

interface Submission {
  task: string
  inputs: Record<string, unknown>
}

const errorSchema = {
  type: 'object',
  properties: {
    statusCode: { type: 'integer' },
    code: { type: 'string' },
    error: { type: 'string' },
    message: { type: 'string' },
  },
}

/** Both spellings of a path, unless the server already treats them as one. */
export function paths (app: FastifyInstance, path: string): string[] {
  const config = app.initialConfig as { ignoreTrailingSlash?: boolean, routerOptions?: { ignoreTrailingSlash?: boolean } }
  if (config.ignoreTrailingSlash === true || config.routerOptions?.ignoreTrailingSlash === true) return [path]
  return path.endsWith('/') ? [path] : [path, path + '/']
}

/** The REST routes: submit, fetch, list, and stream tokens. */
export function registerRoutes (app: FastifyInstance, service: TaskService, access: Access, prefix: string): void {
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
    if (registered === undefined) return { error: new FST_TASK_API_TASK_UNKNOWN(task) }
    try {
      return { value: { task, inputs: service.checkInputs(registered, inputs) } }
    } catch (err) {
      return { error: err as Error }
    }
  }

  for (const url of paths(app, prefix === '' ? '/' : prefix)) {
    app.route<{ Body: Submission }>({
      method: 'POST',
      url,
      logSerializers: { req: redactedRequest },
      schema: {
        body: {
          type: 'object',
          required: ['task'],
          properties: { task: { type: 'string' }, inputs: { type: 'object' } },
        },
        response: { 201: TaskStateSchema, '4xx': errorSchema, '5xx': errorSchema },
      },
      validatorCompiler: () => validateSubmission as unknown as (body: unknown) => boolean | { error: FastifySchemaValidationError[] },
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
          if ((err as { code?: string }).code === 'FST_TASK_API_QUEUE_FULL') void reply.header('retry-after', '1')
          throw err
        }
      },
    })
  }

  // The routes about one task share their checks: authentication, then the task must
  // exist and be visible to the requester (404 alike otherwise), then authorize.
  const taskRoute = (
    method: 'GET' | 'POST',
    suffix: string,
    action: 'read' | 'cancel',
    response: object,
    handler: (request: FastifyRequest<{ Params: { uuid: string } }>, reply: FastifyReply, record: Readonly<TaskRecord>) => Promise<unknown>
  ): void => {
    for (const url of paths(app, `${prefix}/:uuid${suffix}`)) {
      app.route<{ Params: { uuid: string } }>({
        method,
        url,
        logSerializers: { req: redactedRequest },
        schema: {
          params: { type: 'object', properties: { uuid: { type: 'string' } } },
          response: { 200: response, '4xx': errorSchema },
        },
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

  taskRoute('GET', '', 'read', TaskStateSchema, async (_request, _reply, record) => toState(record))

  taskRoute('POST', '/cancel', 'cancel', TaskStateSchema, async (_request, _reply, record) =>
    await service.cancel(record.uuid) ?? toState(record))

  taskRoute('GET', '/token', 'read', { type: 'object', properties: { token: { type: 'string' }, expires: { type: 'string' } } },
    async (_request, reply, record) => {
      void reply.header('cache-control', 'no-store')
      return access.token(record.uuid)
    })

  // Listing shares POST's path, so it takes both spellings only when POST does.
  for (const url of paths(app, prefix === '' ? '/' : prefix)) {
    app.route<{ Querystring: { status?: TaskStatus, task?: string, limit: number } }>({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      schema: {
        querystring: {
          type: 'object',
          properties: {
            status: { type: 'string', enum: [...statuses] },
            task: { type: 'string' },
            limit: { type: 'integer', minimum: 1, maximum: 1000, default: 50 },
          },
          additionalProperties: false,
        },
        response: {
          200: { type: 'object', properties: { tasks: { type: 'array', items: TaskStateSchema } } },
          '4xx': errorSchema,
        },
      },
      ...(access.hook !== undefined ? { preHandler: access.hook } : {}),
      handler: async (request) => {
        const { status, task, limit } = request.query
        const records = await service.list({
          ...(access.scoped ? { owner: await access.ownerOf(request) } : {}),
          ...(status !== undefined ? { status } : {}),
          ...(task !== undefined ? { task } : {}),
          limit,
        })
        const tasks = []
        for (const record of records) {
          if (await access.authorize(request, { action: 'read', task: record.task, inputs: record.inputs, record })) tasks.push(toState(record))
        }
        return { tasks }
      },
    })
  }
}
