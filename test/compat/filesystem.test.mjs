// Filesystem service and /files through the real e2b SDK: read/write in
// every format, writeFiles, list, makeDir, remove, rename, exists, getInfo,
// watchDir, upload/download URLs and a 100 MiB round trip.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'

import { FileNotFoundError, InvalidArgumentError } from 'e2b'

import { Collector, SANDBOX_HOME, SANDBOX_USER, TEST_TIMEOUT_MS, host, requireInit, uniquePath, useEnvd } from './harness.mjs'

const ctx = useEnvd({ init: { defaultUser: SANDBOX_USER } })
const opts = { timeout: TEST_TIMEOUT_MS }

// Everything this file writes lives under root; removed at the end.
// Owned by the sandbox user, like everything under its home in a template.
const root = uniquePath(SANDBOX_HOME, 'compat-fs')
before(async () => {
  await mkdir(root)
  await host('chown', [`${SANDBOX_USER}:${SANDBOX_USER}`, root])
})
after(async () => {
  await rm(root, { recursive: true, force: true })
})

/** A fresh directory path under root (not created). */
const fresh = (name = 'd') => uniquePath(root, name)

/**
 * Writes files directly on disk (envd runs on this machine) so tests of the
 * Filesystem RPCs do not depend on /files; dir and everything in it end up
 * owned by the sandbox user, as under its home in a real sandbox.
 */
async function fixture(dir, files) {
  for (const [rel, data] of Object.entries(files)) {
    const p = path.posix.join(dir, rel)
    await mkdir(path.posix.dirname(p), { recursive: true })
    await writeFile(p, data)
  }
  await host('chown', ['-R', `${SANDBOX_USER}:${SANDBOX_USER}`, dir])
}

async function rejection(p) {
  try {
    await p
  } catch (err) {
    return err
  }
  assert.fail('expected the call to fail')
}

async function streamToBuffer(stream) {
  const chunks = []
  for await (const c of stream) chunks.push(Buffer.from(c))
  return Buffer.concat(chunks)
}

function streamOf(...chunks) {
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(c)
      controller.close()
    },
  })
}

describe('files.write and files.read', () => {
  test('text round trip; write returns the entry', opts, async () => {
    const p = path.posix.join(fresh(), 'hello.txt')
    const info = await ctx.sbx.files.write(p, 'Hello, World!')
    assert.equal(info.name, 'hello.txt')
    assert.equal(info.path, p)
    assert.equal(info.type, 'file')
    assert.equal(info.metadata, undefined)
    assert.equal(await ctx.sbx.files.read(p), 'Hello, World!')
    assert.equal(await readFile(p, 'utf8'), 'Hello, World!')
  })

  test('read as bytes, blob and stream', opts, async () => {
    const p = path.posix.join(fresh(), 'bin.dat')
    const data = new Uint8Array(256 * 8).map((_, i) => i % 256)
    await ctx.sbx.files.write(p, data.buffer)
    const bytes = await ctx.sbx.files.read(p, { format: 'bytes' })
    assert.ok(bytes instanceof Uint8Array)
    assert.deepEqual(Buffer.from(bytes), Buffer.from(data))
    const blob = await ctx.sbx.files.read(p, { format: 'blob' })
    assert.ok(blob instanceof Blob)
    assert.deepEqual(Buffer.from(await blob.arrayBuffer()), Buffer.from(data))
    const stream = await ctx.sbx.files.read(p, { format: 'stream' })
    assert.deepEqual(await streamToBuffer(stream), Buffer.from(data))
  })

  test('write accepts ArrayBuffer, Blob and ReadableStream', opts, async () => {
    const dir = fresh()
    const cases = {
      'ab.bin': [new TextEncoder().encode('array buffer').buffer, 'array buffer'],
      'blob.bin': [new Blob(['bl', 'ob']), 'blob'],
      'stream.bin': [streamOf(new TextEncoder().encode('str'), new TextEncoder().encode('eam')), 'stream'],
    }
    for (const [name, [data, want]] of Object.entries(cases)) {
      const p = path.posix.join(dir, name)
      const info = await ctx.sbx.files.write(p, data)
      assert.equal(info.path, p, name)
      assert.equal(await ctx.sbx.files.read(p), want, name)
    }
  })

  test('gzip upload and gzip download', opts, async () => {
    const p = path.posix.join(fresh(), 'gz.txt')
    const text = 'compress me '.repeat(1000)
    await ctx.sbx.files.write(p, text, { gzip: true })
    assert.equal(await readFile(p, 'utf8'), text)
    assert.equal(await ctx.sbx.files.read(p, { gzip: true }), text)
  })

  test('empty file reads as empty string and empty bytes', opts, async () => {
    const p = path.posix.join(fresh(), 'empty')
    await ctx.sbx.files.write(p, '')
    assert.equal(await ctx.sbx.files.read(p), '')
    assert.equal((await ctx.sbx.files.read(p, { format: 'bytes' })).length, 0)
  })

  test('overwrite truncates', opts, async () => {
    const p = path.posix.join(fresh(), 'over.txt')
    await ctx.sbx.files.write(p, 'a long first version')
    await ctx.sbx.files.write(p, 'short')
    assert.equal(await ctx.sbx.files.read(p), 'short')
  })

  test('metadata is stored and surfaced by getInfo and list', opts, async () => {
    const dir = fresh()
    const p = path.posix.join(dir, 'meta.txt')
    const info = await ctx.sbx.files.write(p, 'm', { metadata: { author: 'mish', Kind: 'note' } })
    assert.deepEqual(info.metadata, { author: 'mish', kind: 'note' })
    assert.deepEqual((await ctx.sbx.files.getInfo(p)).metadata, { author: 'mish', kind: 'note' })
    const [entry] = await ctx.sbx.files.list(dir)
    assert.deepEqual(entry.metadata, { author: 'mish', kind: 'note' })
    const moved = await ctx.sbx.files.rename(p, `${dir}/moved.txt`)
    assert.deepEqual(moved.metadata, { author: 'mish', kind: 'note' }, 'metadata travels with rename')
    await ctx.sbx.files.rename(`${dir}/moved.txt`, p)
    await ctx.sbx.files.write(p, 'm2')
    assert.equal((await ctx.sbx.files.getInfo(p)).metadata, undefined, 'upload without metadata clears it')
  })

  test('read of a missing file is FileNotFoundError; of a directory InvalidArgumentError', opts, async () => {
    const dir = fresh()
    const err = await rejection(ctx.sbx.files.read(path.posix.join(dir, 'nope')))
    assert.ok(err instanceof FileNotFoundError, `got ${err?.constructor?.name}: ${err?.message}`)
    await ctx.sbx.files.makeDir(dir)
    const err2 = await rejection(ctx.sbx.files.read(dir))
    assert.ok(err2 instanceof InvalidArgumentError, `got ${err2?.constructor?.name}: ${err2?.message}`)
  })

  test('writing onto a directory is rejected', opts, async () => {
    const dir = fresh()
    await ctx.sbx.files.makeDir(dir)
    const err = await rejection(ctx.sbx.files.write(dir, 'x'))
    assert.ok(err instanceof InvalidArgumentError, `got ${err?.constructor?.name}: ${err?.message}`)
  })

  test('relative paths resolve against the default user home', opts, async () => {
    requireInit(ctx)
    const name = path.posix.relative(SANDBOX_HOME, path.posix.join(fresh(), 'rel.txt'))
    const info = await ctx.sbx.files.write(name, 'rel')
    assert.equal(info.path, path.posix.join(SANDBOX_HOME, name))
    assert.equal(await ctx.sbx.files.read(name), 'rel')
    assert.equal(await ctx.sbx.files.read(`~/${name}`), 'rel')
  })

  test('explicit user root owns what it writes', opts, async () => {
    const p = path.posix.join(fresh(), 'root-owned.txt')
    await ctx.sbx.files.write(p, 'r', { user: 'root' })
    const st = await lstat(p)
    assert.equal(st.uid, 0)
    assert.equal((await ctx.sbx.files.getInfo(p)).owner, 'root')
  })
})

describe('users', () => {
  test('an unknown user is AuthenticationError on RPCs and on /files', opts, async () => {
    const dir = fresh()
    await fixture(dir, { f: 'f' })
    const u = { user: 'no-such-user-compat' }
    for (const [name, call] of Object.entries({
      list: () => ctx.sbx.files.list(dir, u),
      getInfo: () => ctx.sbx.files.getInfo(`${dir}/f`, u),
      makeDir: () => ctx.sbx.files.makeDir(`${dir}/g`, u),
      read: () => ctx.sbx.files.read(`${dir}/f`, u),
      write: () => ctx.sbx.files.write(`${dir}/h`, 'h', u),
    })) {
      const err = await rejection(call())
      assert.equal(err?.name, 'AuthenticationError', `${name}: got ${err?.name}: ${err?.message}`)
    }
    assert.equal(await ctx.sbx.files.exists(`${dir}/g`), false)
    assert.equal(await ctx.sbx.files.exists(`${dir}/h`), false)
  })
})

describe('writeFiles', () => {
  test('many files in one request, nested directories created', opts, async () => {
    const dir = fresh()
    const files = []
    for (let i = 0; i < 60; i++) {
      files.push({ path: path.posix.join(dir, `sub${i % 3}`, `deeper${i % 2}`, `f${i}.txt`), data: `content ${i}` })
    }
    const infos = await ctx.sbx.files.writeFiles(files)
    assert.equal(infos.length, files.length)
    assert.deepEqual(
      infos.map((x) => x.path),
      files.map((f) => f.path),
    )
    for (const f of files) assert.equal(await readFile(f.path, 'utf8'), f.data)
    assert.equal(await ctx.sbx.files.read(files[41].path), 'content 41')
  })
})

describe('list, makeDir, exists, remove, rename, getInfo', () => {
  test('list with depth 1 and 2 is lexical and depth-first', opts, async () => {
    const dir = fresh()
    await fixture(dir, { 'file1.txt': '1', 'subdir1/b': 'b', 'subdir1/a': 'a', 'subdir1/deep/x': 'x', 'subdir2/a': 'a' })
    const one = await ctx.sbx.files.list(dir)
    assert.deepEqual(
      one.map((e) => [e.name, e.type, e.path]),
      [
        ['file1.txt', 'file', `${dir}/file1.txt`],
        ['subdir1', 'dir', `${dir}/subdir1`],
        ['subdir2', 'dir', `${dir}/subdir2`],
      ],
    )
    const two = await ctx.sbx.files.list(dir, { depth: 2 })
    assert.deepEqual(
      two.map((e) => path.posix.relative(dir, e.path)),
      ['file1.txt', 'subdir1', 'subdir1/a', 'subdir1/b', 'subdir1/deep', 'subdir2', 'subdir2/a'],
    )
    const three = await ctx.sbx.files.list(dir, { depth: 3 })
    assert.ok(three.some((e) => e.path === `${dir}/subdir1/deep/x`))
    assert.equal(three.find((e) => e.name === 'file1.txt').size, 1)
  })

  test('list of a missing path is FileNotFoundError; of a file InvalidArgumentError', opts, async () => {
    const dir = fresh()
    const err = await rejection(ctx.sbx.files.list(dir))
    assert.ok(err instanceof FileNotFoundError, `got ${err?.constructor?.name}: ${err?.message}`)
    await fixture(dir, { f: 'f' })
    const err2 = await rejection(ctx.sbx.files.list(`${dir}/f`))
    assert.ok(err2 instanceof InvalidArgumentError, `got ${err2?.constructor?.name}: ${err2?.message}`)
  })

  test('list through a symlinked directory reports the requested path', opts, async () => {
    const dir = fresh()
    await fixture(dir, { 'real/inside.txt': 'i' })
    await symlink(`${dir}/real`, `${dir}/link`)
    const entries = await ctx.sbx.files.list(`${dir}/link`)
    assert.deepEqual(
      entries.map((e) => e.path),
      [`${dir}/link/inside.txt`],
    )
  })

  test('makeDir creates parents, reports existing directories as false', opts, async () => {
    const dir = fresh()
    assert.equal(await ctx.sbx.files.makeDir(`${dir}/a/b/c`), true)
    assert.ok((await lstat(`${dir}/a/b/c`)).isDirectory())
    assert.equal(await ctx.sbx.files.makeDir(`${dir}/a/b/c`), false)
    assert.equal(await ctx.sbx.files.makeDir(`${dir}/a`), false)
  })

  test('makeDir over a file is rejected', opts, async () => {
    const dir = fresh()
    await fixture(dir, { f: 'f' })
    const err = await rejection(ctx.sbx.files.makeDir(`${dir}/f`))
    assert.ok(err instanceof InvalidArgumentError, `got ${err?.constructor?.name}: ${err?.message}`)
  })

  test('directory info: mode 0755, drwxr-xr-x, owned by the default user', opts, async () => {
    requireInit(ctx)
    const dir = fresh()
    await ctx.sbx.files.makeDir(dir)
    const info = await ctx.sbx.files.getInfo(dir)
    assert.equal(info.type, 'dir')
    assert.equal(info.name, path.posix.basename(dir))
    assert.equal(info.path, dir)
    assert.equal(info.mode, 0o755)
    assert.equal(info.permissions, 'drwxr-xr-x')
    assert.equal(info.owner, SANDBOX_USER)
    assert.equal(info.group, SANDBOX_USER)
  })

  test('file info: mode 0644, -rw-r--r--, size, owner, mtime', opts, async () => {
    requireInit(ctx)
    const p = `${fresh()}/info.txt`
    const before = Date.now()
    await ctx.sbx.files.write(p, 'hello')
    const info = await ctx.sbx.files.getInfo(p)
    assert.equal(info.type, 'file')
    assert.equal(info.name, 'info.txt')
    assert.equal(info.path, p)
    assert.equal(info.size, 5)
    assert.equal(info.mode, 0o644)
    assert.equal(info.permissions, '-rw-r--r--')
    assert.equal(info.owner, SANDBOX_USER)
    assert.equal(info.group, SANDBOX_USER)
    assert.equal(info.symlinkTarget, undefined)
    assert.ok(info.modifiedTime instanceof Date)
    const st = await lstat(p, { bigint: true })
    assert.equal(info.modifiedTime.getTime(), Number(st.mtimeNs / 1_000_000n))
    assert.ok(info.modifiedTime.getTime() >= before - 2_000)
  })

  test('symlink info: type of the target, resolved symlinkTarget, L permissions', opts, async () => {
    const dir = fresh()
    await fixture(dir, { 'target.txt': 't' })
    await symlink('target.txt', `${dir}/link.txt`)
    const info = await ctx.sbx.files.getInfo(`${dir}/link.txt`)
    assert.equal(info.type, 'file')
    assert.equal(info.name, 'link.txt')
    assert.equal(info.path, `${dir}/link.txt`)
    assert.equal(info.symlinkTarget, `${dir}/target.txt`)
    assert.match(info.permissions, /^L/)
  })

  test('exists for files, directories and missing paths', opts, async () => {
    const dir = fresh()
    assert.equal(await ctx.sbx.files.exists(dir), false)
    await fixture(dir, { f: 'f' })
    assert.equal(await ctx.sbx.files.exists(dir), true)
    assert.equal(await ctx.sbx.files.exists(`${dir}/f`), true)
    assert.equal(await ctx.sbx.files.exists(`${dir}/g`), false)
  })

  test('getInfo of a missing path is FileNotFoundError', opts, async () => {
    const err = await rejection(ctx.sbx.files.getInfo(`${fresh()}/missing`))
    assert.ok(err instanceof FileNotFoundError, `got ${err?.constructor?.name}: ${err?.message}`)
  })

  test('remove deletes files and whole trees; missing is fine', opts, async () => {
    const dir = fresh()
    await fixture(dir, { keep: 'k', 'tree/a/b': 'b', f: 'f' })
    await ctx.sbx.files.remove(`${dir}/f`)
    assert.equal(await ctx.sbx.files.exists(`${dir}/f`), false)
    await ctx.sbx.files.remove(`${dir}/tree`)
    assert.equal(await ctx.sbx.files.exists(`${dir}/tree`), false)
    await ctx.sbx.files.remove(`${dir}/never-existed`)
    assert.deepEqual(
      (await ctx.sbx.files.list(dir)).map((e) => e.name),
      ['keep'],
    )
  })

  test('rename moves files and directories, creating parents', opts, async () => {
    const dir = fresh()
    await fixture(dir, { 'old.txt': 'moved content' })
    const info = await ctx.sbx.files.rename(`${dir}/old.txt`, `${dir}/new/place/new.txt`)
    assert.equal(info.name, 'new.txt')
    assert.equal(info.path, `${dir}/new/place/new.txt`)
    assert.equal(info.type, 'file')
    assert.equal(info.size, 'moved content'.length)
    assert.equal(await ctx.sbx.files.exists(`${dir}/old.txt`), false)
    assert.equal(await readFile(`${dir}/new/place/new.txt`, 'utf8'), 'moved content')

    const d = await ctx.sbx.files.rename(`${dir}/new`, `${dir}/renamed`)
    assert.equal(d.type, 'dir')
    assert.equal(await readFile(`${dir}/renamed/place/new.txt`, 'utf8'), 'moved content')
  })

  test('rename of a missing source is FileNotFoundError', opts, async () => {
    const dir = fresh()
    const err = await rejection(ctx.sbx.files.rename(`${dir}/nope`, `${dir}/also-nope`))
    assert.ok(err instanceof FileNotFoundError, `got ${err?.constructor?.name}: ${err?.message}`)
  })
})

describe('watchDir', () => {
  /** Starts a watch collecting events; returns { handle, events }. */
  async function watch(dir, watchOpts = {}) {
    const events = new Collector()
    const handle = await ctx.sbx.files.watchDir(dir, (e) => events.push(e), { timeoutMs: 0, ...watchOpts })
    return { handle, events }
  }
  const has = (name, type) => (c) => c.items.some((e) => e.name === name && e.type === type)

  test('create, write, remove and rename events with relative names', opts, async () => {
    const dir = fresh()
    await ctx.sbx.files.makeDir(dir)
    const { handle, events } = await watch(dir)
    try {
      // Changes are made on disk directly: the watch is what is under test.
      await writeFile(`${dir}/a.txt`, 'one')
      await events.until(has('a.txt', 'create'), 'create a.txt')
      await events.until(has('a.txt', 'write'), 'write a.txt')
      await rename(`${dir}/a.txt`, `${dir}/b.txt`)
      await events.until(has('a.txt', 'rename'), 'rename a.txt')
      await events.until(has('b.txt', 'create'), 'create b.txt')
      await rm(`${dir}/b.txt`)
      await events.until(has('b.txt', 'remove'), 'remove b.txt')
    } finally {
      await handle.stop()
    }
  })

  test('includeEntry attaches EntryInfo to create/write events', opts, async () => {
    const dir = fresh()
    await ctx.sbx.files.makeDir(dir)
    const { handle, events } = await watch(dir, { includeEntry: true })
    try {
      await writeFile(`${dir}/e.txt`, 'entry')
      await events.until(has('e.txt', 'write'), 'write e.txt')
      const ev = events.items.find((e) => e.name === 'e.txt' && e.type === 'write')
      assert.ok(ev.entry, 'write event carries entry')
      assert.equal(ev.entry.name, 'e.txt')
      assert.equal(ev.entry.path, `${dir}/e.txt`)
      assert.equal(ev.entry.type, 'file')
    } finally {
      await handle.stop()
    }
  })

  test('recursive watch reports nested paths, including new directories', opts, async () => {
    const dir = fresh()
    await ctx.sbx.files.makeDir(`${dir}/sub`)
    const { handle, events } = await watch(dir, { recursive: true })
    try {
      await writeFile(`${dir}/sub/x.txt`, 'x')
      await events.until(has('sub/x.txt', 'write'), 'write sub/x.txt')
      await ctx.sbx.files.makeDir(`${dir}/new/deeper`)
      await events.until(has('new', 'create'), 'create new')
      await events.until(has('new/deeper', 'create'), 'create new/deeper')
      await writeFile(`${dir}/new/deeper/y.txt`, 'y')
      await events.until(has('new/deeper/y.txt', 'create'), 'create new/deeper/y.txt')
    } finally {
      await handle.stop()
    }
  })

  test('non-recursive watch does not report nested files', opts, async () => {
    const dir = fresh()
    await ctx.sbx.files.makeDir(`${dir}/sub`)
    const { handle, events } = await watch(dir)
    try {
      await writeFile(`${dir}/sub/hidden.txt`, 'h')
      // A later top-level event proves the nested write was processed first
      // (inotify events of one watcher arrive in order).
      await writeFile(`${dir}/marker`, 'm')
      await events.until(has('marker', 'create'), 'create marker')
      assert.ok(!events.items.some((e) => e.name.includes('hidden')), JSON.stringify(events.items))
    } finally {
      await handle.stop()
    }
  })

  test('watching a missing path is FileNotFoundError; a file InvalidArgumentError', opts, async () => {
    const dir = fresh()
    const err = await rejection(ctx.sbx.files.watchDir(dir, () => {}))
    assert.ok(err instanceof FileNotFoundError, `got ${err?.constructor?.name}: ${err?.message}`)
    await fixture(dir, { f: 'f' })
    const err2 = await rejection(ctx.sbx.files.watchDir(`${dir}/f`, () => {}))
    assert.ok(err2 instanceof InvalidArgumentError, `got ${err2?.constructor?.name}: ${err2?.message}`)
  })

  test('stop ends the watch and calls onExit', opts, async () => {
    const dir = fresh()
    await ctx.sbx.files.makeDir(dir)
    let exited
    const exitedP = new Promise((r) => (exited = r))
    const handle = await ctx.sbx.files.watchDir(dir, () => {}, { onExit: (err) => exited(err ?? null) })
    await handle.stop()
    await exitedP
  })
})

describe('upload and download URLs (no token)', () => {
  test('uploadUrl accepts a multipart POST; downloadUrl serves the file', opts, async () => {
    const p = `${fresh()}/via-url.txt`
    const up = await ctx.sbx.uploadUrl(p)
    assert.match(up, /\/files\?/)
    assert.equal(new URL(up).searchParams.get('signature'), null)
    const form = new FormData()
    form.append('file', new Blob(['from a plain fetch']), 'via-url.txt')
    const res = await fetch(up, { method: 'POST', body: form })
    assert.equal(res.status, 200, await res.clone().text())
    const body = await res.json()
    assert.deepEqual(body, [{ name: 'via-url.txt', path: p, type: 'file' }])

    const down = await ctx.sbx.downloadUrl(p)
    const got = await fetch(down)
    assert.equal(got.status, 200)
    assert.equal(await got.text(), 'from a plain fetch')
  })

  test('downloadUrl with a user; missing file is 404 JSON', opts, async () => {
    const p = `${fresh()}/missing.txt`
    const url = new URL(await ctx.sbx.downloadUrl(p, { user: 'root' }))
    assert.equal(url.searchParams.get('username'), 'root')
    const res = await fetch(url)
    assert.equal(res.status, 404)
    const body = await res.json()
    assert.equal(body.code, 404)
    assert.match(body.message, /does not exist/)
  })
})

describe('large files', () => {
  test('100 MiB round trip keeps the sha256', { timeout: 10 * 60_000 }, async () => {
    const p = `${fresh()}/big.bin`
    const chunk = 1 << 20
    const total = 100
    const sent = createHash('sha256')
    let i = 0
    const source = new ReadableStream({
      pull(controller) {
        if (i === total) {
          controller.close()
          return
        }
        const b = randomBytes(chunk)
        sent.update(b)
        controller.enqueue(new Uint8Array(b.buffer, b.byteOffset, b.byteLength))
        i++
      },
    })
    await ctx.sbx.files.write(p, source)
    const want = sent.digest('hex')

    // Sandbox side: the file on disk (envd runs on this machine).
    const disk = createHash('sha256')
    for await (const c of createReadStream(p)) disk.update(c)
    assert.equal(disk.digest('hex'), want)
    assert.equal((await ctx.sbx.files.getInfo(p)).size, total * chunk)

    const stream = await ctx.sbx.files.read(p, { format: 'stream' })
    const got = createHash('sha256')
    let n = 0
    for await (const c of stream) {
      got.update(c)
      n += c.length
    }
    assert.equal(n, total * chunk)
    assert.equal(got.digest('hex'), want)
  })
})
