// Typed arrays, dtypes and shapes: what goes into and comes out of an onnxruntime Tensor.
import { GraphlensError } from './errors.js';
import { halfArray, floatsFromHalf } from './float16.js';

/** The dims of a nested JavaScript array (`[[1, 2], [3, 4]]` → `[2, 2]`). */
export function nestedDims(value) {
  const dims = [];
  let x = value;
  while (Array.isArray(x)) {
    dims.push(x.length);
    x = x[0];
  }
  return dims;
}

function flat(value) {
  return Array.isArray(value) ? value.flat(Infinity) : value;
}

/** `data` as the typed array an onnxruntime Tensor of `dtype` holds (float16: Uint16 bit patterns). */
export function typedData(data, dtype, isHalfBits = false) {
  switch (dtype) {
    case 'float32':
      return data instanceof Float32Array ? data : Float32Array.from(data, Number);
    case 'float16':
      if (isHalfBits || data instanceof Uint16Array) return data;
      return halfArray(data);
    case 'bool':
      return Uint8Array.from(data, (v) => (v ? 1 : 0));
    case 'int64':
      return data instanceof BigInt64Array ? data : BigInt64Array.from(data, (v) => BigInt(v));
    case 'int32':
      return Int32Array.from(data, Number);
    default:
      throw new GraphlensError(`dtype ${dtype} is not supported by this package`);
  }
}

/**
 * `value` as an onnxruntime Tensor of `dtype`: an ort.Tensor, `{data, dims}`, a nested array, or a flat
 * typed array with `dims`. Float tensors for a float16 input are converted (Uint16Array data is taken as bits).
 */
export function toTensor(ort, value, dtype, name) {
  if (value instanceof ort.Tensor) {
    if (value.type === dtype) return value;
    if (value.type === 'float32' && dtype === 'float16') return new ort.Tensor('float16', halfArray(value.data), value.dims);
    throw new GraphlensError(`${name} must be a ${dtype} tensor, got ${value.type}`);
  }
  let data;
  let dims;
  if (value && typeof value === 'object' && 'data' in value && 'dims' in value) {
    data = value.data;
    dims = value.dims;
  } else if (Array.isArray(value)) {
    data = flat(value);
    dims = nestedDims(value);
  } else {
    throw new GraphlensError(`${name}: give an ort.Tensor, {data, dims} or a nested array`);
  }
  const size = dims.reduce((a, b) => a * b, 1);
  if (data.length !== size) throw new GraphlensError(`${name}: ${data.length} values do not fill dims [${dims}] (${size})`);
  return new ort.Tensor(dtype, typedData(data, dtype), dims.map(Number));
}

/** A Tensor's values as numbers: Float32Array for float16/float32 tensors. */
export function toFloat32(tensor) {
  if (tensor.type === 'float16') return tensor.data instanceof Uint16Array ? floatsFromHalf(tensor.data) : Float32Array.from(tensor.data);
  if (tensor.type === 'float32') return tensor.data;
  return Float32Array.from(tensor.data, Number);
}

/** A tensor filled with a manifest default (`{shape, fill}` or `{shape, values}`). */
export function defaultTensor(ort, spec, dtype) {
  const size = spec.shape.reduce((a, b) => a * b, 1);
  const values = spec.values ?? new Array(size).fill(spec.fill);
  return new ort.Tensor(dtype, typedData(values, dtype), spec.shape);
}

/**
 * Check that `dims` broadcasts to the activation `shape` (numbers, or symbolic names looked up in `sizes`).
 * Returns `dims` with leading 1s up to the rank of `shape`.
 */
export function broadcastDims(dims, shape, sizes, name) {
  if (dims.length > shape.length) throw new GraphlensError(`${name} has ${dims.length} dims; the activation has ${shape.length} ([${shape}])`);
  const full = [...new Array(shape.length - dims.length).fill(1), ...dims];
  const target = shape.map((d) => (typeof d === 'number' ? d : sizes[d]));
  full.forEach((d, i) => {
    if (d !== 1 && target[i] !== undefined && d !== target[i]) {
      throw new GraphlensError(`${name} has dims [${dims}], which do not broadcast to the activation's [${target}] (axis ${i}: ${d} vs ${target[i]})`);
    }
  });
  return full;
}
