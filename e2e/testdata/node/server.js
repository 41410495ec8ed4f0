'use strict';
// The node server of the real-browser system test (e2e/browser_test.go):
// node's http module only, its keep-alive left at the default (idle
// connections closed 5 s after their last response).
//
//   GET /       a page with 12 scripts; on load it opens a WebSocket
//   GET /aN.js  a script, answered after 100 ms so that the browser fetches
//               them over several parallel connections, as a real page's
//   GET /ws     a WebSocket (RFC 6455 handshake by hand), a text frame a second
//
// Usage: node server.js PORT. Logs "listening PORT" once ready, "ws up PEER"
// once a WebSocket is open (the test waits for these), "ws down PEER" and
// "conn closed PEER MS ms" with each connection's lifetime.
const http = require('http');
const crypto = require('crypto');

const port = Number(process.argv[2]);
const assets = 12;
const assetDelayMs = 100;
const wsGUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'; // RFC 6455, section 1.3

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>e2e node</title>
<link rel="icon" href="data:,">
${Array.from({ length: assets }, (_, i) => `<script src="/a${i + 1}.js"></script>`).join('\n')}
</head><body>
<p id="msg">connecting</p>
<script>
window.addEventListener('load', function () {
  var ws = new WebSocket('ws://' + location.host + '/ws');
  ws.onmessage = function (e) { document.getElementById('msg').textContent = e.data; };
});
</script>
</body></html>
`;

const server = http.createServer((req, res) => {
  const m = /^\/a(\d+)\.js$/.exec(req.url);
  if (req.url === '/') {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(page);
  } else if (m && +m[1] >= 1 && +m[1] <= assets) {
    setTimeout(() => {
      res.writeHead(200, { 'Content-Type': 'application/javascript', 'Cache-Control': 'no-store' });
      res.end(`window.loaded = (window.loaded || 0) + 1;\n`);
    }, assetDelayMs);
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
  }
});

// An unmasked text frame from the server, payload under 126 bytes.
function frame(text) {
  const payload = Buffer.from(text);
  return Buffer.concat([Buffer.from([0x81, payload.length]), payload]);
}

server.on('upgrade', (req, socket) => {
  const key = req.headers['sec-websocket-key'];
  const peer = socket.remoteAddress;
  if (req.url !== '/ws' || !key || String(req.headers.upgrade).toLowerCase() !== 'websocket') {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(key + wsGUID).digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
  console.log(`ws up ${peer}`);
  let n = 0;
  const timer = setInterval(() => socket.write(frame(`tick ${++n}`)), 1000);
  let open = true;
  const down = () => {
    if (!open) return;
    open = false;
    clearInterval(timer);
    console.log(`ws down ${peer}`);
  };
  // The browser's frames are masked; only its close frame (opcode 8) matters.
  socket.on('data', (b) => {
    if ((b[0] & 0x0f) === 0x8) {
      socket.end(Buffer.from([0x88, 0]));
      down();
    }
  });
  socket.on('error', down);
  socket.on('close', down);
});

// A keep-alive connection lives its load time plus the 5 s idle timeout,
// which can be longer than the exporter's default duration of 6 s.
server.on('connection', (socket) => {
  const t0 = Date.now();
  const peer = socket.remoteAddress;
  socket.on('close', () => console.log(`conn closed ${peer} ${Date.now() - t0} ms`));
});

server.listen(port, '0.0.0.0', () => console.log(`listening ${port}`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
