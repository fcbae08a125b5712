// The library API (package root). See README.md "Library API".
export { VERSION } from './version.js';
export { loadRecipe, parseRecipe, type LoadedRecipe } from './recipe/load.js';
export { recipeSchema, type Recipe } from './recipe/schema.js';
export { V4tuneError, InputError } from './errors.js';
