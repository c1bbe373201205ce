// The README's authentication example, as written there, with the declaration merging
// that types `request.user`: it must compile under `tsc --strict` (test/types.test.ts
// compiles this file on its own with the project's options). Nothing here runs.
import Fastify from 'fastify'
import taskApi from '../../lib/index.js'

interface User { id: string, admin: boolean }

// What the README says to add once in the app: `request.user` is a User.
declare module 'fastify' {
  interface FastifyRequest {
    user: User
  }
}

declare function usersByToken (authorization: string | undefined): Promise<User>
const tasks = [new URL('./tasks/reindex.js', import.meta.url)]
const app = Fastify()

await app.register(taskApi, {
  tasks,
  // @fastify/auth strategies: resolve to accept, throw to refuse (→ 401).
  auth: [async (request) => {
    request.user = await usersByToken(request.headers.authorization)   // throws when unknown
  }],
  authRelation: 'or',                        // how several strategies combine ('or' | 'and')
  // Per-task permission (→ 403): only admins may run or read 'reindex'.
  authorize: (request, { action, task, inputs, record }) => task !== 'reindex' || request.user.admin,
  // Each record stores its owner; another owner's task answers 404, like a missing one.
  owner: request => request.user.id,
})

// @ts-expect-error TS2339 `Property 'name' does not exist on type 'User'`: the merged type is checked
export const wrong = (request: import('fastify').FastifyRequest): string => request.user.name
