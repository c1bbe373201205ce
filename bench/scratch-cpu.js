import { fork } from 'node:child_process'
import { readFileSync } from 'node:fs'
import autocannon from 'autocannon'
const variants = process.argv.slice(2)
const cpu = pid => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (+f[11] + +f[12]) * 10 }
const kids = (pid) => { try { return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean) } catch { return [] } }
for (let round = 0; round < 2; round++) for (const v of variants) {
  const [file, mode] = v.split(':')
  const child = fork(new URL(file, import.meta.url).pathname, [], { execArgv: mode === 'prof' ? ['--cpu-prof', '--cpu-prof-dir=/tmp/prof'] : [] })
  const port = await new Promise(r => child.on('message', m => m.type === 'listening' && r(m.port)))
  const run = (d) => autocannon({ url: `http://127.0.0.1:${port}/tasks`, method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ task: 'noop', inputs: { name: 'x' } }), connections: 10, duration: d })
  const pids = [child.pid, ...kids(child.pid)]
  if (mode === 'stop') for (const p of pids.slice(1)) process.kill(+p, 'SIGSTOP')
  await run(1)
  const b = pids.map(cpu)
  const r = await run(4)
  console.log(v, 'rps', Math.round(r.requests.average), 'cpu ms server/kids', pids.map((p, i) => cpu(p) - b[i]))
  if (mode === 'stop') for (const p of pids.slice(1)) process.kill(+p, 'SIGCONT')
  await new Promise(res => { child.once('exit', res); child.kill('SIGTERM') })
}
