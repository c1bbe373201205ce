import type { FastifyInstance, FastifySchemaValidationError } from 'fastify'
import { TaskStateSchema } from './events.js'
import { FST_TASK_API_BODY_INVALID, FST_TASK_API_TASK_NOT_FOUND, FST_TASK_API_TASK_UNKNOWN } from './errors.js'
import type { TaskService } from './service.js'
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

/** The REST routes: submit and fetch. */
export function registerRoutes (app: FastifyInstance, service: TaskService, prefix: string): void {
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
      schema: {
        body: {
          type: 'object',
          required: ['task'],
          properties: { task: { type: 'string' }, inputs: { type: 'object' } },
        },
        response: { 201: TaskStateSchema, '4xx': errorSchema, '5xx': errorSchema },
      },
      validatorCompiler: () => validateSubmission as unknown as (body: unknown) => boolean | { error: FastifySchemaValidationError[] },
      handler: async (request, reply) => {
        const { task, inputs } = request.body
        const state = await service.submitChecked(service.task(task) as NonNullable<ReturnType<TaskService['task']>>, inputs)
        return reply.code(201).send(state)
      },
    })
  }

  for (const url of paths(app, `${prefix}/:uuid`)) {
    app.route<{ Params: { uuid: string } }>({
      method: 'GET',
      url,
      schema: {
        params: { type: 'object', properties: { uuid: { type: 'string' } } },
        response: { 200: TaskStateSchema, '4xx': errorSchema },
      },
      handler: async (request) => {
        const state = await service.get(request.params.uuid)
        if (state === undefined) throw new FST_TASK_API_TASK_NOT_FOUND(request.params.uuid)
        return state
      },
    })
  }
}
