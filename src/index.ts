// The library API (package root). See README.md "Library API".
export { VERSION } from './version.js';
export { loadRecipe, parseRecipe, type LoadedRecipe } from './recipe/load.js';
export { recipeSchema, type Recipe } from './recipe/schema.js';
export { V4tuneError, InputError } from './errors.js';
export { loadModel, type LoadModelOptions } from './model/load.js';
export { V4Model, type ForwardOptions, type LossResult, type LossAndGrads, type ModelAdapter } from './model/v4/model.js';
export type { Backend, BackendName, LoraFactors } from './backend/ops.js';
