// fastify-task-api behind bearer tokens. Every route of the plugin needs
// `Authorization: Bearer <token>`; each user sees only their own tasks. A browser cannot
// set headers on a WebSocket, so it asks GET /tasks/:uuid/token (with its header) for a
// short-lived stream token and opens /tasks/:uuid/events?token=… with it.
//
//   node examples/auth/bearer.js
//   curl -s -X POST localhost:3000/tasks -H 'authorization: Bearer demo-alice' \
//        -H 'content-type: application/json' -d '{"task":"wait","inputs":{"seconds":3}}'
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'

/** Demo users, keyed by token. A real app checks a JWT or a database. */
const users = new Map([
  ['demo-alice', { name: 'alice', admin: true }],
  ['demo-bob', { name: 'bob', admin: false }],
])

export async function build (options = {}) {
  const app = Fastify({ logger: options.logger ?? true, ...options.fastify })
  await app.register(taskApi, {
    tasks: [new URL('../basic/tasks/wait.js', import.meta.url)],
    auth: [async (request) => {
      const token = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1]
      const user = token === undefined ? undefined : users.get(token)
      if (user === undefined) throw new Error('a valid bearer token is required')
      request.user = user
    }],
    owner: request => request.user.name,
    // Only admins may run tasks longer than a minute.
    authorize: (request, { action, inputs }) => action !== 'submit' || request.user.admin || (inputs.seconds ?? 10) <= 60,
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
