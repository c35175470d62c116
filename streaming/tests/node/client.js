// Independent clients for frakti's streaming server, built on libraries we
// did not write: spdy-transport (SPDY/3.1 framing, zlib header compression,
// flow control) and ws (WebSocket). Prints one JSON object on stdout.
//
//   node client.js spdy-exec URL PROTOCOL [STDIN_TEXT]
//   node client.js spdy-portforward URL PORT COUNT
//   node client.js ws-exec URL PROTOCOL [STDIN_TEXT]
'use strict'

const crypto = require('crypto')
const http = require('http')
const transport = require('spdy-transport')
const WebSocket = require('ws')

function upgrade (url, protocols) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: 'POST',
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'SPDY/3.1',
        'X-Stream-Protocol-Version': protocols
      }
    })
    req.on('upgrade', (res, socket, head) => {
      if (head && head.length) socket.unshift(head)
      resolve({ socket, protocol: res.headers['x-stream-protocol-version'] })
    })
    req.on('response', (res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${body}`)))
    })
    req.on('error', reject)
    req.end()
  })
}

function session (socket) {
  const conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false })
  conn.start(3.1)
  conn.on('error', (e) => fail(e))
  return conn
}

// Opens a stream and resolves once the server's SYN_REPLY arrived.
function open (conn, headers, halfClose) {
  return new Promise((resolve, reject) => {
    const stream = conn.request({ method: 'POST', path: '/', host: 'localhost', headers }, (err) => {
      if (err) reject(err)
    })
    stream.on('response', () => resolve(stream))
    stream.on('error', reject)
    if (halfClose) stream.end()
  })
}

function collect (stream) {
  return new Promise((resolve, reject) => {
    const chunks = []
    stream.on('data', (c) => chunks.push(c))
    stream.on('end', () => resolve(Buffer.concat(chunks)))
    stream.on('error', reject)
  })
}

function summary (buf) {
  return {
    length: buf.length,
    sha256: crypto.createHash('sha256').update(buf).digest('hex'),
    text: buf.length <= 4096 ? buf.toString('utf8') : null
  }
}

// What the client was doing, reported if it fails.
let stage = 'start'

function fail (e) {
  console.log(JSON.stringify({ error: String(e && e.stack ? e.stack : e), stage }))
  process.exit(1)
}

async function spdyExec (url, protocol, stdinText) {
  stage = 'upgrade'
  const { socket, protocol: negotiated } = await upgrade(url, [protocol])
  const conn = session(socket)
  stage = 'open streams'
  const error = await open(conn, { streamtype: 'error' }, true)
  const stdout = await open(conn, { streamtype: 'stdout' }, true)
  const stderr = await open(conn, { streamtype: 'stderr' }, true)
  let stdin = null
  if (stdinText !== undefined) {
    stdin = await open(conn, { streamtype: 'stdin' }, false)
  }
  stage = 'read output'
  const results = Promise.all([collect(stdout), collect(stderr), collect(error)])
  if (stdin) {
    stdin.write(stdinText)
    stdin.end()
  }
  const [out, err, status] = await results
  socket.destroy()
  return { negotiated, stdout: summary(out), stderr: summary(err), status: status.toString('utf8') }
}

async function spdyPortForward (url, port, count) {
  const { socket, protocol: negotiated } = await upgrade(url, ['portforward.k8s.io'])
  const conn = session(socket)
  const conns = []
  for (let i = 0; i < count; i++) {
    const id = String(i)
    const error = await open(conn, { streamtype: 'error', port: String(port), requestid: id }, true)
    const data = await open(conn, { streamtype: 'data', port: String(port), requestid: id }, false)
    conns.push({ i, error, data })
  }
  // All connections are open before any request is sent: they run at once.
  const results = await Promise.all(conns.map(async ({ i, error, data }) => {
    const pending = Promise.all([collect(data), collect(error)])
    data.write(`GET /node${i} HTTP/1.0\r\n\r\n`)
    const [body, err] = await pending
    return { response: body.toString('utf8'), error: err.toString('utf8') }
  }))
  socket.destroy()
  return { negotiated, results }
}

function wsExec (url, protocol, stdinText) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), [protocol])
    const out = [[], [], [], []]
    ws.on('open', () => {
      if (stdinText !== undefined) {
        ws.send(Buffer.concat([Buffer.from([0]), Buffer.from(stdinText)]))
        if (protocol.startsWith('v5.')) ws.send(Buffer.from([255, 0]))
      }
    })
    ws.on('message', (data) => {
      const buf = Buffer.from(data)
      if (buf.length > 0 && buf[0] < 4) out[buf[0]].push(buf.subarray(1))
    })
    ws.on('close', () => {
      resolve({
        negotiated: ws.protocol,
        stdout: summary(Buffer.concat(out[1])),
        stderr: summary(Buffer.concat(out[2])),
        status: Buffer.concat(out[3]).toString('utf8')
      })
    })
    ws.on('error', reject)
  })
}

async function main () {
  const [mode, url, ...rest] = process.argv.slice(2)
  const timer = setTimeout(() => fail(new Error('timed out')), 30000)
  let result
  if (mode === 'spdy-exec') result = await spdyExec(url, rest[0], rest[1])
  else if (mode === 'spdy-portforward') result = await spdyPortForward(url, Number(rest[0]), Number(rest[1]))
  else if (mode === 'ws-exec') result = await wsExec(url, rest[0], rest[1])
  else throw new Error(`unknown mode ${mode}`)
  clearTimeout(timer)
  console.log(JSON.stringify(result))
}

main().catch(fail)
