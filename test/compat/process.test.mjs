// Process service through the real e2b SDK: commands.run/start/connect/list/
// kill, stdin, timeouts, and PTYs (input, resize, Ctrl-C, kill).
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { describe, test } from 'node:test'

import { CommandExitError, SandboxError, TimeoutError } from 'e2b'

import { Collector, SANDBOX_HOME, SANDBOX_USER, TEST_TIMEOUT_MS, WAIT_MS, requireInit, useEnvd } from './harness.mjs'

const ctx = useEnvd({ init: { defaultUser: SANDBOX_USER } })
const opts = { timeout: TEST_TIMEOUT_MS }

/** Awaits a promise that must reject, and returns the error. */
async function rejection(p) {
  try {
    await p
  } catch (err) {
    return err
  }
  assert.fail('expected the call to fail')
}

describe('commands.run', () => {
  test('stdout, empty stderr and exit code 0', opts, async () => {
    const r = await ctx.sbx.commands.run('echo hello; printf "a\\nb"')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'hello\na\nb')
    assert.equal(r.stderr, '')
    assert.equal(r.error, undefined)
  })

  test('stderr is separate from stdout', opts, async () => {
    const r = await ctx.sbx.commands.run('echo out; echo err >&2')
    assert.equal(r.stdout, 'out\n')
    assert.equal(r.stderr, 'err\n')
  })

  test('non-zero exit throws CommandExitError with code, error and output', opts, async () => {
    const err = await rejection(ctx.sbx.commands.run('echo partial; echo bad >&2; exit 3'))
    assert.ok(err instanceof CommandExitError, `got ${err?.constructor?.name}: ${err?.message}`)
    assert.equal(err.exitCode, 3)
    assert.equal(err.error, 'exit status 3')
    assert.equal(err.message, 'exit status 3')
    assert.equal(err.stdout, 'partial\n')
    assert.equal(err.stderr, 'bad\n')
  })

  test('missing program exits 127 with the shell message on stderr', opts, async () => {
    const err = await rejection(ctx.sbx.commands.run('definitely-not-a-command-xyz'))
    assert.ok(err instanceof CommandExitError, `got ${err?.constructor?.name}: ${err?.message}`)
    assert.equal(err.exitCode, 127)
    assert.match(err.stderr, /definitely-not-a-command-xyz: command not found/)
  })

  test('envs reach the command', opts, async () => {
    const r = await ctx.sbx.commands.run('echo "$FOO|$BAR"', { envs: { FOO: 'foo value', BAR: 'x=y' } })
    assert.equal(r.stdout, 'foo value|x=y\n')
  })

  test('cwd absolute, and relative to the home of the user', opts, async () => {
    assert.equal((await ctx.sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
    // Relative paths and ~ resolve against the user's home (subsystems.md §4).
    assert.equal((await ctx.sbx.commands.run('pwd', { cwd: '..', user: 'root' })).stdout, '/\n')
    assert.equal((await ctx.sbx.commands.run('pwd', { cwd: '~', user: 'root' })).stdout, '/root\n')
  })

  test('missing cwd is rejected', opts, async () => {
    const err = await rejection(ctx.sbx.commands.run('pwd', { cwd: '/definitely/not/here' }))
    assert.ok(err instanceof SandboxError, `got ${err?.constructor?.name}: ${err?.message}`)
    assert.match(err.message, /does not exist/)
  })

  test('default user from /init is "user" with its home as cwd and HOME', opts, async () => {
    requireInit(ctx)
    const r = await ctx.sbx.commands.run('whoami; pwd; echo "$HOME"; id -u')
    const [who, cwd, home, uid] = r.stdout.trim().split('\n')
    assert.equal(who, SANDBOX_USER)
    assert.equal(cwd, SANDBOX_HOME)
    assert.equal(home, SANDBOX_HOME)
    assert.notEqual(uid, '0')
  })

  test('explicit user root', opts, async () => {
    const r = await ctx.sbx.commands.run('whoami; echo "$HOME"; id -u', { user: 'root' })
    assert.equal(r.stdout, 'root\n/root\n0\n')
  })

  test('unknown user is an authentication error', opts, async () => {
    const err = await rejection(ctx.sbx.commands.run('true', { user: 'no-such-user-compat' }))
    assert.equal(err.name, 'AuthenticationError', `got ${err?.name}: ${err?.message}`)
  })

  test('commands start with default signal dispositions', opts, async () => {
    // An inherited SIG_IGN (SIGPIPE from a Go/Node parent, SIGINT from a
    // background launch) would break pipelines and Ctrl-C in the sandbox.
    const r = await ctx.sbx.commands.run('grep SigIgn /proc/self/status', { user: 'root' })
    const mask = BigInt('0x' + r.stdout.trim().split(/\s+/)[1])
    for (const [name, n] of Object.entries({ SIGHUP: 1n, SIGINT: 2n, SIGQUIT: 3n, SIGPIPE: 13n, SIGTERM: 15n })) {
      assert.equal(mask & (1n << (n - 1n)), 0n, `${name} ignored in spawned process (SigIgn ${mask.toString(16)})`)
    }
  })

  test('onStdout/onStderr callbacks see the output as it is produced', opts, async () => {
    const out = new Collector()
    const errs = new Collector()
    const r = await ctx.sbx.commands.run('for i in 1 2 3; do echo o$i; echo e$i >&2; done', {
      onStdout: out.push,
      onStderr: errs.push,
    })
    assert.equal(out.text, 'o1\no2\no3\n')
    assert.equal(errs.text, 'e1\ne2\ne3\n')
    assert.equal(r.stdout, out.text)
  })

  test('large output arrives complete', opts, async () => {
    const r = await ctx.sbx.commands.run('head -c 3000000 /dev/zero | tr "\\0" a')
    assert.equal(r.stdout.length, 3_000_000)
    assert.ok(/^a+$/.test(r.stdout))
  })

  test('parallel commands each get their own output', opts, async () => {
    const n = 16
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => ctx.sbx.commands.run(`echo "job ${i}"; echo "err ${i}" >&2`)),
    )
    results.forEach((r, i) => {
      assert.equal(r.stdout, `job ${i}\n`)
      assert.equal(r.stderr, `err ${i}\n`)
    })
  })

  test('stdin is /dev/null unless requested', opts, async () => {
    const r = await ctx.sbx.commands.run('cat; echo "rc=$?"')
    assert.equal(r.stdout, 'rc=0\n')
  })

  test('timeoutMs kills the process and surfaces TimeoutError', opts, async () => {
    const started = []
    const err = await rejection(
      (async () => {
        const h = await ctx.sbx.commands.run('exec sleep 300', { background: true, timeoutMs: 5_000 })
        started.push(h.pid)
        return h.wait()
      })(),
    )
    assert.ok(err instanceof TimeoutError, `got ${err?.constructor?.name}: ${err?.message}`)
    assert.equal(started.length, 1)
    // The process deadline from Connect-Timeout-Ms killed it: Connect serves
    // the retained end (or, if retention expired, not_found). Either way it
    // is no longer live.
    const live = await ctx.sbx.commands.list()
    const stillThere = live.find((p) => p.pid === started[0])
    if (stillThere) {
      const h = await ctx.sbx.commands.connect(started[0], { timeoutMs: WAIT_MS })
      const e2 = await rejection(h.wait())
      assert.ok(e2 instanceof CommandExitError, `got ${e2?.constructor?.name}: ${e2?.message}`)
      assert.equal(e2.exitCode, -1)
      assert.equal(e2.error, 'signal: killed')
    }
    assert.ok(!(await ctx.sbx.commands.list()).some((p) => p.pid === started[0]), 'timed-out process still listed')
  })
})

describe('background commands', () => {
  test('background start returns a handle; wait() collects the result', opts, async () => {
    const h = await ctx.sbx.commands.run('read line; echo "got:$line"; exit 4', { background: true, stdin: true })
    assert.ok(Number.isInteger(h.pid) && h.pid > 0)
    assert.equal(h.exitCode, undefined)
    await h.sendStdin('hello\n')
    const err = await rejection(h.wait())
    assert.ok(err instanceof CommandExitError)
    assert.equal(err.exitCode, 4)
    assert.equal(err.stdout, 'got:hello\n')
    assert.equal(h.exitCode, 4)
  })

  test('list shows live commands with their config; kill ends them', opts, async () => {
    const h = await ctx.sbx.commands.run('sleep 300', {
      background: true,
      cwd: '/tmp',
      envs: { COMPAT_LIST: '1' },
    })
    const procs = await ctx.sbx.commands.list()
    const p = procs.find((x) => x.pid === h.pid)
    assert.ok(p, `pid ${h.pid} not in list ${JSON.stringify(procs)}`)
    assert.equal(p.cmd, '/bin/bash')
    assert.deepEqual(p.args, ['-l', '-c', 'sleep 300'])
    assert.equal(p.envs.COMPAT_LIST, '1')
    assert.equal(p.cwd, '/tmp')

    assert.equal(await h.kill(), true)
    const err = await rejection(h.wait())
    assert.ok(err instanceof CommandExitError, `got ${err?.constructor?.name}: ${err?.message}`)
    assert.equal(err.exitCode, -1)
    assert.equal(err.error, 'signal: killed')
    assert.ok(!(await ctx.sbx.commands.list()).some((x) => x.pid === h.pid), 'killed process still listed')
    assert.equal(await ctx.sbx.commands.kill(h.pid), false, 'kill of an exited process should report not found')
  })

  test('list omits cwd when none was sent', opts, async () => {
    const h = await ctx.sbx.commands.run('sleep 300', { background: true })
    try {
      const p = (await ctx.sbx.commands.list()).find((x) => x.pid === h.pid)
      assert.ok(p)
      assert.equal(p.cwd, undefined)
    } finally {
      await ctx.sbx.commands.kill(h.pid)
      await h.wait().catch(() => {})
    }
  })

  test('kill of an unknown pid returns false', opts, async () => {
    assert.equal(await ctx.sbx.commands.kill(2 ** 31 - 7), false)
  })

  test('connect to a running command, stdin round trip, closeStdin ends it', opts, async () => {
    const first = await ctx.sbx.commands.run('while read l; do echo "echo:$l"; done; echo eof', {
      background: true,
      stdin: true,
    })
    await first.disconnect()

    const out = new Collector()
    const h = await ctx.sbx.commands.connect(first.pid, { onStdout: out.push })
    assert.equal(h.pid, first.pid)
    await ctx.sbx.commands.sendStdin(first.pid, 'one\n')
    await out.until('echo:one\n')
    await h.sendStdin('two\n')
    await out.until('echo:two\n')
    await ctx.sbx.commands.closeStdin(first.pid)
    const r = await h.wait()
    assert.equal(r.exitCode, 0)
    assert.equal(out.text, 'echo:one\necho:two\neof\n')
    assert.equal(r.stdout, out.text)
  })

  test('a megabyte of stdin arrives intact and in order', opts, async () => {
    const h = await ctx.sbx.commands.run('sha256sum | cut -d" " -f1; echo', { background: true, stdin: true })
    const chunk = 64 * 1024
    const hash = createHash('sha256')
    for (let i = 0; i < 16; i++) {
      const b = Buffer.alloc(chunk, String.fromCharCode(97 + i))
      hash.update(b)
      await h.sendStdin(new Uint8Array(b))
    }
    await h.closeStdin()
    const r = await h.wait()
    assert.equal(r.stdout.trim(), hash.digest('hex'))
  })

  test('two subscribers both receive the output', opts, async () => {
    const a = new Collector()
    const b = new Collector()
    const h1 = await ctx.sbx.commands.run('while read l; do echo "x:$l"; done', {
      background: true,
      stdin: true,
      onStdout: a.push,
    })
    const h2 = await ctx.sbx.commands.connect(h1.pid, { onStdout: b.push })
    await h1.sendStdin('1\n')
    await a.until('x:1\n')
    await b.until('x:1\n')
    await h1.closeStdin()
    assert.equal((await h1.wait()).exitCode, 0)
    assert.equal((await h2.wait()).exitCode, 0)
  })

  test('connect right after exit serves the retained result', opts, async () => {
    const h = await ctx.sbx.commands.run('echo bye; exit 7', { background: true })
    await rejection(h.wait())
    const again = await ctx.sbx.commands.connect(h.pid)
    const err = await rejection(again.wait())
    assert.ok(err instanceof CommandExitError, `got ${err?.constructor?.name}: ${err?.message}`)
    assert.equal(err.exitCode, 7)
  })

  test('connect to an unknown pid is NotFoundError', opts, async () => {
    const err = await rejection(ctx.sbx.commands.connect(2 ** 31 - 9))
    assert.equal(err.name, 'NotFoundError', `got ${err?.name}: ${err?.message}`)
  })

  test('sendStdin to a command without stdin fails', opts, async () => {
    const h = await ctx.sbx.commands.run('sleep 300', { background: true })
    try {
      const err = await rejection(h.sendStdin('x'))
      assert.ok(err instanceof SandboxError, `got ${err?.constructor?.name}: ${err?.message}`)
      assert.match(err.message, /stdin/)
    } finally {
      await h.kill()
      await h.wait().catch(() => {})
    }
  })

  test('a background process outlives its disconnected client', opts, async () => {
    const h = await ctx.sbx.commands.run('read l; echo "late:$l"', { background: true, stdin: true })
    await h.disconnect()
    assert.ok((await ctx.sbx.commands.list()).some((p) => p.pid === h.pid))
    const out = new Collector()
    const h2 = await ctx.sbx.commands.connect(h.pid, { onStdout: out.push })
    await h2.sendStdin('z\n')
    const r = await h2.wait()
    assert.equal(r.stdout, 'late:z\n')
  })
})

describe('pty', () => {
  /** Starts a PTY and returns { handle, out } with output collected. */
  async function openPty(size = { cols: 80, rows: 24 }, extra = {}) {
    const out = new Collector()
    const handle = await ctx.sbx.pty.create({ ...size, onData: out.push, ...extra })
    return { handle, out }
  }

  test('input, stty size, resize', opts, async () => {
    const { handle, out } = await openPty({ cols: 80, rows: 24 })
    try {
      const enc = new TextEncoder()
      // Markers are built by the shell so the tty echo of the typed line
      // cannot match them.
      await ctx.sbx.pty.sendInput(handle.pid, enc.encode('echo "S1:$(stty size):E"\n'))
      await out.until('S1:24 80:E')
      await ctx.sbx.pty.resize(handle.pid, { cols: 132, rows: 41 })
      await ctx.sbx.pty.sendInput(handle.pid, enc.encode('echo "S2:$(stty size):E"\n'))
      await out.until('S2:41 132:E')
    } finally {
      await ctx.sbx.pty.kill(handle.pid)
      await handle.wait().catch(() => {})
    }
  })

  test('bulk PTY output arrives complete', opts, async () => {
    const { handle, out } = await openPty({ cols: 80, rows: 24 })
    try {
      await ctx.sbx.pty.sendInput(handle.pid, new TextEncoder().encode('seq 1 20000; echo "D""ONE"\n'))
      await out.until('DONE')
      // Drop terminal control sequences (bracketed paste, prompt) and CRs.
      const lines = out.text
        .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
        .split('\n')
        .map((l) => l.replace(/\r/g, ''))
      const start = lines.indexOf('1')
      assert.ok(start >= 0, 'first line of seq missing')
      assert.deepEqual(
        lines.slice(start, start + 20000),
        Array.from({ length: 20000 }, (_, i) => String(i + 1)),
      )
    } finally {
      await ctx.sbx.pty.kill(handle.pid)
      await handle.wait().catch(() => {})
    }
  })

  test('TERM, locale and envs are set; default user', opts, async () => {
    requireInit(ctx)
    const { handle, out } = await openPty({ cols: 80, rows: 24 }, { envs: { COMPAT_PTY: 'pty-env' } })
    try {
      await ctx.sbx.pty.sendInput(handle.pid, new TextEncoder().encode('echo "V:$TERM:$LANG:$COMPAT_PTY:$(whoami):$PWD:E"\n'))
      await out.until(`V:xterm-256color:C.UTF-8:pty-env:${SANDBOX_USER}:${SANDBOX_HOME}:E`)
    } finally {
      await ctx.sbx.pty.kill(handle.pid)
      await handle.wait().catch(() => {})
    }
  })

  /**
   * Waits until the shell printed marker and then its next prompt. readline
   * switches the tty to raw mode before it prints the prompt, so control
   * characters sent after this are read as keys (sent while the tty is
   * still canonical, ^D would become a NUL byte, not EOF).
   */
  function untilPrompt(out, marker) {
    return out.until((c) => {
      const i = c.text.lastIndexOf(marker)
      return i >= 0 && /[$#] $/.test(c.text.slice(i + marker.length))
    }, `${marker} and a prompt`)
  }

  test('Ctrl-C interrupts the foreground program', opts, async () => {
    const { handle, out } = await openPty()
    try {
      const enc = new TextEncoder()
      // sh prints the marker, then execs sleep in the foreground process
      // group; SIGINT to sh or to sleep both end it with status 130.
      await ctx.sbx.pty.sendInput(handle.pid, enc.encode('sh -c \'echo "RE""ADY"; exec sleep 300\'\n'))
      await out.until('READY')
      await ctx.sbx.pty.sendInput(handle.pid, new Uint8Array([0x03]))
      // Interactive bash abandons the rest of a list interrupted by ^C, so
      // the status is asked for in a new command line. If sleep ignored
      // SIGINT this line would never run.
      await untilPrompt(out, 'READY')
      await ctx.sbx.pty.sendInput(handle.pid, enc.encode('echo "AFTER:$?"\n'))
      await out.until('AFTER:130')
    } finally {
      await ctx.sbx.pty.kill(handle.pid)
      await handle.wait().catch(() => {})
    }
  })

  test('exit ends the PTY with code 0; Ctrl-D too', opts, async () => {
    const enc = new TextEncoder()
    const a = await openPty()
    await ctx.sbx.pty.sendInput(a.handle.pid, enc.encode('exit 0\n'))
    assert.equal((await a.handle.wait()).exitCode, 0)

    const b = await openPty()
    try {
      await ctx.sbx.pty.sendInput(b.handle.pid, enc.encode('echo "RE""ADY"\n'))
      await untilPrompt(b.out, 'READY')
      await ctx.sbx.pty.sendInput(b.handle.pid, new Uint8Array([0x04]))
      assert.equal((await b.handle.wait()).exitCode, 0)
    } finally {
      await ctx.sbx.pty.kill(b.handle.pid)
    }
  })

  test('kill ends the PTY; it is listed until then', opts, async () => {
    const { handle } = await openPty()
    const listed = await ctx.sbx.commands.list()
    const p = listed.find((x) => x.pid === handle.pid)
    assert.ok(p, 'pty not listed')
    assert.equal(p.cmd, '/bin/bash')
    assert.deepEqual(p.args, ['-i', '-l'])
    assert.equal(await ctx.sbx.pty.kill(handle.pid), true)
    const err = await rejection(handle.wait())
    assert.ok(err instanceof CommandExitError, `got ${err?.constructor?.name}: ${err?.message}`)
    assert.equal(err.exitCode, -1)
    assert.equal(err.error, 'signal: killed')
    assert.equal(await ctx.sbx.pty.kill(handle.pid), false)
  })

  test('connect to a PTY sees later output', opts, async () => {
    const { handle } = await openPty()
    try {
      await handle.disconnect()
      const out = new Collector()
      const h2 = await ctx.sbx.pty.connect(handle.pid, { onData: out.push })
      await ctx.sbx.pty.sendInput(handle.pid, new TextEncoder().encode('echo "C""ONNECTED"\n'))
      await out.until('CONNECTED')
      await ctx.sbx.pty.sendInput(handle.pid, new TextEncoder().encode('exit 5\n'))
      const err = await rejection(h2.wait())
      assert.ok(err instanceof CommandExitError)
      assert.equal(err.exitCode, 5)
    } finally {
      await ctx.sbx.pty.kill(handle.pid)
    }
  })

  test('resize of a non-PTY command fails', opts, async () => {
    const h = await ctx.sbx.commands.run('sleep 300', { background: true })
    try {
      const err = await rejection(ctx.sbx.pty.resize(h.pid, { cols: 10, rows: 10 }))
      assert.ok(err instanceof SandboxError, `got ${err?.constructor?.name}: ${err?.message}`)
    } finally {
      await h.kill()
      await h.wait().catch(() => {})
    }
  })
})
