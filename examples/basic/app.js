// The example application: the task API plus one HTML page that uses it.
import { readFile } from 'node:fs/promises'
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'

/** Builds the example app; `server.js` starts it, the tests inject into it (`options.fastify`: Fastify's own options). */
export async function build (options = {}) {
  const app = Fastify({ logger: options.logger ?? true, ...options.fastify })
  await app.register(taskApi, {
    tasks: [new URL('./tasks/wait.js', import.meta.url)],
    ...options.taskApi,
  })
  const page = await readFile(new URL('./index.html', import.meta.url), 'utf8')
  app.get('/', async (request, reply) => reply.type('text/html; charset=utf-8').send(page))
  return app
}
