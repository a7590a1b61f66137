'use strict'
// How the per-platform packages are named, from napi's target triples: the
// loader (lib/native.js) names the one it looked for, and the package check
// matches them to the folders in npm/.

const ARCH = { x86_64: 'x64', aarch64: 'arm64' }
const OS = { linux: 'linux', darwin: 'darwin', windows: 'win32' }

/** `x86_64-unknown-linux-gnu` → `linux-x64-gnu`, `aarch64-apple-darwin` → `darwin-arm64`: the suffix of the package that holds its binary. */
function platformArchAbi(triple) {
  const [arch, , os, abi] = triple.split('-')
  return [OS[os], ARCH[arch], abi].filter(Boolean).join('-')
}

module.exports = { platformArchAbi }
