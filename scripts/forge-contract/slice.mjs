// Cuts GitHub's official REST description (@octokit/openapi) down to the operations
// mergequeue calls, with every component they reference, and picks the webhook examples
// (@octokit/webhooks-examples) of the events it reads. Run by scripts/forge-contract.sh:
//   node slice.mjs OPENAPI_JSON WEBHOOK_EXAMPLES_INDEX OUT_DIR
import fs from "node:fs";

const [specPath, examplesPath, outDir] = process.argv.slice(2);
const spec = JSON.parse(fs.readFileSync(specPath, "utf8"));

// What src/shell/forge/client.rs calls (docs/forge.md, "Reads" and "Writes").
const operations = [
  ["get", "/user"],
  ["get", "/app"],
  ["get", "/repos/{owner}/{repo}/installation"],
  ["post", "/app/installations/{installation_id}/access_tokens"],
  ["get", "/repos/{owner}/{repo}/pulls"],
  ["get", "/repos/{owner}/{repo}/pulls/{pull_number}"],
  ["get", "/repos/{owner}/{repo}/collaborators/{username}/permission"],
  ["get", "/repos/{owner}/{repo}/issues/comments"],
  ["post", "/repos/{owner}/{repo}/issues/{issue_number}/comments"],
  ["post", "/repos/{owner}/{repo}/statuses/{sha}"],
];

const paths = {};
for (const [method, path] of operations) {
  const op = spec.paths[path]?.[method];
  if (!op) throw new Error(`${method} ${path} is not in ${specPath}`);
  paths[path] ??= {};
  if (spec.paths[path].parameters) paths[path].parameters = spec.paths[path].parameters;
  paths[path][method] = op;
}

// Every "#/components/KIND/NAME" reachable from the kept operations.
const components = {};
const seen = new Set();
function walk(node) {
  if (Array.isArray(node)) return node.forEach(walk);
  if (node === null || typeof node !== "object") return;
  for (const [k, v] of Object.entries(node)) {
    if (k === "$ref" && typeof v === "string" && v.startsWith("#/components/")) {
      if (seen.has(v)) continue;
      seen.add(v);
      const [, , kind, name] = v.split("/");
      const target = spec.components[kind]?.[name];
      if (!target) throw new Error(`dangling ${v}`);
      (components[kind] ??= {})[name] = target;
      walk(target);
    } else {
      walk(v);
    }
  }
}
walk(paths);
for (const kind of Object.keys(components)) {
  components[kind] = Object.fromEntries(Object.entries(components[kind]).sort());
}

const slice = {
  openapi: spec.openapi,
  info: { ...spec.info, description: `Sliced to the operations mergequeue calls from ${spec.info.title} ${spec.info.version}.` },
  servers: spec.servers,
  paths,
  components,
};
fs.writeFileSync(`${outDir}/github-rest.json`, JSON.stringify(slice, null, 1) + "\n");

// The first example of each event and action mergequeue reads.
const wanted = [
  "issue_comment.created",
  "pull_request.opened",
  "pull_request.synchronize",
  "pull_request.closed",
  "pull_request.reopened",
  "pull_request.labeled",
  "pull_request.unlabeled",
  "pull_request_review.submitted",
  "merge_group.checks_requested",
];
const index = JSON.parse(fs.readFileSync(examplesPath, "utf8"));
const examples = {};
for (const key of wanted) {
  const [event, action] = key.split(".");
  const found = index.find((e) => e.name === event)?.examples.find((x) => x.action === action);
  if (!found) throw new Error(`no example of ${key}`);
  examples[key] = found;
}
fs.writeFileSync(`${outDir}/github-webhooks.json`, JSON.stringify(examples, null, 1) + "\n");
console.log(`github-rest.json: ${Object.keys(paths).length} paths, ${seen.size} components; github-webhooks.json: ${wanted.length} examples`);
