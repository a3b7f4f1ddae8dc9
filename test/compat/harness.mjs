// Shared harness for the e2b SDK compatibility suite: builds envd once per
// test file, runs it as a child process on a free loopback port, and points
// the real `e2b` SDK (debug mode) at it.
//
// Knobs: ENVD_COMPAT_BIN=<path> skips the build and uses that binary;
// ENVD_COMPAT_SRC=head builds the committed HEAD (via git archive) instead
// of the working tree; ENVD_COMPAT_LOG=1 echoes envd's output to stderr.
import { execFile, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, readdir } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { after, before } from 'node:test'

import { Sandbox } from 'e2b'

const run = promisify(execFile)

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

// The SDK's debug mode reports this envd version (every feature gate open).
export const DEBUG_ENVD_VERSION = '99.99.99'

// The e2b templates' default user; /init makes it envd's default.
export const SANDBOX_USER = 'user'
export const SANDBOX_HOME = '/home/user'

// Generous bounds: the machine is a loaded 2-core box.
export const BUILD_TIMEOUT_MS = 10 * 60_000
export const START_TIMEOUT_MS = 60_000
export const TEST_TIMEOUT_MS = 180_000
export const WAIT_MS = 60_000

let buildDir
let buildPromise

/** Builds ./cmd/envd once per process and returns the binary path. */
export function buildEnvd() {
  if (process.env.ENVD_COMPAT_BIN) return Promise.resolve(process.env.ENVD_COMPAT_BIN)
  buildPromise ??= (async () => {
    buildDir = await mkdtemp(path.join(os.tmpdir(), 'envd-compat-bin-'))
    const bin = path.join(buildDir, 'envd')
    let src = repoRoot
    if (process.env.ENVD_COMPAT_SRC === 'head') {
      src = path.join(buildDir, 'src')
      await run('mkdir', [src])
      await run('sh', ['-c', 'git -C "$0" archive HEAD | tar -x -C "$1"', repoRoot, src])
    }
    try {
      await run('go', ['build', '-o', bin, './cmd/envd'], {
        cwd: src,
        timeout: BUILD_TIMEOUT_MS,
        maxBuffer: 16 << 20,
      })
    } catch (err) {
      throw new Error(`go build ./cmd/envd failed: ${err.stderr || err.message}`)
    }
    return bin
  })()
  return buildPromise
}

async function removeBuild() {
  if (buildDir) await rm(buildDir, { recursive: true, force: true })
  buildDir = undefined
  buildPromise = undefined
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Creates the template user `user` (home /home/user) if it is missing.
 * Left in place afterwards: it is a fixture of every e2b sandbox, and a
 * concurrent run of this suite may be using it. */
export async function ensureSandboxUser() {
  try {
    await run('id', ['-u', SANDBOX_USER])
  } catch {
    try {
      await run('useradd', ['--create-home', '--home-dir', SANDBOX_HOME, '--shell', '/bin/bash', SANDBOX_USER])
    } catch (err) {
      // A concurrent run may have created it first.
      if (!/already exists/.test(String(err.stderr))) throw err
    }
  }
  await run('mkdir', ['-p', SANDBOX_HOME])
  await run('chown', [`${SANDBOX_USER}:${SANDBOX_USER}`, SANDBOX_HOME])
}

function sigMask(status, name) {
  const m = status.match(new RegExp(`^${name}:\\s*([0-9a-f]+)$`, 'm'))
  return m ? BigInt('0x' + m[1]) : 0n
}

const SIGINT = 2n
const SIGQUIT = 3n

/** Pids of every live descendant of pid (children first found by PPid). */
async function descendants(pid) {
  const parents = new Map()
  for (const ent of await readdir('/proc').catch(() => [])) {
    if (!/^\d+$/.test(ent)) continue
    try {
      const stat = await readFile(`/proc/${ent}/stat`, 'utf8')
      // Field 4 (ppid) follows the parenthesised comm, which may hold spaces.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      parents.set(Number(ent), Number(rest[1]))
    } catch {
      // Exited while we looked.
    }
  }
  const out = []
  const frontier = [pid]
  while (frontier.length) {
    const p = frontier.pop()
    for (const [child, parent] of parents) {
      if (parent === p) {
        out.push(child)
        frontier.push(child)
      }
    }
  }
  return out
}

/**
 * A running envd child. `url` is its base URL; `logs()` returns the tail of
 * its output for failure messages.
 */
export class Envd {
  constructor(child, port) {
    this.child = child
    this.port = port
    this.pid = child.pid
    this.url = `http://127.0.0.1:${port}`
    this.tail = ''
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
    const keep = (chunk) => {
      this.tail = (this.tail + chunk.toString()).slice(-64 * 1024)
      if (process.env.ENVD_COMPAT_LOG) process.stderr.write(chunk)
    }
    child.stdout.on('data', keep)
    child.stderr.on('data', keep)
  }

  logs() {
    return this.tail
  }

  /** Stops envd: first the processes it spawned (by pid), then envd itself. */
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    for (const pid of await descendants(this.pid)) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // Already gone.
      }
    }
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000)
    await this.exited
    clearTimeout(timer)
  }
}

/** Starts envd with -isnotfc on a free port and waits for /health. */
export async function startEnvd({ extraArgs = [] } = {}) {
  const bin = await buildEnvd()
  const port = await freePort()
  // umask 022 as under systemd/tini (cli.md): the SDK's expected file modes
  // depend on it. Node (libuv) resets signal dispositions in children, so
  // SIGINT/SIGQUIT are default in envd and therefore in the PTY shells it
  // spawns; start() verifies that below.
  const child = spawn('/bin/sh', ['-c', 'umask 022; exec "$0" "$@"', bin, '-isnotfc', '-port', String(port), ...extraArgs], {
    cwd: '/',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env },
  })
  const envd = new Envd(child, port)
  try {
    await waitHealthy(envd)
    const status = await readFile(`/proc/${envd.pid}/status`, 'utf8')
    const ign = sigMask(status, 'SigIgn')
    if (ign & ((1n << (SIGINT - 1n)) | (1n << (SIGQUIT - 1n)))) {
      throw new Error(`envd started with SIGINT/SIGQUIT ignored (SigIgn ${ign.toString(16)}); PTY Ctrl-C tests would lie`)
    }
  } catch (err) {
    await envd.stop()
    err.message += `\n--- envd output ---\n${envd.logs()}`
    throw err
  }
  return envd
}

async function waitHealthy(envd) {
  const deadline = Date.now() + START_TIMEOUT_MS
  let last
  while (Date.now() < deadline) {
    if (envd.child.exitCode !== null || envd.child.signalCode !== null) {
      throw new Error(`envd exited during start-up (${envd.child.exitCode ?? envd.child.signalCode})`)
    }
    try {
      const res = await fetch(`${envd.url}/health`, { signal: AbortSignal.timeout(5_000) })
      await res.arrayBuffer()
      if (res.ok) return
      last = `status ${res.status}`
    } catch (err) {
      last = err.message
    }
    // Re-probe soon; the listener has no readiness event we can subscribe to.
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`envd not healthy within ${START_TIMEOUT_MS} ms: ${last}`)
}

/** POST /init with a JSON body; returns { status, text, headers }. */
export async function postInit(envd, body, { token } = {}) {
  const headers = { 'Content-Type': 'application/json' }
  if (token) headers['X-Access-Token'] = token
  const res = await fetch(`${envd.url}/init`, {
    method: 'POST',
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  })
  return { status: res.status, text: await res.text(), headers: res.headers }
}

/** The SDK as a user sees it in debug mode, pointed at envd. */
export async function connectSdk(envd) {
  return Sandbox.create({ debug: true, sandboxUrl: envd.url })
}

/**
 * The SDK with an envd access token. Debug mode never carries a token
 * (Sandbox.create/connect build the instance from the connection config
 * only), so this calls the @internal constructor with the fields the
 * control-plane API would have provided: sandboxId, envdVersion and
 * envdAccessToken (index.d.ts: `constructor(opts: SandboxConnectOpts & {...})`).
 */
export function sdkWithToken(envd, token) {
  return new Sandbox({
    debug: true,
    sandboxUrl: envd.url,
    sandboxId: 'debug_sandbox_id',
    envdVersion: DEBUG_ENVD_VERSION,
    envdAccessToken: token,
  })
}

/**
 * Registers before/after hooks for one envd shared by a test file. `init`
 * (optional) is POSTed to /init after start; its outcome is kept in
 * `ctx.initStatus` so tests that depend on it can say why they fail.
 */
export function useEnvd({ init } = {}) {
  const ctx = {
    envd: undefined,
    sbx: undefined,
    initStatus: undefined,
    initError: undefined,
  }
  before(async () => {
    await ensureSandboxUser()
    ctx.envd = await startEnvd()
    if (init !== undefined) {
      try {
        const r = await postInit(ctx.envd, init)
        ctx.initStatus = r.status
        if (r.status !== 204) ctx.initError = `POST /init answered ${r.status} ${r.text.trim()}`
      } catch (err) {
        ctx.initError = `POST /init failed: ${err.message}`
      }
    }
    ctx.sbx = await connectSdk(ctx.envd)
  }, { timeout: BUILD_TIMEOUT_MS + START_TIMEOUT_MS })
  after(async () => {
    await ctx.envd?.stop()
    await removeBuild()
  }, { timeout: 60_000 })
  return ctx
}

/** Throws a descriptive error when the suite's /init did not succeed. */
export function requireInit(ctx) {
  if (ctx.initError) throw new Error(`needs POST /init {"defaultUser":"user"}: ${ctx.initError}`)
}

/**
 * Collects pushed chunks and lets a test await a condition on the
 * accumulated text (instead of sleeping).
 */
export class Collector {
  constructor() {
    this.text = ''
    this.items = []
    this.waiters = []
  }

  push = (chunk) => {
    this.items.push(chunk)
    if (typeof chunk === 'string') this.text += chunk
    else if (chunk instanceof Uint8Array) this.text += Buffer.from(chunk).toString('utf8')
    for (const w of [...this.waiters]) this.check(w)
  }

  check(w) {
    let ok = false
    try {
      ok = w.pred(this)
    } catch (err) {
      w.reject(err)
    }
    if (ok) {
      clearTimeout(w.timer)
      this.waiters.splice(this.waiters.indexOf(w), 1)
      w.resolve(this)
    }
  }

  /** Resolves when pred(collector) is true; rejects after timeoutMs. */
  until(pred, label = 'condition', timeoutMs = WAIT_MS) {
    if (typeof pred === 'string') {
      const s = pred
      pred = (c) => c.text.includes(s)
      label = `output containing ${JSON.stringify(s)}`
    } else if (pred instanceof RegExp) {
      const re = pred
      pred = (c) => re.test(c.text)
      label = `output matching ${re}`
    }
    return new Promise((resolve, reject) => {
      const w = { pred, resolve, reject }
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}; got ${JSON.stringify(this.text.slice(-2000))}`))
      }, timeoutMs)
      this.waiters.push(w)
      this.check(w)
    })
  }
}

/** A unique directory name for one test, under base. */
export function uniquePath(base, prefix = 'compat') {
  return path.posix.join(base, `${prefix}-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`)
}

/** Runs a program on the host (where envd runs) and returns stdout. */
export async function host(cmd, args) {
  const { stdout } = await run(cmd, args, { maxBuffer: 16 << 20 })
  return stdout
}
