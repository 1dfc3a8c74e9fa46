/**
 * `npm run schema`: writes config/breakwater.schema.json from the zod schema, as `breakwater schema`
 * prints it. A test checks that the committed file is the generated one.
 */
import { writeFileSync } from 'node:fs';
import { configJsonSchema } from '../src/config/schema.js';

writeFileSync(
  new URL('../config/breakwater.schema.json', import.meta.url),
  `${JSON.stringify(configJsonSchema(), null, 2)}\n`,
);
