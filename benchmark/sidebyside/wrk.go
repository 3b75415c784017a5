package sidebyside

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/wechat"
)

// wrkScript sends the same mix as the in-process load generator (text 60,
// SCAN 20, subscribe with a scene 15, image 5), every message distinct, in
// plain mode: the signature covers the token, timestamp and nonce only, so
// one signed query (computed by the harness, fresh for each run) serves
// every body. The body is built per request from a counter per thread,
// offset per wrk run: the warm-up's messages are not sent again in the
// measurement, where they would be retries (a cheaper, rarer path).
const wrkScript = `
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  path = args[1]
  scenes = tonumber(args[2])
  now = args[3]
  offset = tonumber(args[4])
  n = 0
  headers = {["Content-Type"] = "text/xml"}
end

local head = "<xml><ToUserName><![CDATA[gh_wrk]]></ToUserName><FromUserName><![CDATA[o_wrk_"

request = function()
  n = n + 1
  local i = offset + tid * 100000000 + n
  local slot = (i * 2654435761) % 100
  local from = head .. i .. "]]></FromUserName><CreateTime>" .. now .. "</CreateTime>"
  local scene = "scene_" .. (i % scenes)
  local body
  if slot < 60 then
    body = from .. "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[load " .. i .. "]]></Content><MsgId>" .. (2000000000 + i) .. "</MsgId></xml>"
  elseif slot < 80 then
    body = from .. "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[" .. scene .. "]]></EventKey><Ticket><![CDATA[load_ticket]]></Ticket></xml>"
  elseif slot < 95 then
    body = from .. "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_" .. scene .. "]]></EventKey><Ticket><![CDATA[load_ticket]]></Ticket></xml>"
  else
    body = from .. "<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://mmbiz.qpic.cn/load.jpg]]></PicUrl><MediaId><![CDATA[media_" .. i .. "]]></MediaId><MsgId>" .. (2000000000 + i) .. "</MsgId></xml>"
  end
  return wrk.format("POST", path, headers, body)
end
`

var (
	wrkRequestsRE = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(\w+)`)
	wrkRateRE     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkP99RE      = regexp.MustCompile(`(?m)^\s+99%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkErrorsRE   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)`)
)

// wrkResult is one wrk run against a configuration.
type wrkResult struct {
	name     string
	requests int64
	rate     float64
	p99      time.Duration
	errors   string
	cpuPer   time.Duration // server CPU (all its processes) per request
}

// wrk loads s with wrk for d at the closed-loop connection count, two
// threads, and reads its report; the CPU the setup's processes spent in the
// meantime, over the requests wrk counted, is the CPU per request.
func (e *env) wrk(ctx context.Context, name string, s *setup, d time.Duration) (wrkResult, error) {
	script := filepath.Join(e.dir, "mix.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o600); err != nil {
		return wrkResult{}, err
	}
	now := time.Now()
	ts, nonce := strconv.FormatInt(now.Unix(), 10), "wrk"
	path := "/wechat?signature=" + wechat.Signature(token, ts, nonce) + "&timestamp=" + ts + "&nonce=" + nonce
	base := strings.TrimSuffix(s.url, "/wechat")
	run := func(d time.Duration) (string, error) {
		e.wrkRuns++
		cmd := exec.CommandContext(ctx, "wrk", "-t2", "-c"+strconv.Itoa(e.o.Connections), "-d"+d.String(), "--latency",
			"-s", script, base, "--", path, strconv.Itoa(e.o.Scenes), ts, strconv.Itoa(e.wrkRuns*1_000_000_000))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("wrk: %w\n%s", err, out)
		}
		return string(out), nil
	}
	if e.o.Warmup > 0 {
		if _, err := run(e.o.Warmup); err != nil {
			return wrkResult{}, err
		}
	}
	before := cpuOf(s.procs)
	out, err := run(d)
	if err != nil {
		return wrkResult{}, err
	}
	spent := cpuOf(s.procs) - before
	r := wrkResult{name: name}
	m := wrkRequestsRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no request count in\n%s", out)
	}
	r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	if m := wrkRateRE.FindStringSubmatch(out); m != nil {
		r.rate, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := wrkP99RE.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]
		r.p99 = time.Duration(v * float64(unit))
	}
	var errs []string
	for _, m := range wrkErrorsRE.FindAllString(out, -1) {
		errs = append(errs, m)
	}
	r.errors = strings.Join(errs, "; ")
	if r.requests > 0 {
		r.cpuPer = spent / time.Duration(r.requests)
	}
	return r, nil
}

// cpuOf is the CPU time the processes have spent so far.
func cpuOf(ps []*proc) time.Duration {
	var total time.Duration
	for _, p := range ps {
		total += p.usage().cpu
	}
	return total
}

func printWrk(w interface{ Write([]byte) (int, error) }, rs []wrkResult) {
	fmt.Fprintf(w, "%-32s %10s %9s %14s  %s\n", "configuration", "req/s", "p99", "CPU/request", "errors")
	for _, r := range rs {
		errs := r.errors
		if errs == "" {
			errs = "none"
		}
		fmt.Fprintf(w, "%-32s %10.0f %9s %12.0fµs  %s\n", r.name, r.rate, dur(r.p99), float64(r.cpuPer)/float64(time.Microsecond), errs)
	}
}
