// Microsoft's Kusto parser (npm @kusto/language-service-next) checking Resource Graph queries:
// one JSON line in ({"query": "..."}), one out ({"errors": [...], "warnings": [...]}).
// Usage: node kql_check.js <folder holding node_modules/@kusto/language-service-next>
"use strict";
const path = require("path");
const readline = require("readline");
const pkg = path.join(process.argv[2], "node_modules", "@kusto", "language-service-next");
require(path.join(pkg, "bridge.js"));
require(path.join(pkg, "Kusto.Language.Bridge.js"));
const K = Kusto.Language;
const S = K.Symbols;

// The columns every row of Resources and ResourceContainers carries ("Understand the query
// language", Azure Resource Graph, learn.microsoft.com/azure/governance/resource-graph/
// concepts/query-language; the resource shape of Search-AzGraph's and az graph query's
// answers). Names are bracketed: `kind` and `plan` are words of the schema syntax.
const COLUMNS = [
  ["id", "string"], ["name", "string"], ["type", "string"], ["tenantId", "string"],
  ["kind", "string"], ["location", "string"], ["resourceGroup", "string"],
  ["subscriptionId", "string"], ["managedBy", "string"], ["sku", "dynamic"],
  ["plan", "dynamic"], ["properties", "dynamic"], ["tags", "dynamic"],
  ["identity", "dynamic"], ["zones", "dynamic"], ["extendedLocation", "dynamic"],
];
const schema = "(" + COLUMNS.map(([n, t]) => `['${n}']:${t}`).join(", ") + ")";
const tables = ["Resources", "ResourceContainers"].map((n) => new S.TableSymbol.$ctor7(n, schema, null));
const globals = K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor("resourcegraph", tables));

function check(query) {
  const found = K.KustoCode.ParseAndAnalyze(query, globals).GetDiagnostics();
  const answer = { errors: [], warnings: [] };
  for (let i = 0; i < found.Count; i++) {
    const d = found.getItem(i);
    const item = { code: d.Code, message: d.Message, start: d.Start, length: d.Length };
    (d.Severity === "Error" ? answer.errors : answer.warnings).push(item);
  }
  return answer;
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let answer;
  try {
    answer = check(JSON.parse(line).query);
  } catch (e) {
    answer = { failure: String(e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
});
