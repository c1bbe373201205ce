import Fastify from 'fastify'
import taskApi from 'fastify-task-api'
const app = Fastify()
await app.register(taskApi, { tasks: [new URL('./stream-tasks.js', import.meta.url)], concurrency: 1, progressInterval: 50, execArgv: [] })
await app.ready()
const every = Number(process.argv[2] ?? 50)
const r = await app.tasks.submit('ticker', { every, count: 200, delay: 200 })
const out = []
let prev
app.tasks.subscribe(r.uuid, e => { if (e.type === 'progress') { const t = performance.timeOrigin + performance.now(); out.push(`${(t - e.progress).toFixed(1)}${prev ? '@' + (e.progress - prev).toFixed(1) : ''}`); prev = e.progress } })
const f = await app.tasks.wait(r.uuid)
console.log(out.map((x,i)=>[i,x]).filter(([i,x])=>parseFloat(x)>6).map(([i,x])=>i+":"+x).join(" "))
console.log(out.length, f.outputs)
await app.close()
