import type { TProperties } from '@sinclair/typebox'
import type { FastifySchema } from 'fastify'
import { TaskStateSchema } from './events.js'
import { objectSchema } from './params.js'
import type { RegisteredTask } from './registry.js'

/*
 * What the routes tell @fastify/swagger (or any reader of route schemas): the submission
 * body and the record as `oneOf`s over the registered tasks, discriminated by `task`, with
 * each task's own input and output schemas, and every error answer a route can give.
 *
 * These schemas are for documents only. The body is validated by the task's own compiled
 * validator (params.ts) and the answers are serialized with JSON.stringify (their shape is
 * ours), so a rich `oneOf` costs nothing per request.
 */

/** A schema as plain JSON: TypeBox's symbol keys (Kind, Optional) left out. */
export function plainSchema (schema: unknown): Record<string, unknown> {
  return JSON.parse(JSON.stringify(schema)) as Record<string, unknown>
}

/** JSON Schema of a set of named parameters: `{ type: 'object', properties, required }` (no `required` when none is). */
export function parametersSchema (properties: TProperties): Record<string, unknown> {
  const schema = plainSchema(objectSchema(properties))
  // OpenAPI 3.0 refuses an empty `required` (JSON Schema allows it): none means none.
  if ((schema.required as unknown[]).length === 0) delete schema.required
  return schema
}

/** The body of an error answer. */
export const errorSchema = {
  type: 'object',
  required: ['statusCode', 'code', 'error', 'message'],
  properties: {
    statusCode: { type: 'integer' },
    code: { type: 'string' },
    error: { type: 'string' },
    message: { type: 'string' },
  },
}

/** What each error status means, as the routes answer it. */
const errorDescriptions: Record<number, string> = {
  400: 'invalid request: the body, the task name, an input (named in the message: FST_TASK_API_BODY_INVALID, FST_TASK_API_TASK_UNKNOWN, FST_TASK_API_INPUT_INVALID, FST_TASK_API_INPUT_TOO_DEEP), or a list query or cursor (FST_TASK_API_CURSOR_INVALID)',
  401: 'an auth strategy refused the request (FST_TASK_API_UNAUTHENTICATED, or the strategy\'s own code), or a stream token is invalid (FST_TASK_API_TOKEN_INVALID)',
  403: 'authorize refused this request for this task (FST_TASK_API_FORBIDDEN), or a page of another site sent it (FST_TASK_API_ORIGIN_FORBIDDEN)',
  404: 'no task has this uuid, or it is another owner\'s (FST_TASK_API_TASK_NOT_FOUND)',
  409: 'the task is pending or running: cancel it first (FST_TASK_API_TASK_LIVE)',
  413: 'the inputs or the body are too large (FST_TASK_API_INPUT_TOO_LARGE, FST_ERR_CTP_BODY_TOO_LARGE)',
  414: 'the uuid is longer than the server\'s maxParamLength (FST_ERR_MAX_PARAM_LENGTH)',
  426: 'this route is a WebSocket: send an upgrade request (FST_TASK_API_STREAM_UPGRADE_REQUIRED)',
  431: 'the credentials a socket token would carry are too large for a URL (FST_TASK_API_TOKEN_TOO_LARGE)',
  429: 'too many tasks wait (FST_TASK_API_QUEUE_FULL) or this owner has too many open streams; retry after the Retry-After header',
  500: 'an internal error (FST_TASK_API_INTERNAL, or the failing part\'s own code); the detail is in the server log, never in the answer',
  503: 'the server is closing, cannot run tasks, or its store is unavailable (FST_TASK_API_RUNNER_CLOSED, FST_TASK_API_RUNNER_UNAVAILABLE, FST_TASK_API_STORE_UNAVAILABLE); retry after the Retry-After header',
}

/** The route's error answers, each with its description. */
export function errorResponses (...statuses: number[]): Record<string, unknown> {
  return Object.fromEntries(statuses.map(status => [status, { description: errorDescriptions[status], ...errorSchema }]))
}

/** A one-task `properties.task` schema (`enum` of one: OpenAPI 3.0 has no `const`). */
const taskName = (name: string): Record<string, unknown> => ({ type: 'string', enum: [name] })

/**
 * The submission body: one branch per task, `task` naming it and `inputs` its input
 * schema (required when the task has a required input).
 */
export function submissionSchema (tasks: Iterable<RegisteredTask>): Record<string, unknown> {
  const branches = [...tasks].map(({ name, task }) => {
    const inputs = parametersSchema(task.inputs)
    const needsInputs = (inputs.required as string[] | undefined ?? []).length > 0
    return {
      type: 'object',
      title: name,
      ...(task.description === undefined ? {} : { description: task.description }),
      required: needsInputs ? ['task', 'inputs'] : ['task'],
      properties: { task: taskName(name), inputs },
    }
  })
  return branches.length === 0
    ? { type: 'object', required: ['task'], properties: { task: { type: 'string' }, inputs: { type: 'object' } } }
    : { oneOf: branches, discriminator: { propertyName: 'task' } }
}

/**
 * The record: one branch per task, with that task's outputs (each optional: they are set
 * once the task has succeeded, `{}` before).
 */
export function recordSchema (tasks: Iterable<RegisteredTask>): Record<string, unknown> {
  const base = plainSchema(TaskStateSchema)
  const branches = [...tasks].map(({ name, task }) => {
    const outputs = parametersSchema(task.outputs)
    delete outputs.required
    const properties = { ...(base.properties as Record<string, unknown>), task: taskName(name), outputs }
    return { ...base, title: `${name} record`, properties }
  })
  return branches.length === 0 ? base : { oneOf: branches, discriminator: { propertyName: 'task' } }
}

/**
 * Serializes answers whose schema is for documents only: the handlers give their exact
 * shape. An error answer comes as Fastify makes it (an object whose prototype is the
 * error, its fields not enumerable): its four fields are read one by one.
 */
export const stringifyCompiler = (): ((data: unknown) => string) => (data: unknown) => {
  if (!(data instanceof Error)) return JSON.stringify(data)
  const { statusCode, code, error, message } = data as Error & { statusCode?: unknown, code?: unknown, error?: unknown }
  return JSON.stringify({ statusCode, code, error, message })
}

/** A route schema with what documents read too (`summary`, `hide`: @fastify/swagger's keys). */
export const documented = (schema: Record<string, unknown>): FastifySchema => schema as FastifySchema
