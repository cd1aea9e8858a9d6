// Bundles the studio's two browser dependencies into single ES modules under triggers/studio/static/vendor/,
// which are checked in and shipped as package data: users' machines never need Node. Re-run after a version bump:
//   cd scripts/studio-vendor && npm ci && npm run build
// tests/test_studio_vendor.py checks that the checked-in files are exactly what this build makes.
import { build } from "esbuild";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// STUDIO_VENDOR_OUT: build elsewhere (the test that compares a fresh build with the checked-in files).
const out = process.env.STUDIO_VENDOR_OUT ?? join(here, "..", "..", "triggers", "studio", "static", "vendor");
mkdirSync(out, { recursive: true });

// name → [what the module exports, the npm package it comes from]
const bundles = {
  "json-schema.js": ['export { Validator } from "@cfworker/json-schema";', "@cfworker/json-schema"],
  "yaml.js": ['export { load, YAMLException } from "js-yaml";', "js-yaml"],
};
const licences = [];
for (const [name, [source, pkg]] of Object.entries(bundles)) {
  const root = join(here, "node_modules", pkg);
  const { version, license, repository } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  await build({
    stdin: { contents: source, resolveDir: here, loader: "js" },
    bundle: true, minify: true, format: "esm", target: "es2020", legalComments: "none",
    banner: { js: `/* ${pkg} ${version} (${license}): bundled by scripts/studio-vendor/build.mjs; see LICENSES.txt */` },
    outfile: join(out, name), logLevel: "warning",
  });
  // @cfworker/json-schema ships no LICENSE file: its package.json's licence and repository say it.
  const text = existsSync(join(root, "LICENSE")) ? readFileSync(join(root, "LICENSE"), "utf8").trim()
    : `${license} licence: ${repository?.url ?? repository}`;
  licences.push(`${pkg} ${version} (${license})\n\n${text}\n`);
}
writeFileSync(join(out, "LICENSES.txt"), licences.join("\n" + "-".repeat(72) + "\n\n"));
