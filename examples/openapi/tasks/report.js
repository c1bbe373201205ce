// A task with richer inputs, to show what the OpenAPI document and the catalog say of
// them: a date range, a choice, a bounded optional number, and a description.
import { setTimeout as sleep } from 'node:timers/promises'
import { defineTask, Type } from 'fastify-task-api/task'

export default defineTask({
  name: 'report',
  description: 'Counts the days of a date range, one step per day (a stand-in for a real report).',
  inputs: {
    from: Type.String({ format: 'date', description: 'first day, YYYY-MM-DD' }),
    to: Type.String({ format: 'date', description: 'last day, YYYY-MM-DD' }),
    format: Type.Optional(Type.Union([Type.Literal('csv'), Type.Literal('json')], { default: 'json' })),
    stepMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, default: 50 })),
  },
  outputs: { days: Type.Integer(), body: Type.String() },
  async run ({ from, to, format = 'json', stepMs = 50 }, task) {
    const first = Date.parse(from)
    const days = Math.max(0, Math.round((Date.parse(to) - first) / 86_400_000) + 1)
    task.setTarget(days)
    const rows = []
    for (let i = 0; i < days; i++) {
      await sleep(stepMs, undefined, { signal: task.signal })
      rows.push(new Date(first + i * 86_400_000).toISOString().slice(0, 10))
      task.incProgress()
    }
    return { days, body: format === 'csv' ? rows.join('\n') : JSON.stringify(rows) }
  },
})
