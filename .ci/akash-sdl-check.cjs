// Validates Akash SDL files with Akash's own parser (@akashnetwork/akashjs's
// SDL.fromString, then the manifest it derives), as the Akash console and
// CLI do before a deployment is sent. Installed by .ci/setup under
// /opt/pitr-ci/akashjs; run with NODE_PATH=/opt/pitr-ci/akashjs/node_modules:
//   node .ci/akash-sdl-check.cjs deploy/akash/*.yaml
// Prints one line per file; exits 1 when any is refused.
"use strict";
const fs = require("node:fs");
const { SDL } = require("@akashnetwork/akashjs/build/sdl");

let refused = 0;
for (const file of process.argv.slice(2)) {
  try {
    const sdl = SDL.fromString(fs.readFileSync(file, "utf8"), "beta3", "mainnet");
    sdl.manifest();
    sdl.groups();
    console.log(`${file}: valid`);
  } catch (e) {
    refused++;
    console.log(`${file}: REFUSED: ${e.message}`);
  }
}
process.exit(refused ? 1 : 0);
