import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest, preHandlerHookHandler } from 'fastify'
import type {} from '@fastify/auth'
import { FST_TASK_API_FORBIDDEN, FST_TASK_API_ORIGIN_FORBIDDEN, FST_TASK_API_TASK_NOT_FOUND, FST_TASK_API_TOKEN_INVALID, FST_TASK_API_TOKEN_TOO_LARGE } from './errors.js'
import type { TaskRecord } from './store/types.js'
import { clip } from './text.js'

/**
 * An @fastify/auth strategy: resolves to accept the request, throws (or rejects) to
 * refuse it. Callback-style strategies `(request, reply, done)` work too.
 */
export type AuthStrategy = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void | Promise<void>

/** What `authorize` is asked about. */
export interface AuthorizeContext {
  /**
   * `submit` for POST /tasks; `read` for fetching, listing and following a task; `cancel`;
   * `delete` for DELETE /tasks/:uuid; `catalog` for each task `GET {prefix}/catalog`
   * would show (no inputs, no record: may this user run this task at all?).
   */
  action: 'submit' | 'read' | 'cancel' | 'delete' | 'catalog'
  /** The task's name. */
  task: string
  /** The converted inputs (of the submission, or of the stored task); `{}` for `catalog`. */
  inputs: Readonly<Record<string, unknown>>
  /** The stored record, for `read`, `cancel` and `delete`; undefined for `submit` and `catalog`. */
  record: Readonly<TaskRecord> | undefined
}

/** The access options of the plugin. */
export interface AccessOptions {
  /**
   * @fastify/auth strategies guarding every route of the plugin, WebSocket upgrades
   * (before the 101 answer) and SSE included. A refusal answers 401.
   */
  auth?: AuthStrategy[]
  /** How the strategies combine. @default 'or' */
  authRelation?: 'or' | 'and'
  /** Per-task permission: false answers 403 (a `read` of a listed task just leaves it out). */
  authorize?: (request: FastifyRequest, context: AuthorizeContext) => boolean | Promise<boolean>
  /**
   * Who a request acts for. When given, each record stores its owner, and another
   * owner's task answers 404 (the same answer as a uuid that does not exist).
   */
  owner?: (request: FastifyRequest) => string | null | undefined | Promise<string | null | undefined>
  /**
   * Other origins (`https://app.example.com`) whose pages may open the WebSockets and call
   * the REST routes that change state (submit, cancel, delete), or `'*'` for any. Requests from
   * the server's own origin, and from clients that are not browsers, always pass.
   * @default none: only the request's own host
   */
  allowedOrigins?: string[] | '*'
  /** Stream tokens (`GET /tasks/:uuid/token`, `app.tasks.streamToken`). */
  streamTokens?: {
    /** The HMAC key. @default 32 random bytes per process (tokens then die with it) */
    secret?: string | Buffer
    /** Lifetime in ms. @default 60000 */
    ttl?: number
    /**
     * The request headers a socket token carries (`GET {prefix}/events/token`): the
     * credentials the `auth` strategies read, which a browser cannot put on a WebSocket.
     * @default ['authorization']
     */
    headers?: string[]
  }
}

// A token: the expiry in base36 (a safe integer takes at most 11 digits), a dot, and the
// HMAC-SHA256 in base64url (32 bytes: 43 characters, no padding).
const tokenPattern = /^[0-9a-z]{1,11}\.[A-Za-z0-9_-]{43}$/
const maxTokenLength = 11 + 1 + 43
// A socket token: the expiry in base36, a dot, then in base64url a 12-byte IV, the
// AES-256-GCM ciphertext of the carried headers (as JSON) and the 16-byte tag.
// At most maxSocketHeaders bytes of headers, so that the URL carrying it (about 4/3 of
// that) stays well within Node's 16 KiB limit on a request's head.
const maxSocketHeaders = 9000
// 12038 = the base64url length of 12 + maxSocketHeaders + 16 bytes (a literal: no RegExp
// is built at run time, see test/redos.test.ts).
const socketTokenPattern = /^[0-9a-z]{1,11}\.[A-Za-z0-9_-]{38,12038}$/

/** The URL with the value of each `token` parameter replaced, however its name is percent-encoded. */
export function redactedUrl (url: string): string {
  const start = url.indexOf('?')
  if (start === -1) return url
  const params = url.slice(start + 1).split('&').map((param) => {
    const eq = param.indexOf('=')
    const name = eq === -1 ? param : param.slice(0, eq)
    let decoded = name
    try {
      decoded = decodeURIComponent(name.replaceAll('+', ' '))
    } catch {}
    return decoded === 'token' ? `${name}=[redacted]` : param
  })
  return `${url.slice(0, start + 1)}${params.join('&')}`
}

/**
 * The request as the log shows it (a `req` log serializer for every route of the plugin):
 * a stream token in the query string never reaches the log.
 */
export const redactedRequest = (request: FastifyRequest): Record<string, unknown> => ({
  method: request.method,
  url: redactedUrl(request.url),
  host: request.host,
  remoteAddress: request.ip,
  remotePort: request.socket?.remotePort,
})

type Visibility = { ok: true, record: Readonly<TaskRecord> } | { ok: false, error: Error }

/** Authentication, ownership, permission, origins and stream tokens, in one place. */
export class Access {
  readonly #options: AccessOptions
  readonly #secret: Buffer
  readonly #ttl: number
  readonly #socketKey: Buffer
  readonly #socketHeaders: string[]
  readonly #authenticate: preHandlerHookHandler | undefined

  constructor (app: FastifyInstance, options: AccessOptions) {
    this.#options = options
    this.#secret = options.streamTokens?.secret !== undefined ? Buffer.from(options.streamTokens.secret) : randomBytes(32)
    this.#ttl = options.streamTokens?.ttl ?? 60_000
    this.#socketKey = createHmac('sha256', this.#secret).update('fastify-task-api socket token').digest()
    this.#socketHeaders = (options.streamTokens?.headers ?? ['authorization']).map(name => name.toLowerCase())
    if (options.auth !== undefined && options.auth.length > 0) {
      this.#authenticate = app.auth(options.auth as Parameters<FastifyInstance['auth']>[0], { relation: options.authRelation ?? 'or' })
    }
  }

  /** The auth hook for a route, or undefined when there are no strategies (no hook costs nothing). */
  get hook (): ((request: FastifyRequest, reply: FastifyReply) => Promise<void>) | undefined {
    return this.#authenticate === undefined ? undefined : this.authenticate
  }

  /** Runs the auth strategies; rejects with their error, made a 401 when it has no status. */
  authenticate = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const handler = this.#authenticate
    if (handler === undefined) return
    await new Promise<void>((resolve, reject) => {
      handler.call(request.server, request, reply, (err?: Error) => {
        if (err === undefined || err === null) {
          resolve()
          return
        }
        reject(refusal(err))
      })
    })
  }

  /** Whether an authorize option is set. */
  get authorizes (): boolean {
    return this.#options.authorize !== undefined
  }

  /** Whether an owner option is set. */
  get scoped (): boolean {
    return this.#options.owner !== undefined
  }

  /** The request's owner, or null (no owner option, or the option says none). */
  async ownerOf (request: FastifyRequest): Promise<string | null> {
    if (this.#options.owner === undefined) return null
    const owner = await this.#options.owner(request)
    return owner ?? null
  }

  async authorize (request: FastifyRequest, context: AuthorizeContext): Promise<boolean> {
    if (this.#options.authorize === undefined) return true
    return await this.#options.authorize(request, context) === true
  }

  /**
   * Whether the request may read the task: another owner's task and a missing one get
   * the very same 404; a permission refusal gets 403.
   */
  async visible (request: FastifyRequest, uuid: string, record: Readonly<TaskRecord> | undefined, action: 'read' | 'cancel' | 'delete' = 'read'): Promise<Visibility> {
    if (record === undefined || (this.scoped && record.owner !== await this.ownerOf(request))) {
      return { ok: false, error: new FST_TASK_API_TASK_NOT_FOUND(clip(uuid)) }
    }
    if (!await this.authorize(request, { action, task: record.task, inputs: record.inputs, record })) {
      return { ok: false, error: new FST_TASK_API_FORBIDDEN() }
    }
    return { ok: true, record }
  }

  /** A token that lets its holder follow one task until it expires. */
  token (uuid: string, ttl = this.#ttl): { token: string, expires: string } {
    const expires = Date.now() + ttl
    return { token: `${expires.toString(36)}.${this.#sign(uuid, expires)}`, expires: new Date(expires).toISOString() }
  }

  /**
   * True when `token` was minted for this uuid and has not expired. Only the exact form
   * `token()` makes is read: `<expiry in base36>.<43 base64url characters>`, the expiry
   * written as `toString(36)` writes it; anything else is refused before any HMAC is computed.
   */
  verifyToken (uuid: string, token: string): boolean {
    if (typeof token !== 'string' || token.length < 45 || token.length > maxTokenLength || !tokenPattern.test(token)) return false
    const dot = token.length - 44
    const stamp = token.slice(0, dot)
    const expires = parseInt(stamp, 36)
    if (!Number.isSafeInteger(expires) || expires.toString(36) !== stamp || expires < Date.now()) return false
    const given = Buffer.from(token.slice(dot + 1))
    const expected = Buffer.from(this.#sign(uuid, expires))
    return given.length === expected.length && timingSafeEqual(given, expected)
  }

  /**
   * A token that opens one multiplexed socket (`{prefix}/events?token=`) as this
   * request: it carries the request's credentials (the `streamTokens.headers`),
   * encrypted and authenticated with a key derived from `streamTokens.secret`, until it
   * expires. The socket then runs the `auth` strategies, `owner` and `authorize` with
   * those headers, as if the browser had sent them.
   */
  socketToken (request: FastifyRequest, ttl = this.#ttl): { token: string, expires: string } {
    const expires = Date.now() + ttl
    const carried: Record<string, string> = {}
    for (const name of this.#socketHeaders) {
      const value = request.headers[name]
      if (typeof value === 'string') carried[name] = value
    }
    const plain = Buffer.from(JSON.stringify(carried))
    // Refused when minted, with its reason, rather than made and then refused by the socket.
    if (plain.length > maxSocketHeaders) throw new FST_TASK_API_TOKEN_TOO_LARGE(plain.length, maxSocketHeaders)
    const stamp = expires.toString(36)
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.#socketKey, iv).setAAD(Buffer.from(stamp))
    const sealed = Buffer.concat([iv, cipher.update(plain), cipher.final(), cipher.getAuthTag()])
    return { token: `${stamp}.${sealed.toString('base64url')}`, expires: new Date(expires).toISOString() }
  }

  /**
   * The headers a socket token carries, or undefined when it is not one this server (or
   * one with its secret) made, has been altered, or has expired.
   */
  openSocketToken (token: unknown): Record<string, string> | undefined {
    if (typeof token !== 'string' || !socketTokenPattern.test(token)) return undefined
    const dot = token.indexOf('.')
    const stamp = token.slice(0, dot)
    const expires = parseInt(stamp, 36)
    if (!Number.isSafeInteger(expires) || expires.toString(36) !== stamp || expires < Date.now()) return undefined
    const sealed = Buffer.from(token.slice(dot + 1), 'base64url')
    if (sealed.length < 12 + 16 + 2) return undefined
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#socketKey, sealed.subarray(0, 12)).setAAD(Buffer.from(stamp))
      decipher.setAuthTag(sealed.subarray(sealed.length - 16))
      const text = Buffer.concat([decipher.update(sealed.subarray(12, sealed.length - 16)), decipher.final()]).toString('utf8')
      const carried = JSON.parse(text) as Record<string, string>
      const headers: Record<string, string> = {}
      for (const name of this.#socketHeaders) {
        if (typeof carried[name] === 'string') headers[name] = carried[name]
      }
      return headers
    } catch {
      return undefined
    }
  }

  #sign (uuid: string, expires: number): string {
    return createHmac('sha256', this.#secret).update(`${uuid}.${expires}`).digest('base64url')
  }

  /**
   * Refuses cross-site requests: WebSocket upgrades (cross-site WebSocket hijacking) and
   * the REST routes that change state (cross-site request forgery). A browser sends its
   * cookies with both, whatever page asked, so a cookie session alone would let another
   * site act as the user. Browsers say where a request comes from: `Origin` (always, on
   * upgrades and POSTs) and `Sec-Fetch-Site`; a page cannot forge either. The request's own
   * origin and the `allowedOrigins` pass; clients that send neither header (curl, servers,
   * not browsers) pass too.
   */
  checkOrigin (request: FastifyRequest): Error | undefined {
    const allowed = this.#options.allowedOrigins
    if (allowed === '*') return undefined
    const { origin, 'sec-fetch-site': site } = request.headers
    if (origin === undefined) {
      // Without Origin a browser still says whether the page was of this site.
      return site === 'cross-site' || site === 'same-site' ? new FST_TASK_API_ORIGIN_FORBIDDEN(`a ${site} page`) : undefined
    }
    if (allowed?.includes(origin) === true || this.#isOwnOrigin(origin, request)) return undefined
    // Behind a proxy that rewrites Host, the browser's own verdict is the one to trust.
    if (site === 'same-origin') return undefined
    return new FST_TASK_API_ORIGIN_FORBIDDEN(clip(origin))
  }

  #isOwnOrigin (origin: string, request: FastifyRequest): boolean {
    try {
      return new URL(origin).host === request.headers.host
    } catch {
      return false // "null" (sandboxed frames, file: pages) and garbage
    }
  }

  /** Refuses an invalid token with 401. */
  static invalidToken (): Error {
    return new FST_TASK_API_TOKEN_INVALID()
  }
}

/**
 * A strategy's refusal as the error answered: a 401 (unless it says another 4xx or 5xx)
 * with a code (its own, else FST_TASK_API_UNAUTHENTICATED); the message is the
 * strategy's, cut and escaped when it was not an Error's.
 */
function refusal (err: unknown): Error {
  const { statusCode } = (typeof err === 'object' && err !== null ? err : {}) as { statusCode?: unknown }
  const status = typeof statusCode === 'number' && statusCode >= 400 && statusCode <= 599 ? statusCode : 401
  const error = answerable(err, status, 'FST_TASK_API_UNAUTHENTICATED', 'authentication is required')
  if (error !== err) error.message = clip(error.message, 1000)
  return error
}

/**
 * Whatever was thrown (an Error, a frozen one, a plain object, a string), as an error
 * Fastify answers with this status and code: the thrown error itself when it can take
 * them (its `code` kept when it has one), else a new Error with its message (or
 * `fallbackMessage`) and the thrown value as `cause`. Rethrown as it was, a string made
 * the process crash and a plain object an answer of 200.
 */
export function answerable (thrown: unknown, status: number, fallbackCode: string, fallbackMessage: string): Error & { statusCode: number, code: string } {
  const { code, message } = (typeof thrown === 'object' && thrown !== null ? thrown : {}) as { code?: unknown, message?: unknown }
  const answerCode = typeof code === 'string' && code !== '' ? code : fallbackCode
  if (thrown instanceof Error && Object.isExtensible(thrown)) return Object.assign(thrown, { statusCode: status, code: answerCode })
  const text = typeof message === 'string' ? message : typeof thrown === 'string' ? thrown : fallbackMessage
  return Object.assign(new Error(text, { cause: thrown }), { statusCode: status, code: answerCode })
}
