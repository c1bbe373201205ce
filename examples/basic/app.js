// The example application: the task API plus one HTML page that uses it.
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'
import { SqliteStore } from 'fastify-task-api/sqlite'

/** Where the example keeps its tasks, unless TASKS_DB names another file. Ignored by git. */
export const defaultDatabase = fileURLToPath(new URL('./data/tasks.db', import.meta.url))

/**
 * Builds the example app; `server.js` starts it, the tests inject into it
 * (`options.fastify`: Fastify's own options; `options.taskApi`: the plugin's, a `store`
 * included; `options.database`: the SQLite file).
 */
export async function build (options = {}) {
  const app = Fastify({ logger: options.logger ?? true, ...options.fastify })
  await app.register(taskApi, {
    tasks: [new URL('./tasks/wait.js', import.meta.url)],
    // Tasks survive a restart: the page shows the last one again.
    store: new SqliteStore({ path: options.database ?? process.env.TASKS_DB ?? defaultDatabase }),
    // The page lists the last task. Without owner or auth the list is off unless asked for:
    // fine for a local demo; a real app scopes tasks with `owner` (see examples/auth).
    list: true,
    // The built-in dashboard, linked from the page: GET /tasks/dashboard.
    dashboard: true,
    ...options.taskApi,
  })
  const page = await readFile(new URL('./index.html', import.meta.url), 'utf8')
  app.get('/', async (request, reply) => reply.type('text/html; charset=utf-8').send(page))
  return app
}
