export const VERSION = '0.1.0';

export { loadModel, type LoadModelOptions } from './model/load.js';
export { V4Model, peftKey, type ForwardOptions, type LossResult, type LossAndGrads, type ModelAdapter } from './model/v4/model.js';
export type { Backend, BackendName, LoraFactors } from './backend/ops.js';
