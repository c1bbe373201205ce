// The basic example's wait task, saying where it runs: count to `seconds`, one step per
// second. Its first message and its `worker` output name the worker process (the parent
// of the pool child that runs the task), so the page shows which worker took it.
import { hostname } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { defineTask, Type } from 'fastify-task-api/task'

export default defineTask({
  name: 'wait',
  inputs: { seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 600 })) },
  outputs: { waited: Type.Integer(), worker: Type.String() },
  async run ({ seconds = 5 }, task) {
    const worker = `pid ${process.ppid} on ${hostname()}`
    task.addMessage(`running on the worker ${worker}`)
    task.setTarget(seconds)
    task.setProgress(0)
    for (let i = 1; i <= seconds; i++) {
      // Waiting on the task's signal: a cancel ends the task at once.
      await sleep(1000, undefined, { signal: task.signal })
      task.incProgress()
      task.addMessage(`waited ${i} of ${seconds} seconds`)
    }
    return { waited: seconds, worker }
  },
})
