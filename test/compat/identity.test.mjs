// Identity through /init and the real e2b SDK: default user, default
// workdir and env vars set by /init; the access token (SDK with and without
// it), token rules of /init, and signed /files URLs with expiration.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { lstat, rm } from 'node:fs/promises'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'

import { AuthenticationError, InvalidArgumentError } from 'e2b'

import {
  Collector,
  SANDBOX_HOME,
  SANDBOX_USER,
  START_TIMEOUT_MS,
  TEST_TIMEOUT_MS,
  connectSdk,
  host,
  postInit,
  requireInit,
  sdkWithToken,
  startEnvd,
  uniquePath,
  useEnvd,
} from './harness.mjs'

const opts = { timeout: TEST_TIMEOUT_MS }

const INIT_ENV = { COMPAT_INIT_VAR: 'from-init', COMPAT_SHARED: 'init-value' }

// Open envd (no token), initialised like an e2b template would be.
const ctx = useEnvd({ init: { defaultUser: SANDBOX_USER, envVars: INIT_ENV } })

const root = uniquePath(SANDBOX_HOME, 'compat-id')
after(async () => {
  await rm(root, { recursive: true, force: true })
})

async function rejection(p) {
  try {
    await p
  } catch (err) {
    return err
  }
  assert.fail('expected the call to fail')
}

const UNAUTHORIZED = {
  code: 401,
  message: 'unauthorized access, please provide a valid access token or method signing if supported',
}

describe('/init envVars, defaultUser, defaultWorkdir', () => {
  test('envVars reach commands; per-command envs override them', opts, async () => {
    requireInit(ctx)
    const r = await ctx.sbx.commands.run('echo "$COMPAT_INIT_VAR|$COMPAT_SHARED"')
    assert.equal(r.stdout, 'from-init|init-value\n')
    const r2 = await ctx.sbx.commands.run('echo "$COMPAT_INIT_VAR|$COMPAT_SHARED"', { envs: { COMPAT_SHARED: 'cmd' } })
    assert.equal(r2.stdout, 'from-init|cmd\n')
  })

  test('envVars reach PTYs', opts, async () => {
    requireInit(ctx)
    const out = new Collector()
    const h = await ctx.sbx.pty.create({ cols: 80, rows: 24, onData: out.push })
    try {
      await ctx.sbx.pty.sendInput(h.pid, new TextEncoder().encode('echo "P:$COMPAT_INIT_VAR:$(whoami):E"\n'))
      await out.until(`P:from-init:${SANDBOX_USER}:E`)
    } finally {
      await ctx.sbx.pty.kill(h.pid)
      await h.wait().catch(() => {})
    }
  })

  test('/envs lists them with the internal E2B_SANDBOX=false', opts, async () => {
    requireInit(ctx)
    const res = await fetch(`${ctx.envd.url}/envs`)
    assert.equal(res.status, 200)
    const envs = await res.json()
    assert.equal(envs.COMPAT_INIT_VAR, 'from-init')
    assert.equal(envs.E2B_SANDBOX, 'false')
  })

  test('default user owns uploaded files and runs commands', opts, async () => {
    requireInit(ctx)
    const uid = Number((await host('id', ['-u', SANDBOX_USER])).trim())
    const p = `${root}/owned.txt`
    await ctx.sbx.files.write(p, 'x')
    assert.equal((await lstat(p)).uid, uid)
    assert.equal((await ctx.sbx.commands.run('echo "$(whoami):$(id -u)"')).stdout, `${SANDBOX_USER}:${uid}\n`)
  })

  test('internal vars cannot be overridden; a new envVars set replaces the old one', opts, async () => {
    requireInit(ctx)
    const r = await postInit(ctx.envd, { envVars: { COMPAT_SECOND: '2', E2B_SANDBOX: 'hijack' } })
    assert.equal(r.status, 204, r.text)
    assert.ok(r.headers.get('x-envd-version'), 'X-Envd-Version header on /init')
    const out = (await ctx.sbx.commands.run('echo "${COMPAT_INIT_VAR-unset}|$COMPAT_SECOND|$E2B_SANDBOX"')).stdout
    assert.equal(out, 'unset|2|false\n')
    // Restore the suite's env for later tests.
    assert.equal((await postInit(ctx.envd, { envVars: INIT_ENV })).status, 204)
  })

  test('defaultWorkdir becomes the cwd of commands; relative files stay under home', opts, async () => {
    requireInit(ctx)
    const wd = `${root}/workdir`
    await ctx.sbx.files.makeDir(wd)
    assert.equal((await postInit(ctx.envd, { defaultWorkdir: wd })).status, 204)
    assert.equal((await ctx.sbx.commands.run('pwd')).stdout, `${wd}\n`)
    assert.equal((await ctx.sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
    const rel = path.posix.relative(SANDBOX_HOME, `${root}/rel-after-workdir.txt`)
    const info = await ctx.sbx.files.write(rel, 'r')
    assert.equal(info.path, path.posix.join(SANDBOX_HOME, rel))
  })

  test('Sandbox.connect in debug mode reaches the same envd', opts, async () => {
    const { Sandbox } = await import('e2b')
    const again = await Sandbox.connect('debug_sandbox_id', { debug: true, sandboxUrl: ctx.envd.url })
    assert.equal((await again.commands.run('echo connected', { user: 'root' })).stdout, 'connected\n')
  })
})

describe('access token', () => {
  const token = randomBytes(16).toString('hex')
  const sec = { envd: undefined, sbx: undefined, anon: undefined, initError: undefined }

  before(async () => {
    // A second envd, so the open one above stays open.
    sec.envd = await startEnvd()
    const r = await postInit(sec.envd, { accessToken: token, defaultUser: SANDBOX_USER, envVars: { COMPAT_SECURE: 'yes' } })
    if (r.status !== 204) sec.initError = `POST /init answered ${r.status} ${r.text.trim()}`
    sec.sbx = sdkWithToken(sec.envd, token)
    sec.anon = await connectSdk(sec.envd)
  }, { timeout: START_TIMEOUT_MS * 2 })
  after(async () => {
    await sec.envd?.stop()
  })
  const requireSecure = () => {
    if (sec.initError) throw new Error(`needs POST /init {"accessToken":…}: ${sec.initError}`)
  }

  test('the SDK with the token runs commands and moves files', opts, async () => {
    requireSecure()
    assert.equal((await sec.sbx.commands.run('echo "$(whoami):$COMPAT_SECURE"')).stdout, `${SANDBOX_USER}:yes\n`)
    const p = `${root}/secure/a.txt`
    await sec.sbx.files.write(p, 'secret')
    assert.equal(await sec.sbx.files.read(p), 'secret')
    assert.deepEqual(
      (await sec.sbx.files.list(`${root}/secure`)).map((e) => e.name),
      ['a.txt'],
    )
  })

  test('the SDK without the token gets AuthenticationError everywhere', opts, async () => {
    requireSecure()
    const p = `${root}/secure/anon.txt`
    await sec.sbx.files.write(p, 'exists')
    const calls = {
      'commands.run': () => sec.anon.commands.run('true'),
      'commands.list': () => sec.anon.commands.list(),
      'pty.create': () => sec.anon.pty.create({ cols: 80, rows: 24, onData: () => {} }),
      'files.read': () => sec.anon.files.read(p),
      'files.write': () => sec.anon.files.write(`${root}/secure/nope.txt`, 'n'),
      'files.list': () => sec.anon.files.list(`${root}/secure`),
      'files.getInfo': () => sec.anon.files.getInfo(p),
      'files.watchDir': () => sec.anon.files.watchDir(`${root}/secure`, () => {}),
    }
    for (const [name, call] of Object.entries(calls)) {
      const err = await rejection(call())
      assert.ok(err instanceof AuthenticationError, `${name}: got ${err?.constructor?.name}: ${err?.message}`)
    }
    assert.equal(await sec.sbx.files.exists(`${root}/secure/nope.txt`), false, 'unauthenticated write must not land')
  })

  test('a wrong token is rejected too', opts, async () => {
    requireSecure()
    const wrong = sdkWithToken(sec.envd, 'f'.repeat(32))
    const err = await rejection(wrong.commands.run('true'))
    assert.ok(err instanceof AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`)
    const err2 = await rejection(wrong.files.read('/etc/hostname'))
    assert.ok(err2 instanceof AuthenticationError, `got ${err2?.constructor?.name}: ${err2?.message}`)
  })

  test('/health stays open; /envs needs the header and answers the exact 401 body', opts, async () => {
    requireSecure()
    assert.ok((await fetch(`${sec.envd.url}/health`)).ok)
    const res = await fetch(`${sec.envd.url}/envs`)
    assert.equal(res.status, 401)
    assert.deepEqual(await res.json(), UNAUTHORIZED)
    const ok = await fetch(`${sec.envd.url}/envs`, { headers: { 'X-Access-Token': token } })
    assert.equal(ok.status, 200)
    assert.equal((await ok.json()).COMPAT_SECURE, 'yes')
  })

  test('/init token rules: same token ok, reset or other token refused', opts, async () => {
    requireSecure()
    const reset = await postInit(sec.envd, {})
    assert.equal(reset.status, 401, reset.text)
    assert.match(reset.text, /access token reset not authorized/)
    const other = await postInit(sec.envd, { accessToken: 'a'.repeat(32) })
    assert.equal(other.status, 401, other.text)
    assert.match(other.text, /access token validation failed/)
    const same = await postInit(sec.envd, { accessToken: token, defaultUser: SANDBOX_USER, envVars: { COMPAT_SECURE: 'yes' } })
    assert.equal(same.status, 204, same.text)
    // The refused calls changed nothing: the token still guards RPCs.
    assert.ok((await rejection(sec.anon.commands.list())) instanceof AuthenticationError)
    assert.equal((await sec.sbx.commands.run('echo still')).stdout, 'still\n')
  })

  test('signed downloadUrl and uploadUrl work with plain fetch', opts, async () => {
    requireSecure()
    const p = `${root}/secure/signed.txt`
    const up = await sec.sbx.uploadUrl(p)
    assert.match(new URL(up).searchParams.get('signature'), /^v1_[A-Za-z0-9+/]+$/)
    const form = new FormData()
    form.append('file', new Blob(['signed upload']), 'signed.txt')
    const res = await fetch(up, { method: 'POST', body: form })
    assert.equal(res.status, 200, await res.clone().text())
    assert.deepEqual(await res.json(), [{ name: 'signed.txt', path: p, type: 'file' }])

    const down = await sec.sbx.downloadUrl(p)
    const got = await fetch(down)
    assert.equal(got.status, 200)
    assert.equal(await got.text(), 'signed upload')
  })

  test('signed URLs carry the user: uploads as root are owned by root', opts, async () => {
    requireSecure()
    const p = `${root}/secure/root-signed.txt`
    const up = new URL(await sec.sbx.uploadUrl(p, { user: 'root' }))
    assert.equal(up.searchParams.get('username'), 'root')
    const form = new FormData()
    form.append('file', new Blob(['r']), 'root-signed.txt')
    const res = await fetch(up, { method: 'POST', body: form })
    assert.equal(res.status, 200, await res.clone().text())
    assert.equal((await lstat(p)).uid, 0)
    // A signature for another user does not carry over.
    const down = new URL(await sec.sbx.downloadUrl(p, { user: 'root' }))
    down.searchParams.set('username', SANDBOX_USER)
    const bad = await fetch(down)
    assert.equal(bad.status, 401)
    assert.deepEqual(await bad.json(), { code: 401, message: 'invalid signature' })
  })

  test('unsigned, tampered and wrong-operation URLs are refused', opts, async () => {
    requireSecure()
    const p = `${root}/secure/a.txt`
    await sec.sbx.files.write(p, 'secret')
    const unsigned = await sec.anon.downloadUrl(p)
    const r1 = await fetch(unsigned)
    assert.equal(r1.status, 401)
    assert.deepEqual(await r1.json(), { code: 401, message: 'missing signature query parameter' })

    const signed = new URL(await sec.sbx.downloadUrl(p))
    signed.searchParams.set('path', `${root}/secure/other.txt`)
    const r2 = await fetch(signed)
    assert.equal(r2.status, 401)
    assert.deepEqual(await r2.json(), { code: 401, message: 'invalid signature' })

    // A read signature cannot upload.
    const readSig = await sec.sbx.downloadUrl(p)
    const form = new FormData()
    form.append('file', new Blob(['overwrite']), 'a.txt')
    const r3 = await fetch(readSig, { method: 'POST', body: form })
    assert.equal(r3.status, 401)
    assert.equal(await sec.sbx.files.read(p), 'secret')

    const r4 = await fetch(unsigned, { headers: { 'X-Access-Token': 'nope' } })
    assert.equal(r4.status, 401)
    assert.deepEqual(await r4.json(), { code: 401, message: 'access token present in header but does not match' })
  })

  test('useSignatureExpiration: valid before, refused after expiry', opts, async () => {
    requireSecure()
    const p = `${root}/secure/exp.txt`
    await sec.sbx.files.write(p, 'expiring')
    const live = new URL(await sec.sbx.downloadUrl(p, { useSignatureExpiration: 120 }))
    const exp = Number(live.searchParams.get('signature_expiration'))
    assert.ok(exp > Date.now() / 1000, 'expiration in the future')
    const ok = await fetch(live)
    assert.equal(ok.status, 200)
    assert.equal(await ok.text(), 'expiring')

    // An expiration in the past gives a correctly signed but expired URL
    // (deterministic; no waiting for the clock).
    const expired = await sec.sbx.downloadUrl(p, { useSignatureExpiration: -30 })
    const r = await fetch(expired)
    assert.equal(r.status, 401)
    assert.deepEqual(await r.json(), { code: 401, message: 'signature is already expired' })

    const expiredUp = await sec.sbx.uploadUrl(p, { useSignatureExpiration: -30 })
    const form = new FormData()
    form.append('file', new Blob(['late']), 'exp.txt')
    const r2 = await fetch(expiredUp, { method: 'POST', body: form })
    assert.equal(r2.status, 401)
    assert.deepEqual(await r2.json(), { code: 401, message: 'signature is already expired' })

    // Extending the expiration invalidates the signature.
    live.searchParams.set('signature_expiration', String(exp + 1000))
    const r3 = await fetch(live)
    assert.equal(r3.status, 401)
    assert.deepEqual(await r3.json(), { code: 401, message: 'invalid signature' })
  })

  test('signature expiration needs a secured sandbox (SDK check)', opts, async () => {
    const err = await rejection(ctx.sbx.downloadUrl('/etc/hostname', { useSignatureExpiration: 10 }))
    assert.ok(err instanceof InvalidArgumentError)
    // ... and without a token the plain URL works against the open envd.
    const res = await fetch(await ctx.sbx.downloadUrl('/etc/hostname', { user: 'root' }))
    assert.equal(res.status, 200)
  })
})
