// graphlens for JavaScript: read, patch and steer graphlens ONNX bundles with any onnxruntime binding.
export { loadBundle, Bundle, FORMAT_VERSION } from './bundle.js';
export { Tokenizer } from './tokenizer.js';
export { GraphlensError } from './errors.js';
export { toFloat32, toTensor } from './tensors.js';
export { toHalfBits, fromHalfBits } from './float16.js';
