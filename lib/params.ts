import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv'
import addFormatsModule from 'ajv-formats'
import { OptionalKind, type TProperties, type TSchema } from '@sinclair/typebox'

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
  /** Returns the converted value, or throws-free error text naming the field. */
  check (value: Record<string, unknown>): { value: Record<string, unknown>, error?: undefined } | { error: string }
}

function newAjv (): Ajv {
  const ajv = new Ajv({
    allErrors: false,
    useDefaults: true,
    coerceTypes: false,
    removeAdditional: false,
    strict: false,
  })
  addFormats(ajv)
  return ajv
}

const ajv = newAjv()

/** The object schema that holds a set of named parameters; required unless Optional. */
function objectSchema (properties: TProperties): TSchema {
  const required = Object.entries(properties)
    .filter(([, schema]) => !isOptional(schema))
    .map(([key]) => key)
  return { type: 'object', properties, required } as unknown as TSchema
}

function isOptional (schema: TSchema): boolean {
  return (schema as unknown as Record<symbol, unknown>)[OptionalKind] === 'Optional'
}

/**
 * Compiles a set of named parameters. `convert` turns on the seed's conversions and
 * drops undeclared keys (inputs); outputs are only validated. `label` prefixes paths
 * in error messages: `inputs/count must be integer`.
 */
export function compileParameters (properties: TProperties, label: string, convert: boolean): CompiledSchema {
  const schema = objectSchema(properties)
  const validate = ajv.compile(schema)
  return {
    check (value) {
      const converted = convert ? convertObject(properties, value) : value
      if (validate(converted)) return { value: converted }
      return { error: formatError(validate, label) }
    },
  }
}

function formatError (validate: ValidateFunction, label: string): string {
  const error = (validate.errors as ErrorObject[])[0] as ErrorObject
  if (error.keyword === 'required') {
    return `${label}${error.instancePath}/${String(error.params.missingProperty)} is required`
  }
  if (error.keyword === 'additionalProperties') {
    return `${label}${error.instancePath}/${String(error.params.additionalProperty)} is not allowed`
  }
  return `${label}${error.instancePath} ${error.message ?? 'is invalid'}`
}

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

const numeric = /^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$/

function types (schema: TSchema): string[] {
  const type = (schema as { type?: unknown }).type
  if (typeof type === 'string') return [type]
  if (Array.isArray(type)) return type.filter((t): t is string => typeof t === 'string')
  return []
}

/** Builds a new object with only the declared keys, each converted. Never mutates the input. */
function convertObject (properties: TProperties, value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(properties)) {
    if (!Object.hasOwn(value, key)) continue
    const item = value[key]
    // Keys come from the schema, never from the client: a client's "__proto__" cannot land here.
    out[key] = convertValue(properties[key] as TSchema, item)
  }
  return out
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
      if (typeof value === 'string' && numeric.test(value)) return Number(value)
      return value
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
      const out: Record<string, unknown> = {}
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
