// Copies the browser files viewcast embeds from the npm packages pinned in package.json (and
// package-lock.json) into vendor/<package>-<version>/, with each package's license. The binary
// includes vendor/ (src/http/assets.rs), so `cargo build` needs no Node; this script is how
// vendor/ is made, and `--check` (run by scripts/test) fails when vendor/ differs from what it
// would make: a file edited by hand, or a version bumped without running it.
//
//   npm ci --prefix console && node console/vendor.mjs           # after changing a version
//   npm ci --prefix console && node console/vendor.mjs --check
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const OUT = join(HERE, 'vendor');
const require = createRequire(import.meta.url);

/** Per package, the files the browser loads (paths inside the package). */
const FILES = {
  graphiql: ['graphiql.min.js', 'graphiql.min.css', 'LICENSE'],
  react: ['umd/react.production.min.js', 'LICENSE'],
  'react-dom': ['umd/react-dom.production.min.js', 'LICENSE'],
  'graphql-ws': ['umd/graphql-ws.min.js', 'LICENSE.md'],
};

/** What vendor/ should hold: relative path → contents. */
function wanted() {
  const files = new Map();
  for (const [name, paths] of Object.entries(FILES)) {
    const root = dirname(require.resolve(`${name}/package.json`));
    const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
    for (const path of paths) {
      const base = path.split('/').pop();
      files.set(`${name}-${version}/${base}`, readFileSync(join(root, path)));
    }
  }
  return files;
}

/** Every file under vendor/ now: relative path → contents. */
function present() {
  const files = new Map();
  if (!existsSync(OUT)) {
    return files;
  }
  for (const dir of readdirSync(OUT)) {
    for (const file of readdirSync(join(OUT, dir))) {
      files.set(`${dir}/${file}`, readFileSync(join(OUT, dir, file)));
    }
  }
  return files;
}

const want = wanted();
if (process.argv.includes('--check')) {
  const have = present();
  const problems = [];
  for (const [path, contents] of want) {
    if (!have.has(path)) {
      problems.push(`missing: vendor/${path}`);
    } else if (!have.get(path).equals(contents)) {
      problems.push(`differs from its package: vendor/${path}`);
    }
  }
  for (const path of have.keys()) {
    if (!want.has(path)) {
      problems.push(`not from a pinned package: vendor/${path}`);
    }
  }
  if (problems.length > 0) {
    console.error(`console/vendor is not what console/vendor.mjs makes:\n  ${problems.join('\n  ')}`);
    console.error('run: npm ci --prefix console && node console/vendor.mjs');
    process.exit(1);
  }
  console.log(`console/vendor matches its ${want.size} files' packages`);
} else {
  rmSync(OUT, { recursive: true, force: true });
  for (const [path, contents] of want) {
    mkdirSync(join(OUT, dirname(path)), { recursive: true });
    writeFileSync(join(OUT, path), contents);
  }
  console.log(`wrote ${want.size} files to console/vendor`);
}
