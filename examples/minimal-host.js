// A minimal DSCode extension host for dscode-hostd, Node built-ins only.
// Start it with:  dscode-hostctl start my.ext /path/to/minimal-host.js
// then:           dscode-hostctl call host.request '{"extensionId":"my.ext","type":"echo","payload":{"hi":1}}'
'use strict';
const net = require('net');
const fs = require('fs');

// 1. dscode-hostd tells us two sockets (ipc://<path>; named pipes on Windows):
//    where WE listen for its requests, and where IT listens for ours.
const strip = (url) => url.replace(/^ipc:\/\//, '');
const myPath = strip(process.env.DSCODE_IPC_URL);
const daemonPath = strip(process.env.DSCODE_INCOMING_IPC_URL);

// 2. Every message is a 4-byte big-endian length, then UTF-8 JSON
//    {id, type, payload}. Replies reuse the id, with type `<type>-response`
//    (payload = result) or `<type>-error` (payload = {error: "message"}).
function send(sock, msg) {
  const body = Buffer.from(JSON.stringify(msg), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  sock.write(Buffer.concat([head, body]));
}
function onMessages(sock, handler) {
  let buf = Buffer.alloc(0);
  sock.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const len = buf.readUInt32BE(0);
      handler(JSON.parse(buf.subarray(4, 4 + len).toString('utf8')));
      buf = buf.subarray(4 + len);
    }
  });
}

// 3. Answer the daemon's requests. It sends `ping` as a heartbeat: answer it
//    promptly, or the daemon will judge the host hung and restart it.
const handlers = {
  ping: () => ({}),
  echo: (payload) => payload,
};
// 4. The handshake, in the order DSCode's real host uses (the daemon accepts
//    the other order too; see proto-docs/ext-host-protocol.md): listen, wait
//    until the daemon connects to us (it does so right after spawning us),
//    then connect to the daemon and send `extension-host-ready` as a
//    request. The daemon answers {"success": true} at once. Requests to the
//    editor (e.g. window-show-message) go over this connection too; if no
//    editor is attached yet they wait for one (up to 30 s).
let daemon = null;
try { fs.unlinkSync(myPath); } catch (_) {}
net.createServer((sock) => {
  onMessages(sock, (msg) => {
    const h = handlers[msg.type];
    if (!h) return send(sock, { id: msg.id, type: `${msg.type}-error`, payload: { error: `unknown type ${msg.type}` } });
    Promise.resolve()
      .then(() => h(msg.payload))
      .then((result) => send(sock, { id: msg.id, type: `${msg.type}-response`, payload: result }))
      .catch((e) => send(sock, { id: msg.id, type: `${msg.type}-error`, payload: { error: String(e) } }));
  });
  if (daemon) return;
  daemon = net.createConnection(daemonPath, () => {
    send(daemon, { id: 'ready_1', type: 'extension-host-ready', payload: { ready: true } });
  });
  onMessages(daemon, (reply) => console.log('daemon replied:', reply.type, JSON.stringify(reply.payload)));
}).listen(myPath);
