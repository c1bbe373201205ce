// Shared by the bench scripts: formatting, percentiles, and the markdown report with the
// machine it ran on.
import os from 'node:os'

export const fmt = (n, digits = 0) => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
export const pass = ok => ok ? 'PASS' : 'MISS'

/** The p-th percentile of an ascending array. */
export function percentile (sorted, p) {
  if (sorted.length === 0) return NaN
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p / 100 * sorted.length) - 1))
  return sorted[index]
}

/** A table of results and notes, printed and written as markdown. */
export function createReport () {
  const rows = []
  const notes = []
  const started = performance.now()
  const cpus = os.cpus()
  const machine = [
    `CPU: ${cpus[0]?.model ?? 'unknown'} x ${cpus.length} cores`,
    `Node ${process.version} on ${os.type()} ${os.release()} (${os.arch()})`,
    `Memory: ${fmt(os.totalmem() / 1024 ** 3, 1)} GB total`,
    `Load average at start: ${os.loadavg().map(n => n.toFixed(2)).join(', ')}`,
    `Date: ${new Date().toISOString()}`,
  ]
  for (const line of machine) console.error(line)
  return {
    rows,
    notes,
    row (metric, result, target, verdict) {
      rows.push({ metric, result, target, verdict })
      console.error(`  ${metric}: ${result} (target ${target}) ${verdict}`)
    },
    /** The whole report as markdown; `extra` lines go under the machine lines. */
    markdown (title, extra = []) {
      const header = ['metric', 'result', 'target', 'verdict']
      return [
        `# ${title}`,
        '',
        ...machine.map(line => `- ${line}`),
        ...extra.map(line => `- ${line}`),
        '',
        `| ${header.join(' | ')} |`,
        `| ${header.map(() => '---').join(' | ')} |`,
        ...rows.map(r => `| ${r.metric} | ${r.result} | ${r.target} | ${r.verdict} |`),
        '',
        ...notes.map(note => `- ${note}`),
        `- Total bench time: ${fmt((performance.now() - started) / 1000, 1)} s.`,
        '',
      ].join('\n')
    },
  }
}
