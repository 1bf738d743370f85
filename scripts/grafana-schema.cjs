// Grafana's published dashboard types (npm @grafana/schema) as JSON Schema files, written by
// `make grafana-schema` (scripts/ensure-grafana-schema.sh) for tests/checks/test_dashboard_schema.py.
//
//   node scripts/grafana-schema.cjs <install dir with node_modules> <out dir>
//
// dashboard.<Type>.json for the dashboard model (Dashboard, Panel, RowPanel) and
// panelcfg.<plugin>.<Options|FieldConfig>.json for every panel plugin the package types. Objects
// are closed (additionalProperties: false), as the TypeScript types are: an unknown or misspelt
// field is an error, not silently ignored as Grafana's frontend would.
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

const [installDir, outDir] = process.argv.slice(2);
if (!installDir || !outDir) {
  console.error("usage: node scripts/grafana-schema.cjs <install dir> <out dir>");
  process.exit(2);
}
const req = createRequire(path.join(path.resolve(installDir), "package.json"));
const { createGenerator } = req("ts-json-schema-generator");
const pkg = path.dirname(req.resolve("@grafana/schema/package.json"));
const raw = path.join(pkg, "dist", "esm", "raw");

function generate(file, type, out) {
  const schema = createGenerator({ path: file, type, skipTypeCheck: true, expose: "export",
                                   topRef: true, jsDoc: "basic" }).createSchema(type);
  fs.writeFileSync(path.join(outDir, out), JSON.stringify(schema, null, 1));
}

fs.mkdirSync(outDir, { recursive: true });
const dashboardTypes = path.join(raw, "dashboard", "x", "dashboard_types.gen.d.ts");
for (const type of ["Dashboard", "Panel", "RowPanel"]) {
  generate(dashboardTypes, type, `dashboard.${type}.json`);
}
let panels = 0;
for (const plugin of fs.readdirSync(path.join(raw, "composable")).sort()) {
  const dir = path.join(raw, "composable", plugin, "panelcfg", "x");
  if (!fs.existsSync(dir)) continue;
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".d.ts"))) {
    const text = fs.readFileSync(path.join(dir, file), "utf8");
    for (const type of ["Options", "FieldConfig"]) {
      if (new RegExp(`export interface ${type}\\b`).test(text)) {
        generate(path.join(dir, file), type, `panelcfg.${plugin}.${type}.json`);
      }
    }
  }
  panels += 1;
}
console.log(`[grafana-schema] wrote the dashboard model and ${panels} panel plugins' options to ${outDir}`);
