// Micro-benchmark: what bounding a submission's inputs costs, measured two ways.
// `npm run build && node bench/input-bounds.js`. The walk (lib/params.ts measureInputs)
// finds depth and size in one pass; the alternative is JSON.stringify for the size plus
// a separate depth check. Each is timed on a small, a medium and a large input.
import { measureInputs } from '../dist/params.js'

// Parsed from JSON text, as a request body is (flat strings, not the ropes templates build).
const inputs = Object.fromEntries(Object.entries({
  'small (the HTTP bench body)': { name: 'x' },
  'medium (20 keys, nested, ~1 KB)': Object.fromEntries(Array.from({ length: 20 }, (_, i) =>
    [`field${i}`, i % 3 === 0 ? { id: i, tags: ['a', 'b'], label: `label ${i}` } : i % 3 === 1 ? i * 1.5 : `value number ${i}`])),
  'large (10,000 numbers and strings, ~150 KB)': { rows: Array.from({ length: 5000 }, (_, i) => [i, `row-${i}-${'x'.repeat(16)}`]) },
}).map(([name, value]) => [name, JSON.parse(JSON.stringify(value))]))
const maxSize = 256 * 1024
const maxDepth = 32

function depthOf (value, depth = 1) {
  if (typeof value !== 'object' || value === null) return depth - 1
  let max = depth
  for (const item of Array.isArray(value) ? value : Object.values(value)) max = Math.max(max, depthOf(item, depth + 1))
  return max
}

const ways = {
  'walk (measureInputs)': value => measureInputs(value, maxSize, maxDepth),
  'JSON.stringify (size only)': value => Buffer.byteLength(JSON.stringify(value)) > maxSize,
  'JSON.stringify + depth walk': value => Buffer.byteLength(JSON.stringify(value)) > maxSize || depthOf(value) > maxDepth,
}

function time (fn, value) {
  const n = Math.max(50, Math.round(2_000_000 / (JSON.stringify(value).length + 50)))
  for (let i = 0; i < n; i++) fn(value) // warm-up
  const runs = []
  for (let round = 0; round < 5; round++) {
    const start = process.hrtime.bigint()
    for (let i = 0; i < n; i++) fn(value)
    runs.push(Number(process.hrtime.bigint() - start) / n / 1000)
  }
  return runs.sort((a, b) => a - b)[2]
}

console.log('| input | ' + Object.keys(ways).join(' | ') + ' |')
console.log('| --- |' + ' --- |'.repeat(Object.keys(ways).length))
for (const [name, value] of Object.entries(inputs)) {
  const cells = Object.values(ways).map(fn => `${time(fn, value).toFixed(3)} µs`)
  console.log(`| ${name} | ${cells.join(' | ')} |`)
}
