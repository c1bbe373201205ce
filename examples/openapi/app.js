// The task API described by OpenAPI: @fastify/swagger builds the document from the
// plugin's routes (each task's inputs and outputs included), @fastify/swagger-ui shows it.
import Fastify from 'fastify'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import taskApi from 'fastify-task-api'

/**
 * Builds the example app; `server.js` starts it, the tests inject into it
 * (`options.fastify`: Fastify's own options; `options.taskApi`: the plugin's).
 */
export async function build (options = {}) {
  const app = Fastify({ logger: options.logger ?? true, ...options.fastify })
  // Register @fastify/swagger before the plugin: it collects routes as they are added.
  // OpenAPI 3.1 takes JSON Schema as it is (a Type.Null() input, say); 3.0.3 works too.
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Task API', version: '1.0.0', description: 'Tasks served by fastify-task-api' },
    },
  })
  await app.register(swaggerUi, { routePrefix: '/documentation' })
  await app.register(taskApi, {
    tasks: [new URL('../basic/tasks/wait.js', import.meta.url), new URL('./tasks/report.js', import.meta.url)],
    list: true,
    ...options.taskApi,
  })
  app.get('/', { schema: { hide: true } }, async (request, reply) => reply.redirect('/documentation'))
  return app
}
