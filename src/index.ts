// The library API (package root). See README.md "Library API".
export { VERSION } from './version.js';
export { V4tuneError, InputError, NonFiniteError } from './errors.js';
// how a stage talks to its caller
export { lineSink, silentSink, type Sink, type Progress } from './sink.js';
// recipes and their run folder
export { loadRecipe, parseRecipe, type LoadedRecipe } from './recipe/load.js';
export { recipeSchema, type Recipe } from './recipe/schema.js';
export { RUN_FILES, runPath, recipeModelDir, type RunFile } from './recipe/layout.js';
export { recipeTokenizer } from './recipe/model.js';
// the stages: each takes a parsed recipe, a Sink and options, and returns its typed result
export { prepareRecipe, preparedJson, type PrepareRecipeOptions } from './stages/prepare.js';
export { ensureModel, type ModelStageResult } from './stages/model.js';
export { profileRecipe, profiledSubset, type ProfileRecipeOptions, type ProfileSummary } from './stages/profile.js';
export { trainRecipe, trainSettings, EXIT_INTERRUPTED, type TrainRecipeOptions, type TrainSummary } from './stages/train.js';
export { evalRecipe, type EvalRecipeOptions, type EvalSummary } from './stages/eval.js';
export { generateText, type GenerateRequest, type GenerateResult } from './stages/generate.js';
export { mergeRecipe, mergeModel, recipeMergePaths, type MergePaths, type MergeRecipeOptions } from './stages/merge.js';
export { quantizeRecipe, calibrationRows, type QuantizeRecipeOptions } from './stages/quantize.js';
export { reportRecipe, type ReportRecipeOptions, type ReportResult, type RunReport } from './stages/report.js';
export { runRecipe, type RunSummary } from './stages/run.js';
// data
export { prepareDataset, type PrepareOptions, type PrepareSummary } from './data/prepare.js';
export { openDataset, type Dataset, type DatasetRow, type Split } from './data/dataset.js';
export { loadTokenizer, type TextTokenizer } from './data/tokenizer.js';
// model
export { loadModel, type LoadModelOptions } from './model/load.js';
export { V4BlockStream, V4Model, type StreamRow, type ForwardOptions, type GradOptions, type LossResult, type LossAndGrads, type ModelAdapter, type RoutingObserver, type LinearInputObserver, type MtpAgreement } from './model/v4/model.js';
export { Checkpoint } from './model/checkpoint.js';
export { parseConfig, type V4Config } from './model/config.js';
export { initModel, type InitOptions } from './model/init.js';
export { generateTokens, sampleToken, type GenerateOptions } from './model/generate.js';
// chat: the template training renders through and every written model folder carries
export { V4_CHAT_TEMPLATE, renderChat, chatRefusal, type ChatMessage, type RenderChatOptions } from './chat/template.js';
export { readChatTemplate, stampChatTemplate } from './chat/config.js';
// LoRA
export { createAdapter, Adapter } from './lora/adapter.js';
export { saveAdapter, loadAdapter } from './lora/peft.js';
export type { LoraOptions } from './lora/config.js';
// training, for custom loops: the trainer (one optimizer step at a time), AdamW, the schedule,
// a whole resumable run on disk, and the eval over a dataset
export { Trainer, stepGradients, type TrainSettings, type TrainerState, type StepRecord, type EvalResult } from './train/trainer.js';
export { adamwUpdate, zeroMoments, ADAMW_DEFAULTS, type AdamWHyper, type Moments } from './train/adamw.js';
export { learningRate, type ScheduleKind, type ScheduleOptions } from './train/schedule.js';
export { runTraining, type RunTrainingOptions, type TrainResult } from './train/run.js';
export { evaluate, type EvaluateOptions } from './train/evaluate.js';
// export
export { mergeAdapter, type MergeOptions, type MergeSummary } from './export/merge.js';
export { quantizeCheckpoint, type QuantizeOptions, type QuantizeSummary } from './export/quantize.js';
// backends
export type { Backend, BackendName, LoraFactors } from './backend/ops.js';
