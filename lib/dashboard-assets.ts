import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { redactedRequest } from './access.js'
import { documented } from './openapi.js'
import { paths } from './routes.js'

/*
 * The dashboard's page (lib/dashboard, built by `npm run build` into dist/dashboard),
 * served at `GET {prefix}/dashboard` when the plugin is registered with
 * `dashboard: true`. The three files hold no data: everything the page shows comes
 * from the API's own routes, under their `auth`, `owner` and `authorize`. That is also
 * why the page itself is served to anyone: a browser that signs in with a bearer token
 * cannot send it when it navigates to the page.
 */
const distUrl = new URL('../dist/dashboard/', import.meta.url)

/** One file, ready to send: its bytes, gzipped bytes and ETag. */
interface Asset { body: Buffer, gzip: Buffer, etag: string, type: string }

/** The page's files as read from dist/dashboard, the HTML still a template. */
export interface DashboardAssets { html: string, script: Buffer, style: Buffer, version: string }

let loaded: Promise<DashboardAssets> | undefined

/** Reads the built page once per process; rejects with an error saying how to build it when it is missing. */
export function loadDashboard (): Promise<DashboardAssets> {
  loaded ??= Promise.all(['index.html', 'app.js', 'app.css'].map(name => readFile(new URL(name, distUrl)))).then(
    ([html, script, style]) => ({
      html: (html as Buffer).toString('utf8'),
      script: script as Buffer,
      style: style as Buffer,
      version: createHash('sha256').update(script as Buffer).update(style as Buffer).digest('base64url').slice(0, 12),
    }),
    (err: Error) => {
      loaded = undefined
      throw new Error(`fastify-task-api: the dashboard cannot be read at ${fileURLToPath(distUrl)} ` +
        `(run \`npm run build\`, or register without dashboard: true): ${err.message}`)
    })
  return loaded
}

const escapeHtml = (text: string): string =>
  text.replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`)

function asset (body: Buffer, type: string): Asset {
  return { body, gzip: gzipSync(body, { level: 9 }), etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`, type }
}

/**
 * What the page may do: its own scripts, styles and connections (the API and its
 * WebSockets, which `'self'` covers), nothing inline, nothing from elsewhere, and no
 * framing by another site.
 */
export const dashboardPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/** The page's gzipped bytes, as `npm run build` made them: what the size budget counts. */
export function dashboardSizes (assets: DashboardAssets, prefix = '/tasks'): { html: number, script: number, style: number, total: number } {
  const html = gzipSync(render(assets, prefix), { level: 9 }).length
  const script = gzipSync(assets.script, { level: 9 }).length
  const style = gzipSync(assets.style, { level: 9 }).length
  return { html, script, style, total: html + script + style }
}

function render (assets: DashboardAssets, prefix: string): Buffer {
  const values: Record<string, string> = { prefix: escapeHtml(prefix), version: assets.version }
  return Buffer.from(assets.html.replace(/\{\{(prefix|version)\}\}/g, (_, name: string) => values[name] as string))
}

/**
 * `GET {prefix}/dashboard` (the page), `{prefix}/dashboard/app.js` and
 * `{prefix}/dashboard/app.css`: gzipped for clients that take it, revalidated with
 * their ETags; the scripts and styles are cached for a year under the `?v=` the page
 * names them with (their content's hash).
 */
export function registerDashboard (app: FastifyInstance, prefix: string, assets: DashboardAssets): void {
  const page = asset(render(assets, prefix), 'text/html; charset=utf-8')
  const files: Record<string, Asset> = {
    'app.js': asset(assets.script, 'text/javascript; charset=utf-8'),
    'app.css': asset(assets.style, 'text/css; charset=utf-8'),
  }
  const send = (request: FastifyRequest, reply: FastifyReply, file: Asset): FastifyReply => {
    void reply.header('etag', file.etag).header('vary', 'accept-encoding').header('x-content-type-options', 'nosniff')
    if (request.headers['if-none-match'] === file.etag) return reply.code(304).send()
    void reply.type(file.type)
    if (/\bgzip\b/.test(String(request.headers['accept-encoding'] ?? ''))) {
      return reply.header('content-encoding', 'gzip').send(file.gzip)
    }
    return reply.send(file.body)
  }
  const hidden = documented({ hide: true })
  app.get(`${prefix}/dashboard`, { logSerializers: { req: redactedRequest }, schema: hidden }, async (request, reply) => {
    void reply
      .header('cache-control', 'no-cache')
      .header('content-security-policy', dashboardPolicy)
      .header('referrer-policy', 'no-referrer')
      .header('x-frame-options', 'DENY')
    return send(request, reply, page)
  })
  // The trailing-slash spelling, where the router tells them apart, leads to the page.
  if (paths(app, `${prefix}/dashboard`).length > 1) {
    app.get(`${prefix}/dashboard/`, { schema: hidden }, async (request, reply) => reply.redirect(`${prefix}/dashboard`))
  }
  for (const [name, file] of Object.entries(files)) {
    app.get<{ Querystring: { v?: string } }>(`${prefix}/dashboard/${name}`, { logSerializers: { req: redactedRequest }, schema: hidden }, async (request, reply) => {
      void reply.header('cache-control', request.query.v === assets.version ? 'public, max-age=31536000, immutable' : 'no-cache')
      return send(request, reply, file)
    })
  }
}
