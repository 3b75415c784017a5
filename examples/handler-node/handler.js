// A wxgate rule handler in Node.js.
//
// A rule {"reply":{"type":"handler","subject":"bots.echo"}} makes the
// workers send each message it matches to this subject as JSON:
//   {"account","openid","msg_type","event","scene","content","recognition",
//    "key","create_time","raw_xml"}
// and the handler answers {"reply":{...}}: a text, image, news or none reply,
// as a stored rule's. wxgate keeps its promises around the handler: WeChat's
// retries of one message run it once, and an answer slower than WeChat's
// deadline goes out as a customer-service message (a late reply).
//
//   NATS_URL=nats://token@127.0.0.1:4222 SUBJECT=bots.echo node handler.js
"use strict";

const { connect, JSONCodec } = require("nats");

const url = process.env.NATS_URL || "nats://127.0.0.1:4222";
const subject = process.env.SUBJECT || "bots.echo";
// DELAY_MS makes every answer that slow: past WeChat's 5 s, the reply goes
// as a late reply.
const delay = Number(process.env.DELAY_MS || 0);

function answer(req) {
  const said = req.msg_type === "voice" ? req.recognition : req.content;
  if (req.msg_type === "text" || req.msg_type === "voice") {
    return { reply: { type: "text", content: `Node.js 收到：${said}` } };
  }
  if (req.scene) {
    return { reply: { type: "text", content: `Node.js 欢迎你，来自 ${req.scene}` } };
  }
  return { reply: { type: "none" } };
}

async function main() {
  // The token, if any, rides in the URL (nats://token@host:port).
  const u = new URL(url);
  // Waits for NATS at start and reconnects for ever, as wxgate's own processes do.
  const opts = { servers: `${u.hostname}:${u.port || 4222}`, name: "wxgate-example-handler", waitOnFirstConnect: true, maxReconnectAttempts: -1 };
  if (u.username && !u.password) opts.token = decodeURIComponent(u.username);
  if (u.username && u.password) {
    opts.user = decodeURIComponent(u.username);
    opts.pass = decodeURIComponent(u.password);
  }
  const nc = await connect(opts);
  const jc = JSONCodec();
  // A queue group: run as many copies as the load needs.
  const sub = nc.subscribe(subject, { queue: "wxgate-example-handler" });
  console.log(JSON.stringify({ msg: "handler ready", subject }));
  for (const shutdown of ["SIGINT", "SIGTERM"]) {
    process.on(shutdown, () => nc.drain());
  }
  for await (const m of sub) {
    let out;
    try {
      out = answer(jc.decode(m.data));
    } catch (err) {
      // A request we cannot read: answer none rather than leave it waiting.
      out = { reply: { type: "none" } };
    }
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    m.respond(jc.encode(out));
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
