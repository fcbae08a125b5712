// The library API (package root). See README.md "Library API".
export { VERSION } from './version.js';
export { V4tuneError, InputError } from './errors.js';
// recipes
export { loadRecipe, parseRecipe, type LoadedRecipe } from './recipe/load.js';
export { recipeSchema, type Recipe } from './recipe/schema.js';
// data
export { prepareDataset, type PrepareOptions, type PrepareSummary } from './data/prepare.js';
export { openDataset, type Dataset, type DatasetRow, type Split } from './data/dataset.js';
// model
export { loadModel, type LoadModelOptions } from './model/load.js';
export { V4Model, type ForwardOptions, type GradOptions, type LossResult, type LossAndGrads, type ModelAdapter, type RoutingObserver, type LinearInputObserver, type MtpAgreement } from './model/v4/model.js';
export { Checkpoint } from './model/checkpoint.js';
export { parseConfig, type V4Config } from './model/config.js';
export { initModel, type InitOptions } from './model/init.js';
// chat: the template training renders through and every written model folder carries
export { V4_CHAT_TEMPLATE, renderChat, chatRefusal, type ChatMessage, type RenderChatOptions } from './chat/template.js';
export { readChatTemplate, stampChatTemplate } from './chat/config.js';
export { generateTokens, sampleToken, type GenerateOptions } from './chat/generate.js';
// LoRA
export { createAdapter, Adapter } from './lora/adapter.js';
export { saveAdapter, loadAdapter } from './lora/peft.js';
export type { LoraOptions } from './lora/config.js';
// export
export { mergeAdapter, type MergeOptions, type MergeSummary } from './export/merge.js';
export { quantizeCheckpoint, type QuantizeOptions, type QuantizeSummary } from './export/quantize.js';
// backends
export type { Backend, BackendName, LoraFactors } from './backend/ops.js';
