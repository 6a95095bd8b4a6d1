// Validates an AsyncAPI document with the official parser
// (@asyncapi/parser, installed by .ci/run; found through NODE_PATH):
//   node .ci/asyncapi/validate.cjs asyncapi.json
// Prints every diagnostic; exits 1 when any is an error or a warning (the
// parser's own rules: the spec's schema, references, parameters, ids).
const fs = require("fs");
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

async function main() {
  const path = process.argv[2];
  const document = fs.readFileSync(path, "utf8");
  const parser = new Parser();
  const { document: parsed, diagnostics } = await parser.parse(document, { source: path });
  const severities = ["error", "warning", "information", "hint"];
  let failed = parsed === undefined;
  for (const d of diagnostics) {
    const where = (d.path || []).join("/");
    console.log(`${severities[d.severity]} ${d.code} at /${where}: ${d.message}`);
    if (d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning) {
      failed = true;
    }
  }
  if (failed) {
    console.log(`${path}: not a valid AsyncAPI document`);
    process.exit(1);
  }
  console.log(`${path}: valid AsyncAPI ${parsed.version()}, ${parsed.channels().length} channels, ${parsed.operations().length} operations`);
}

main().catch((error) => {
  console.error(error);
  process.exit(2);
});
