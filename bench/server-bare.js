// Forked by bench/run.js: a bare Fastify route with the same body schema as POST /tasks,
// replying 201 with a similarly small record. Listens on 127.0.0.1, port 0.
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import { serve } from './serve.js'

const app = Fastify({ logger: false })
app.post('/tasks', {
  schema: {
    body: {
      type: 'object',
      required: ['task'],
      properties: { task: { type: 'string' }, inputs: { type: 'object', properties: { name: { type: 'string' } } } },
    },
    response: {
      201: {
        type: 'object',
        properties: {
          uuid: { type: 'string' },
          task: { type: 'string' },
          status: { type: 'string' },
          progress: { type: ['number', 'null'] },
          target: { type: ['number', 'null'] },
          outputs: { type: 'object', additionalProperties: true },
          messages: { type: 'array', items: { type: 'string' } },
          created: { type: 'string' },
          started: { type: ['string', 'null'] },
          finished: { type: ['string', 'null'] },
          error: { type: ['string', 'null'] },
        },
      },
    },
  },
}, async (request, reply) => {
  return reply.code(201).send({
    uuid: randomUUID(),
    task: request.body.task,
    status: 'pending',
    progress: null,
    target: null,
    outputs: {},
    messages: [],
    created: new Date().toISOString(),
    started: null,
    finished: null,
    error: null,
  })
})
await serve(app)
