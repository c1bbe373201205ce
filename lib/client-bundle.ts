import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { redactedRequest } from './access.js'

/*
 * The browser client (lib/client, bundled and minified by esbuild into
 * dist/client.min.js by `npm run build`), served at `GET {prefix}/client.js` as
 * django-task-api ships its static file. The path works from lib/ (under tsx) and from
 * dist/ alike.
 */
const bundleUrl = new URL('../dist/client.min.js', import.meta.url)

/** The bundle's bytes and ETag. */
export interface ClientBundle { body: Buffer, etag: string }

let loaded: Promise<ClientBundle> | undefined

/** Reads the bundle once per process; rejects with an error saying how to build it when it is missing. */
export function loadClientBundle (): Promise<ClientBundle> {
  loaded ??= readFile(bundleUrl).then(
    body => ({ body, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` }),
    (err: Error) => {
      loaded = undefined
      throw new Error(`fastify-task-api: the browser client bundle cannot be read at ${fileURLToPath(bundleUrl)} ` +
        `(run \`npm run build\`, or register with client: false): ${err.message}`)
    })
  return loaded
}

/** `GET {prefix}/client.js`: the client as an ES module, cached by the browser and revalidated with its ETag. */
export function registerClientBundle (app: FastifyInstance, prefix: string, { body, etag }: ClientBundle): void {
  app.get(`${prefix}/client.js`, { logSerializers: { req: redactedRequest } }, async (request, reply) => {
    void reply
      .header('cache-control', 'public, max-age=3600, must-revalidate')
      .header('etag', etag)
      .header('x-content-type-options', 'nosniff')
    if (request.headers['if-none-match'] === etag) return await reply.code(304).send()
    return await reply.type('text/javascript; charset=utf-8').send(body)
  })
}
