import createError from '@fastify/error'

/*
 * Every error code the plugin can raise or answer with. Each one is listed in the
 * README (test/errors.test.ts checks that).
 */

/** An option passed to the plugin is invalid. Thrown by `register`. */
export const FST_TASK_API_OPT_INVALID = createError<[string, string, string]>(
  'FST_TASK_API_OPT_INVALID', 'options.%s must be %s, got %s', 500, TypeError)

/** A task module could not be imported, exports no task, or defines an invalid task. Thrown by `register`. */
export const FST_TASK_API_TASK_MODULE = createError<[string, string]>(
  'FST_TASK_API_TASK_MODULE', 'Task module %s: %s', 500, TypeError)

/** Two task modules define the same task name. Thrown by `register`. */
export const FST_TASK_API_TASK_DUPLICATE = createError<[string, string, string]>(
  'FST_TASK_API_TASK_DUPLICATE', 'Task name "%s" is defined twice: in %s and in %s', 500, TypeError)

/** A task's input or output schema cannot be compiled. Thrown by `register`. */
export const FST_TASK_API_TASK_SCHEMA = createError<[string, string, string]>(
  'FST_TASK_API_TASK_SCHEMA', 'Task "%s" has an invalid %s schema: %s', 500, TypeError)

/** The request body is not `{ task, inputs }`. */
export const FST_TASK_API_BODY_INVALID = createError<[string]>(
  'FST_TASK_API_BODY_INVALID', '%s', 400)

/** The submitted task name is not registered. */
export const FST_TASK_API_TASK_UNKNOWN = createError<[string]>(
  'FST_TASK_API_TASK_UNKNOWN', 'task "%s" is not registered', 400)

/** An input is missing or cannot be converted to its declared type. The message names the input. */
export const FST_TASK_API_INPUT_INVALID = createError<[string]>(
  'FST_TASK_API_INPUT_INVALID', '%s', 400)

/** The inputs take more than `maxInputSize` bytes as JSON. */
export const FST_TASK_API_INPUT_TOO_LARGE = createError<[number]>(
  'FST_TASK_API_INPUT_TOO_LARGE', 'inputs are larger than maxInputSize (%d bytes as JSON)', 413)

/** The inputs nest objects and arrays deeper than `maxInputDepth`. The message names the path where it hit. */
export const FST_TASK_API_INPUT_TOO_DEEP = createError<[string, number]>(
  'FST_TASK_API_INPUT_TOO_DEEP', '%s is nested deeper than maxInputDepth (%d levels)', 400)

/** No task has this uuid (or it is malformed). */
export const FST_TASK_API_TASK_NOT_FOUND = createError<[string]>(
  'FST_TASK_API_TASK_NOT_FOUND', 'task %s not found', 404)

/** The task runner is closed: the server is shutting down. */
export const FST_TASK_API_RUNNER_CLOSED = createError(
  'FST_TASK_API_RUNNER_CLOSED', 'the task runner is closed', 503)

/** No worker can start (a child process fails to fork or to load): tasks cannot run now. The pool keeps trying. */
export const FST_TASK_API_RUNNER_UNAVAILABLE = createError(
  'FST_TASK_API_RUNNER_UNAVAILABLE', 'no worker can run tasks right now: try again later', 503)

/** `GET {prefix}/:uuid/events` without a WebSocket upgrade, from a client that does not accept text/event-stream. */
export const FST_TASK_API_STREAM_NOT_ACCEPTABLE = createError(
  'FST_TASK_API_STREAM_NOT_ACCEPTABLE', 'this route streams events: upgrade to a WebSocket, or send Accept: text/event-stream', 406)

/** `GET {prefix}/events` without a WebSocket upgrade. */
export const FST_TASK_API_STREAM_UPGRADE_REQUIRED = createError(
  'FST_TASK_API_STREAM_UPGRADE_REQUIRED', 'this route is a WebSocket: send an upgrade request', 426)

/** `authorize` refused the request for this task. */
export const FST_TASK_API_FORBIDDEN = createError(
  'FST_TASK_API_FORBIDDEN', 'not allowed', 403)

/**
 * A WebSocket upgrade, submit or cancel from a page of another site that `allowedOrigins`
 * does not list (cross-site WebSocket hijacking and request forgery guard).
 */
export const FST_TASK_API_ORIGIN_FORBIDDEN = createError<[string]>(
  'FST_TASK_API_ORIGIN_FORBIDDEN', 'requests from %s are not allowed here (see allowedOrigins)', 403)

/**
 * An `auth` strategy refused the request. The code a refusal carries when the strategy's
 * error has none of its own; the message is the strategy's.
 */
export const FST_TASK_API_UNAUTHENTICATED = createError(
  'FST_TASK_API_UNAUTHENTICATED', 'authentication is required', 401)

/**
 * Something failed inside the server (a store, an authorize or owner callback that
 * threw): the code of a 5xx whose error had none; the detail is in the log, never sent.
 */
export const FST_TASK_API_INTERNAL = createError(
  'FST_TASK_API_INTERNAL', 'Internal Server Error', 500)

/**
 * The code of a 4xx other than 401 and 403 that the app's own callbacks (authorize, owner)
 * or another plugin threw without one; the status and message are theirs.
 */
export const FST_TASK_API_REFUSED = createError(
  'FST_TASK_API_REFUSED', 'the request was refused', 400)

/** A stream token that is malformed, expired, or minted for another task. */
export const FST_TASK_API_TOKEN_INVALID = createError(
  'FST_TASK_API_TOKEN_INVALID', 'the stream token is invalid or expired', 401)

/** The credentials a socket token would carry are larger than a URL can hold. */
export const FST_TASK_API_TOKEN_TOO_LARGE = createError<[number, number]>(
  'FST_TASK_API_TOKEN_TOO_LARGE', 'the credentials are too large for a socket token: %d bytes of headers, at most %d', 431)

/** `maxQueued` tasks already wait: try again later (the answer carries Retry-After). */
export const FST_TASK_API_QUEUE_FULL = createError<[number]>(
  'FST_TASK_API_QUEUE_FULL', 'too many tasks waiting (at most %d): try again later', 429)

/** The owner (or client IP) already has `streams.maxStreamsPerOwner` event streams open. */
export const FST_TASK_API_STREAM_LIMIT = createError<[number]>(
  'FST_TASK_API_STREAM_LIMIT', 'too many open event streams for this owner (at most %d): close one first', 429)

/** `DELETE {prefix}/:uuid` of a task that is pending or running. */
export const FST_TASK_API_TASK_LIVE = createError<[string]>(
  'FST_TASK_API_TASK_LIVE', 'task %s is still pending or running: cancel it, and delete it once it has ended', 409)

/** A list cursor that the store did not make (the `next` of an earlier page is the only valid one). */
export const FST_TASK_API_CURSOR_INVALID = createError(
  'FST_TASK_API_CURSOR_INVALID', 'querystring/cursor is not a cursor of this list: pass the next of an earlier page', 400)

/** The store cannot take a write right now (SQLite busy past its retries, say): try again (the answer carries Retry-After). */
export const FST_TASK_API_STORE_UNAVAILABLE = createError(
  'FST_TASK_API_STORE_UNAVAILABLE', 'the task store is busy: try again later', 503)

/**
 * Not an HTTP answer: the `code` of the frame an open event stream gets when its API node
 * lost Redis (a deployment on Redis); the stream catches up by itself once it is back.
 */
export const FST_TASK_API_EVENTS_INTERRUPTED = createError(
  'FST_TASK_API_EVENTS_INTERRUPTED', 'live events are interrupted: this server lost its connection to Redis; the stream catches up by itself once it is back', 503)

/** Every error code, for documentation and tests. */
export const codes = {
  FST_TASK_API_OPT_INVALID,
  FST_TASK_API_TASK_MODULE,
  FST_TASK_API_TASK_DUPLICATE,
  FST_TASK_API_TASK_SCHEMA,
  FST_TASK_API_BODY_INVALID,
  FST_TASK_API_TASK_UNKNOWN,
  FST_TASK_API_INPUT_INVALID,
  FST_TASK_API_INPUT_TOO_LARGE,
  FST_TASK_API_INPUT_TOO_DEEP,
  FST_TASK_API_TASK_NOT_FOUND,
  FST_TASK_API_RUNNER_CLOSED,
  FST_TASK_API_RUNNER_UNAVAILABLE,
  FST_TASK_API_STREAM_NOT_ACCEPTABLE,
  FST_TASK_API_STREAM_UPGRADE_REQUIRED,
  FST_TASK_API_FORBIDDEN,
  FST_TASK_API_ORIGIN_FORBIDDEN,
  FST_TASK_API_UNAUTHENTICATED,
  FST_TASK_API_INTERNAL,
  FST_TASK_API_REFUSED,
  FST_TASK_API_TOKEN_INVALID,
  FST_TASK_API_TOKEN_TOO_LARGE,
  FST_TASK_API_QUEUE_FULL,
  FST_TASK_API_STREAM_LIMIT,
  FST_TASK_API_TASK_LIVE,
  FST_TASK_API_CURSOR_INVALID,
  FST_TASK_API_STORE_UNAVAILABLE,
  FST_TASK_API_EVENTS_INTERRUPTED,
} as const

