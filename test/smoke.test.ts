import { describe, it, expect } from 'vitest';
import { VERSION } from '../src/index.js';
describe('package', () => { it('has a version', () => { expect(VERSION).toMatch(/^\d+\.\d+\.\d+$/); }); });
