import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv'
import addFormatsModule from 'ajv-formats'
import { OptionalKind, type TProperties, type TSchema } from '@sinclair/typebox'
import { clip } from './text.js'

/*
 * Inputs and outputs are TypeBox schemas (plain JSON Schema underneath). Each task's
 * input schema is compiled once, at registration, into a converter plus an Ajv
 * validator. The converter applies the seed's conversions (django-task-api's
 * parameters) before validation; Ajv then checks the converted value strictly.
 *
 * Ajv's own `coerceTypes` is close but not the seed: it also turns null into 0, ""
 * or false and true into 1, which would let nonsense through. So conversion is ours
 * and narrow, and validation is Ajv's.
 */

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

/** A compiled checker: converts in place where the seed converts, then validates. */
export interface CompiledSchema {
  /**
   * Returns the converted value, or error text naming every field that fails (the first
   * `maxReported`, then how many more), one per field.
   */
  check (value: Record<string, unknown>): { value: Record<string, unknown>, error?: undefined } | { error: string }
}

/** How many failing fields an error names before it says "and N more". */
export const maxReported = 5

function newAjv (): Ajv {
  const ajv = new Ajv({
    // First error only: Ajv's allErrors would walk all of a hostile 256 KiB list of wrong
    // items (70 ms of the event loop per request, measured). Every failing input is still
    // named: on failure, each input is checked on its own (compileParameters).
    allErrors: false,
    useDefaults: true,
    coerceTypes: false,
    removeAdditional: false,
    strict: false,
    // strict: false would turn this off too: NaN and Infinity are never numbers here.
    strictNumbers: true,
  })
  addFormats(ajv)
  return ajv
}

/** The object schema that holds a set of named parameters; required unless Optional. */
export function objectSchema (properties: TProperties): TSchema {
  const required = Object.entries(properties)
    .filter(([, schema]) => !isOptional(schema))
    .map(([key]) => key)
  return { type: 'object', properties, required } as unknown as TSchema
}

function isOptional (schema: TSchema): boolean {
  return (schema as unknown as Record<symbol, unknown>)[OptionalKind] === 'Optional'
}

/**
 * The schema Ajv compiles: plain JSON (TypeBox's symbol keys left out), with TypeBox's
 * any-key pattern of `Type.Record(Type.String(), T)`, `^(.*)$`, made to match every key:
 * `.` stops at line terminators, and a key with a newline escaped the value's schema.
 */
function compilable (schema: TSchema): Record<string, unknown> {
  return JSON.parse(JSON.stringify(schema), (key, value: unknown) => {
    if (key !== 'patternProperties' || typeof value !== 'object' || value === null || !Object.hasOwn(value, anyKey)) return value
    const { [anyKey]: each, ...others } = value as Record<string, unknown>
    return { ...others, [everyKey]: each }
  }) as Record<string, unknown>
}
const anyKey = '^(.*)$'
const everyKey = '^[\\s\\S]*$'

/**
 * Compiles a set of named parameters. `convert` turns on the seed's conversions and
 * drops undeclared keys (inputs); outputs are only validated. `label` prefixes paths
 * in error messages: `inputs/count must be integer`.
 *
 * Each set gets an Ajv of its own (0.6 ms): a recursive schema's `$id` is then added once,
 * whatever else the process compiled. The whole object is checked with a first-error
 * validator; on failure, each input on its own (a `$ref` into the same schema), so that
 * every failing input is named, at the cost of one first-error pass each.
 */
export function compileParameters (properties: TProperties, label: string, convert: boolean): CompiledSchema {
  const ajv = newAjv()
  const validate = ajv.compile({ ...compilable(objectSchema(properties)), $id: 'parameters' })
  const each = Object.keys(properties).map(key => ({
    key,
    required: !isOptional(properties[key] as TSchema),
    validate: ajv.compile({ $ref: `parameters#/properties/${encodeURIComponent(escapePointer(key))}` }),
  }))
  return {
    check (value) {
      const converted = convert ? convertObject(properties, value) : value
      if (validate(converted)) return { value: convert ? plain(converted) as Record<string, unknown> : converted }
      const errors = failures(each, converted)
      return { error: formatErrors(errors.length > 0 ? errors : validate.errors as ErrorObject[], label, value, converted) }
    },
  }
}

/**
 * Every failing input's first failure, in declaration order: a missing required one, or
 * its own validator's first error (its path made absolute). One first-error pass per
 * input: bounded, whatever the inputs hold.
 */
function failures (each: Array<{ key: string, required: boolean, validate: ValidateFunction }>, value: Record<string, unknown>): ErrorObject[] {
  const errors: ErrorObject[] = []
  for (const { key, required, validate } of each) {
    if (!Object.hasOwn(value, key) || value[key] === undefined) {
      if (required) errors.push({ keyword: 'required', instancePath: '', schemaPath: '#/required', params: { missingProperty: key } })
      continue
    }
    if (validate(value[key])) continue
    const first = (validate.errors as ErrorObject[])[0] as ErrorObject
    errors.push({ ...first, instancePath: `/${escapePointer(key)}${first.instancePath}` })
  }
  return errors
}

/**
 * One message per failing input (its first failure), in the order found, capped at
 * `maxReported`. Keys in paths are the client's: each is cut and escaped (text.ts).
 */
function formatErrors (errors: ErrorObject[], label: string, given: Record<string, unknown>, converted: Record<string, unknown>): string {
  const messages = new Map<string, string>()
  for (const error of errors) {
    const [segments, message] = describeError(error, given, converted)
    // An input is named once: a union's branches, or the whole-object fallback, may say more.
    const input = segments[0] ?? ''
    if (!messages.has(input)) messages.set(input, `${label}${pathText(segments)} ${message}`)
  }
  const all = [...messages.values()]
  const shown = all.slice(0, maxReported).join('; ')
  return all.length > maxReported ? `${shown}; and ${all.length - maxReported} more` : shown
}

/** `/a/b` for path segments, each cut to 32 characters and escaped, the whole to 256. */
function pathText (segments: string[]): string {
  return clip(segments.map(segment => `/${clip(segment, 32)}`).join(''), 256)
}

function describeError (error: ErrorObject, given: Record<string, unknown>, converted: Record<string, unknown>): [string[], string] {
  const segments = error.instancePath === '' ? [] : error.instancePath.slice(1).split('/').map(unescapePointer)
  const change = typeChange(segments, given, converted)
  if (change !== undefined) return [change.segments, `must be ${change.wanted}, got ${change.given}`]
  if (error.keyword === 'required') return [[...segments, String(error.params.missingProperty)], 'is required']
  if (error.keyword === 'additionalProperties') return [[...segments, String(error.params.additionalProperty)], 'is not allowed']
  return [segments, error.message ?? 'is invalid']
}

/**
 * Whether a conversion changed the JSON type of the value at `segments` or above it in a
 * way that can fail later (a number made a string, a single value made a list): then the
 * failure is the client's wrong type, reported as such ("must be string, got number")
 * rather than as the converted value's ("must match format"). Walks the given and the
 * converted values side by side: O(depth), nothing kept while converting.
 */
function typeChange (segments: string[], given: unknown, converted: unknown): { segments: string[], given: string, wanted: string } | undefined {
  let before = given
  let after = converted
  for (let depth = 0; depth <= segments.length; depth++) {
    if (Array.isArray(after) && !Array.isArray(before) && before !== undefined) return { segments: segments.slice(0, depth), given: jsonKind(before), wanted: 'array' }
    if (typeof after === 'string' && typeof before === 'number') return { segments: segments.slice(0, depth), given: 'number', wanted: 'string' }
    if (depth === segments.length || typeof before !== 'object' || before === null || typeof after !== 'object' || after === null) return undefined
    const key = segments[depth] as string
    before = Object.hasOwn(before, key) ? (before as Record<string, unknown>)[key] : undefined
    after = Object.hasOwn(after, key) ? (after as Record<string, unknown>)[key] : undefined
  }
  return undefined
}

const jsonKind = (value: unknown): string => value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value

/**
 * A union converts with its first branch that can take the value: a value that already
 * has one of the branches' types is kept as it is (5 stays 5 for String | Number).
 */
function convertUnion (branches: TSchema[], value: unknown): unknown {
  const type = jsonType(value)
  if (branches.some(branch => types(branch).some(kind => kind === type || (kind === 'number' && type === 'integer')))) return value
  for (const branch of branches) {
    const converted = convertValue(branch, value)
    if (converted !== value) return converted
  }
  return value
}

function jsonType (value: unknown): string {
  if (Array.isArray(value)) return 'array'
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number'
  return typeof value
}

// Matched against trimmed text. Each part consumes its own characters (no two quantifiers
// can take the same digits), so a long string costs one pass: test/redos.test.ts checks it.
const numeric = /^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$/

/** A numeric string's finite value; anything else (words, `Infinity`, `1e309`) unchanged. */
function toNumber (value: string): unknown {
  const text = value.trim()
  if (!numeric.test(text)) return value
  const number = Number(text)
  return Number.isFinite(number) ? number : value
}

function types (schema: TSchema): string[] {
  const type = (schema as { type?: unknown }).type
  if (typeof type === 'string') return [type]
  if (Array.isArray(type)) return type.filter((t): t is string => typeof t === 'string')
  return []
}

/**
 * Builds a new object with only the declared keys, each converted. Never mutates the
 * input. It has no prototype while it is validated: Ajv must not read `valueOf` or
 * `constructor` of Object.prototype as inputs the client sent (`plain` gives it one after).
 */
function convertObject (properties: TProperties, value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = Object.create(null) as Record<string, unknown>
  for (const key of Object.keys(properties)) {
    if (!Object.hasOwn(value, key)) continue
    const item = value[key]
    // Keys come from the schema, never from the client: a client's "__proto__" cannot land here.
    out[key] = convertValue(properties[key] as TSchema, item)
  }
  return out
}

/** The converted inputs with ordinary objects again (the prototype-less ones made plain). */
function plain (value: unknown): unknown {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = plain(value[i])
    return value
  }
  if (typeof value !== 'object' || value === null || Object.getPrototypeOf(value) !== null) return value
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(value)) {
    Object.defineProperty(out, key, { value: plain((value as Record<string, unknown>)[key]), enumerable: true, writable: true, configurable: true })
  }
  return out
}

/** A key as a JSON pointer segment, as Ajv writes instancePath. */
function escapePointer (key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1')
}

function unescapePointer (segment: string): string {
  return segment.replace(/~1/g, '/').replace(/~0/g, '~')
}

/**
 * The seed's conversions, one schema level at a time. A value that cannot be converted
 * is returned unchanged so that validation reports it against its schema.
 */
function convertValue (schema: TSchema, value: unknown): unknown {
  if (value === undefined || value === null) return value
  const branches = (schema as { anyOf?: unknown }).anyOf ?? (schema as { oneOf?: unknown }).oneOf
  if (Array.isArray(branches)) return convertUnion(branches as TSchema[], value)
  const kinds = types(schema)
  if (kinds.length === 0) return value
  if (kinds.includes('array')) {
    const list = Array.isArray(value) ? value : [value]
    const items = (schema as { items?: unknown }).items
    if (typeof items === 'object' && items !== null && !Array.isArray(items)) {
      return list.map(item => convertValue(items as TSchema, item))
    }
    return list
  }
  const kind = kinds[0]
  switch (kind) {
    case 'integer':
    case 'number':
      return typeof value === 'string' ? toNumber(value) : value
    case 'string':
      if (typeof value === 'number' && Number.isFinite(value)) return String(value)
      return value
    case 'boolean':
      if (value === 'true' || value === 1) return true
      if (value === 'false' || value === 0) return false
      return value
    case 'object': {
      const properties = (schema as { properties?: unknown }).properties
      if (typeof value !== 'object' || Array.isArray(value) || typeof properties !== 'object' || properties === null) return value
      const source = value as Record<string, unknown>
      // No prototype while validated, as at the top (convertObject).
      const out: Record<string, unknown> = Object.create(null) as Record<string, unknown>
      for (const key of Object.keys(source)) {
        const sub = (properties as Record<string, TSchema>)[key]
        const converted = sub !== undefined && Object.hasOwn(properties, key) ? convertValue(sub, source[key]) : source[key]
        Object.defineProperty(out, key, { value: converted, enumerable: true, writable: true, configurable: true })
      }
      return out
    }
    default:
      return value
  }
}

/** What a walk over inputs found past its bounds. */
export type InputExcess =
  | { limit: 'size' }
  | { limit: 'depth', path: string[] }
  | { limit: 'finite', path: string[] }

/**
 * Measures inputs before anything else sees them: their nesting depth (the inputs object
 * is depth 1) and their size as JSON, in one walk that stops as soon as a bound is
 * passed, so a hostile body costs at most `maxSize` bytes of work. The size counts strings
 * in UTF-8 bytes without their escapes: within a few bytes of `JSON.stringify`'s length,
 * at a fraction of its cost, and the walk never recurses deeper than `maxDepth` (a
 * stringify of a very deep value overflows the stack). Non-finite numbers (`1e309` parses
 * to Infinity) are refused too: JSON has no way to say them.
 */
export function measureInputs (inputs: Record<string, unknown>, maxSize: number, maxDepth: number): InputExcess | undefined {
  const walk = new InputWalk(maxSize, maxDepth)
  const found = walk.visit(inputs, 1)
  if (found === undefined) return undefined
  // The path was gathered innermost first, on the way back up.
  if (found.limit !== 'size') found.path.reverse()
  return found
}

class InputWalk {
  #budget: number
  readonly #maxDepth: number

  constructor (maxSize: number, maxDepth: number) {
    this.#budget = maxSize
    this.#maxDepth = maxDepth
  }

  visit (value: unknown, depth: number): InputExcess | undefined {
    switch (typeof value) {
      case 'string':
        this.#budget -= stringLength(value)
        return this.#budget < 0 ? { limit: 'size' } : undefined
      case 'number':
        if (!Number.isFinite(value)) return { limit: 'finite', path: [] }
        this.#budget -= numberLength(value)
        return this.#budget < 0 ? { limit: 'size' } : undefined
      case 'object':
        if (value === null) break
        if (depth > this.#maxDepth) return { limit: 'depth', path: [] }
        return Array.isArray(value) ? this.#array(value, depth) : this.#object(value as Record<string, unknown>, depth)
      default:
        break
    }
    this.#budget -= 5 // null, true, false: near enough
    return this.#budget < 0 ? { limit: 'size' } : undefined
  }

  #array (list: unknown[], depth: number): InputExcess | undefined {
    this.#budget -= 1 + list.length
    if (this.#budget < 0) return { limit: 'size' }
    for (let i = 0; i < list.length; i++) {
      const found = this.visit(list[i], depth + 1)
      if (found !== undefined) return within(found, String(i))
    }
    return undefined
  }

  #object (object: Record<string, unknown>, depth: number): InputExcess | undefined {
    const keys = Object.keys(object)
    this.#budget -= 1 + keys.length
    if (this.#budget < 0) return { limit: 'size' }
    for (const key of keys) {
      this.#budget -= stringLength(key) + 1
      const found = this.visit(object[key], depth + 1)
      if (found !== undefined) return within(found, key)
    }
    return this.#budget < 0 ? { limit: 'size' } : undefined
  }
}

function within (found: InputExcess, key: string): InputExcess {
  if (found.limit !== 'size') found.path.push(key)
  return found
}

/** Bytes of a string as JSON, quotes included, escapes not. */
function stringLength (text: string): number {
  // Native, and faster than a charCodeAt loop in JavaScript even for short ASCII strings.
  return Buffer.byteLength(text) + 2
}

/** Characters of a finite number as JSON, without making the string for most of them. */
function numberLength (value: number): number {
  if (Number.isSafeInteger(value)) {
    let length = value < 0 ? 2 : 1
    for (let rest = Math.abs(value); rest >= 10; rest = Math.floor(rest / 10)) length++
    return length
  }
  return String(value).length
}
