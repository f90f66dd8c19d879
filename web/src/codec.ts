// The wire format of docs/api.md: an array is {dtype, shape, data: little-endian bytes}.
import { decode } from "@msgpack/msgpack";

export interface WireArray {
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

export type WireFrame = Record<string, WireArray>;

type NumericCtor =
  | Float32ArrayConstructor | Float64ArrayConstructor | Int8ArrayConstructor
  | Int16ArrayConstructor | Int32ArrayConstructor | Uint8ArrayConstructor
  | Uint16ArrayConstructor | Uint32ArrayConstructor;

const CTORS: Record<string, NumericCtor> = {
  f4: Float32Array, f8: Float64Array, i1: Int8Array, i2: Int16Array, i4: Int32Array,
  u1: Uint8Array, u2: Uint16Array, u4: Uint32Array, b1: Uint8Array,
};

export function unpack<T>(bytes: ArrayBuffer | Uint8Array): T {
  return decode(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes)) as T;
}

/** The array's values as float64 (ints and bools too); 64-bit ints go through BigInt. */
export function toFloat64(array: WireArray): Float64Array {
  const code = array.dtype.slice(1);
  // Copy: msgpack hands out views at arbitrary offsets, typed arrays need alignment.
  const buffer = array.data.slice().buffer;
  if (code === "i8" || code === "u8") {
    const big = code === "i8" ? new BigInt64Array(buffer) : new BigUint64Array(buffer);
    return Float64Array.from(big, (v) => Number(v));
  }
  const ctor = CTORS[code];
  if (!ctor) throw new Error(`unsupported dtype ${array.dtype}`);
  const values = new ctor(buffer);
  return values instanceof Float64Array ? values : Float64Array.from(values);
}
