// Types for the graphlens JavaScript package (ES module). Tensors are onnxruntime-common Tensors.
import type { InferenceSession, Tensor } from 'onnxruntime-common';

/** A tensor given as data plus dims; float data for float16 inputs is converted (Uint16Array = bit patterns). */
export interface TensorLike {
  data: ArrayLike<number | bigint | boolean>;
  dims: readonly number[];
}
/** An ort.Tensor, {data, dims}, or a nested array such as [[[0.1, 0.2]]]. */
export type FeedValue = Tensor | TensorLike | NestedArray;
export type NestedArray = ReadonlyArray<number | boolean | NestedArray>;

/** Substitution inputs of one hook: Where(patch_mask, patch, activation) + add, each broadcast to the activation. */
export interface SiteFeeds {
  patch?: FeedValue;
  patch_mask?: FeedValue;
  patchMask?: FeedValue;
  add?: FeedValue;
}
/** Keyed by hook name (`{"blocks.1.attn.hook_z": {patch, patch_mask}}`) or by input name (`"<hook>.add"`). */
export type Feeds = Record<string, SiteFeeds | FeedValue>;
export type TokenRows = number[][];

export interface RunResult {
  logits: Tensor;
  hooks: Record<string, Tensor>;
}
export interface StepResult extends RunResult {
  /** The next step's past, keyed by past input name. */
  present: Record<string, Tensor>;
}

export interface LoadOptions {
  /** The binding: `import * as ort from "onnxruntime-node"` (or "onnxruntime-web"). */
  ort: { InferenceSession: unknown; Tensor: unknown };
  /** Read a bundle file by name (browser: fetch); default: Node's fs under the folder given. */
  readFile?: (name: string) => Promise<Uint8Array>;
  sessionOptions?: InferenceSession.SessionOptions;
}

export interface GenerateOptions {
  maxNewTokens?: number;
  /** false: greedy (the first maximum). */
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  freqPenalty?: number;
  /** Seed of the sampler (the same seed gives the same tokens; not numpy's stream). */
  seed?: number;
  stopAtEos?: boolean;
  eosTokenId?: number;
  /** Substitution inputs of the decoder, broadcast over the new positions of every step. */
  feeds?: Feeds;
  prependBos?: boolean;
  paddingSide?: 'left' | 'right';
  /** For token rows: 1 = token, 0 = padding. */
  attentionMask?: TokenRows;
  onToken?: (tokens: number[]) => void;
}

export declare const FORMAT_VERSION: number;

export declare class GraphlensError extends Error {}

export declare class Tokenizer {
  constructor(tokenizerJson: object);
  encode(text: string): number[];
  decode(ids: ArrayLike<number | bigint>, options?: { skipSpecial?: boolean }): string;
}

export declare class Bundle {
  readonly manifest: any;
  readonly cfg: Record<string, any>;
  readonly dtype: string;
  readonly tokenizer: Tokenizer | null;
  readonly session: InferenceSession;
  /** Hook outputs, in TransformerLens order. */
  readonly hookNames: string[];
  /** Hooks whose substitution inputs can be fed here (required inputs of a `graphlens deploy` bundle). */
  readonly patchSites: string[];
  toTokens(input: string | string[], options?: { prependBos?: boolean; paddingSide?: 'left' | 'right' }): { tokens: TokenRows; attentionMask: TokenRows };
  toString(ids: ArrayLike<number | bigint>, options?: { skipSpecial?: boolean }): string;
  /** One pass of model.onnx. */
  run(tokens: number[] | TokenRows | Tensor, options?: { hooks?: string[]; feeds?: Feeds }): Promise<RunResult>;
  /** One decoder step on new tokens after `past` (null: empty); the mask covers past + new positions. */
  step(tokens: number[] | TokenRows | Tensor, options?: { attentionMask?: TokenRows; past?: Record<string, Tensor> | null; hooks?: string[]; feeds?: Feeds }): Promise<StepResult>;
  emptyPast(batch: number): Record<string, Tensor>;
  generate(input: string, options?: GenerateOptions): Promise<string>;
  generate(input: string[], options?: GenerateOptions): Promise<string[]>;
  generate(input: number[] | TokenRows, options?: GenerateOptions): Promise<TokenRows>;
}

export declare function loadBundle(dir: string, options: LoadOptions): Promise<Bundle>;
/** A float32/float16 tensor's values as a Float32Array. */
export declare function toFloat32(tensor: Tensor): Float32Array;
export declare function toTensor(ort: object, value: FeedValue, dtype: string, name: string): Tensor;
export declare function toHalfBits(value: number): number;
export declare function fromHalfBits(bits: number): number;
