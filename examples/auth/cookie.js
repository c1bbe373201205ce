// fastify-task-api behind a cookie session. POST /login sets a signed session cookie;
// the browser then sends it on every request, WebSocket upgrades included, so the page
// needs no token. The plugin refuses WebSocket upgrades, submits and cancels from pages
// of other origins, which is what stops another site from riding the cookie into a
// socket (cross-site WebSocket hijacking) or into a request (cross-site request forgery).
//
//   node examples/auth/cookie.js
import cookie from '@fastify/cookie'
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'

export async function build (options = {}) {
  const app = Fastify({ logger: options.logger ?? true, ...options.fastify })
  await app.register(cookie, { secret: process.env.COOKIE_SECRET ?? 'demo secret: set COOKIE_SECRET in production' })

  app.post('/login', {
    schema: { body: { type: 'object', required: ['user'], properties: { user: { type: 'string', pattern: '^[a-z]{1,32}$' } } } },
  }, async (request, reply) => {
    // A real app checks a password here.
    reply.setCookie('session', request.body.user, { signed: true, httpOnly: true, sameSite: 'lax', path: '/' })
    return { user: request.body.user }
  })

  await app.register(taskApi, {
    tasks: [new URL('../basic/tasks/wait.js', import.meta.url)],
    auth: [async (request) => {
      const raw = request.cookies.session
      const session = raw === undefined ? undefined : request.unsignCookie(raw)
      if (session === undefined || !session.valid || session.value === null) throw new Error('log in first')
      request.user = session.value
    }],
    owner: request => request.user,
    // GET /tasks/dashboard: each user sees their own tasks there.
    dashboard: true,
    ...options.taskApi,
  })
  return app
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const app = await build()
  await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' })
}
