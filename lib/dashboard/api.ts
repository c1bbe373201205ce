import { createClient, TaskApiError } from '../client/index.js'

/*
 * The REST side: the project's client for the task routes, one small GET for the others
 * (stats, the events token), and the bearer token kept in sessionStorage. Cookie sessions
 * need nothing: same-origin fetches send them.
 */

const tokenKey = 'fastify-task-api:token'

/** The plugin's prefix, as the server wrote it into the page (`/tasks` when opened as a file). */
export const prefix = ((): string => {
  const given = document.body.dataset['prefix'] ?? ''
  if (given.startsWith('{{')) return '/tasks'
  return given.endsWith('/') ? given.slice(0, -1) : given
})()

/** The bearer token in use, or null (cookie session, or none yet). */
export function readToken (): string | null {
  try {
    return sessionStorage.getItem(tokenKey)
  } catch {
    return null
  }
}

/** Keeps a token for this tab's session, or forgets it (null). */
export function saveToken (token: string | null): void {
  try {
    if (token === null) sessionStorage.removeItem(tokenKey)
    else sessionStorage.setItem(tokenKey, token)
  } catch {
    // Storage refused (private mode): the token lasts until the page is left.
  }
  memoryToken = token
}
let memoryToken: string | null = null

const headers = (): Record<string, string> => {
  const token = readToken() ?? memoryToken
  return token === null ? {} : { authorization: `Bearer ${token}` }
}

export const client = createClient({
  baseURL: `${location.origin}${prefix}`,
  headers,
  fetch: (input, init) => fetch(input, { ...init, credentials: 'same-origin', cache: 'no-store' }),
  transports: [],
})

/** GET `{prefix}{path}` as JSON; refusals and network failures reject as the client's do. */
export async function getJSON<T> (path: string): Promise<T> {
  const url = `${prefix}${path}`
  let response: Response
  try {
    response = await fetch(url, { headers: headers(), credentials: 'same-origin', cache: 'no-store' })
  } catch (err) {
    throw new TaskApiError(0, { message: `the task API could not be reached (GET ${url}): ${(err as Error).message}` }, { cause: err })
  }
  const body = await response.json().catch(() => undefined) as { message?: string, code?: string } | undefined
  if (!response.ok) throw new TaskApiError(response.status, body)
  return body as T
}

/** The URL of the multiplexed socket; with a bearer token, a fresh events token in its query. */
export async function eventsURL (): Promise<string> {
  const url = new URL(`${prefix}/events`, location.href)
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:'
  if ((readToken() ?? memoryToken) !== null) {
    const { token } = await getJSON<{ token: string }>('/events/token')
    url.searchParams.set('token', token)
  }
  return url.href
}

export { TaskApiError }
