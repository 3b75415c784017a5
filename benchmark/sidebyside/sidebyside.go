// Package sidebyside measures wxgate three ways in one run, on loopback, at
// the same concurrency and message mix: (a) the floor, the ingress with the
// workers' reply logic in process and no bus; (b) standalone mode; (c)
// distributed, a nats-server process, one ingress and worker processes.
// It also measures open-loop latency at fixed rates, the scaling of (c)
// with workers, and the analytics consumer draining a pre-filled stream.
package sidebyside

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/loadgen"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/wxsim/sim"
)

// Options bound a run.
type Options struct {
	Connections int           // closed-loop concurrency
	Duration    time.Duration // of each closed-loop measurement
	Warmup      time.Duration
	Rates       []float64     // open-loop rates, requests/s
	RateTime    time.Duration // of each open-loop measurement
	Workers     int           // worker processes in (c)
	Scaling     []int         // worker counts for the scaling curve of (c)
	Scenes      int           // QR scenes in the traffic
	Records     int           // analytics: records pre-filled in the stream
	RecordSets  []int         // analytics: scene counts to drain with
	Soak        time.Duration // (c) at SoakRate for this long, memory sampled; 0 skips
	SoakRate    float64
	// SoakKill, when set, kills a worker -9 this often during the soak
	// (round robin) and starts a replacement; the soak then fails if any
	// request failed.
	SoakKill time.Duration
	// Env is added to every wxgate process's environment (KEY=value), to
	// compare settings.
	Env []string
	// Peer adds the peer configuration: the same mix answered by a
	// silenceper/wechat server (benchmark/peer, its own module).
	Peer bool
	// Wrk measures every configuration with wrk as well, when it is
	// installed.
	Wrk bool
	// Growth, when set, sends this many distinct people's scans through
	// standalone and reports memory and disk per person, at the burst's
	// peak, caught up, and after GrowthSettle.
	Growth       int
	GrowthSettle time.Duration
	Out          io.Writer
}

const token = "bench-token"

type env struct {
	bin     string
	dir     string
	o       Options
	wrkRuns int // wrk invocations so far: each sends its own messages
}

// result is one closed- or open-loop measurement.
type result struct {
	name   string
	report loadgen.Report
	procs  []procUsage
	cpuPer time.Duration // server CPU (all its processes, not the load generator) per request
}

type procUsage struct {
	name  string
	rssKB int64
	cpu   float64 // share of one core over the measurement
}

// Run does the whole comparison and prints it.
func Run(ctx context.Context, o Options) error {
	dir, err := os.MkdirTemp("", "wxgate-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e := &env{bin: filepath.Join(dir, "bin"), dir: dir, o: o}
	fmt.Fprintf(o.Out, "building binaries...\n")
	if err := build(ctx, e.bin); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "machine: %s\n", machine())
	fmt.Fprintf(o.Out, "closed loop: %d connections, %s each, mix %s, %d scenes, load generator in this process\n\n",
		o.Connections, o.Duration, "text=60,scan=20,subscribe=15,other=5", o.Scenes)

	type config struct {
		name  string
		start func() (*setup, error)
	}
	configs := []config{
		{"(a) floor: no bus", func() (*setup, error) { return e.floor() }},
		{"(b) standalone", func() (*setup, error) { return e.standalone() }},
		{fmt.Sprintf("(c) distributed, %d workers", o.Workers), func() (*setup, error) { return e.distributed(o.Workers) }},
	}
	if o.Peer {
		if err := buildPeer(ctx, e.bin); err != nil {
			return err
		}
		configs = append(configs, config{"(p) peer: silenceper/wechat", func() (*setup, error) { return e.peer() }})
	}
	var results []result
	for _, cfg := range configs {
		s, err := cfg.start()
		if err != nil {
			return fmt.Errorf("%s: %w", cfg.name, err)
		}
		r, err := e.measure(ctx, cfg.name, s, 0, o.Duration)
		s.stop()
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	printTable(o.Out, results)
	a, b, c := results[0].report, results[1].report, results[2].report
	fmt.Fprintf(o.Out, "\nratios: throughput b/a %.2f  c/a %.2f;  p99 b/a %.2f  c/a %.2f\n",
		b.Throughput()/a.Throughput(), c.Throughput()/a.Throughput(),
		ratio(b.Percentile(99), a.Percentile(99)), ratio(c.Percentile(99), a.Percentile(99)))
	if o.Peer {
		printGoals(o.Out, "load generator", goalsOf(results[1], results[2], results[3]))
	}
	if o.Wrk {
		if _, err := exec.LookPath("wrk"); err != nil {
			fmt.Fprintf(o.Out, "\nwrk: not installed, skipped (apt-get install wrk)\n")
		} else {
			fmt.Fprintf(o.Out, "\nwrk -t2 -c%d -d%s, the same mix (server CPU per request: all its processes):\n", o.Connections, o.Duration)
			var wrs []wrkResult
			for _, cfg := range configs {
				s, err := cfg.start()
				if err != nil {
					return fmt.Errorf("%s: %w", cfg.name, err)
				}
				r, err := e.wrk(ctx, cfg.name, s, o.Duration)
				s.stop()
				if err != nil {
					return err
				}
				wrs = append(wrs, r)
			}
			printWrk(o.Out, wrs)
			if o.Peer {
				printGoals(o.Out, "wrk", goalsOfWrk(wrs[1], wrs[2], wrs[3]))
			}
		}
	}

	if len(o.Rates) > 0 {
		fmt.Fprintf(o.Out, "\nopen loop (latency from each request's due time), %s per rate:\n", o.RateTime)
		var open []result
		for _, cfg := range []struct {
			name  string
			start func() (*setup, error)
		}{
			{"(a)", func() (*setup, error) { return e.floor() }},
			{"(b)", func() (*setup, error) { return e.standalone() }},
			{"(c)", func() (*setup, error) { return e.distributed(o.Workers) }},
		} {
			s, err := cfg.start()
			if err != nil {
				return err
			}
			for _, rate := range o.Rates {
				r, err := e.measure(ctx, fmt.Sprintf("%s at %.0f/s", cfg.name, rate), s, rate, o.RateTime)
				if err != nil {
					s.stop()
					return err
				}
				open = append(open, r)
			}
			s.stop()
		}
		printTable(o.Out, open)
	}

	if len(o.Scaling) > 0 {
		fmt.Fprintf(o.Out, "\nscaling of (c) with worker processes:\n")
		var scaling []result
		for _, n := range o.Scaling {
			s, err := e.distributed(n)
			if err != nil {
				return err
			}
			r, err := e.measure(ctx, fmt.Sprintf("(c) %d workers", n), s, 0, o.Duration)
			s.stop()
			if err != nil {
				return err
			}
			scaling = append(scaling, r)
		}
		printTable(o.Out, scaling)
	}

	for _, scenes := range o.RecordSets {
		if err := e.analytics(ctx, o.Records, scenes); err != nil {
			return err
		}
	}
	if o.Soak > 0 {
		if err := e.soak(ctx); err != nil {
			return err
		}
	}
	if o.Growth > 0 {
		if err := e.growth(ctx, o.Growth, o.GrowthSettle); err != nil {
			return err
		}
	}
	return nil
}

// setup is a running configuration: its URL and its processes.
type setup struct {
	url     string
	natsURL string // distributed only
	procs   []*proc
}

// worker starts a workers process and waits until it serves.
func (e *env) worker(name, natsURL string) (*proc, error) {
	w, err := startProc(name, filepath.Join(e.bin, "workers"), append([]string{"NATS_URL=" + natsURL, "ADMIN_ADDR=127.0.0.1:0"}, e.o.Env...))
	if err != nil {
		return nil, err
	}
	if _, err := w.waitLine(regexp.MustCompile(`"msg":"worker started"`)); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

func (s *setup) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].stop()
	}
}

func (e *env) ingress(args []string, envs ...string) (*proc, string, error) {
	p, err := startProc("ingress", filepath.Join(e.bin, "ingress"), append([]string{
		"HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "WECHAT_TOKEN=" + token, "DATA_DIR=" + e.tempDir("data"),
	}, append(envs, e.o.Env...)...), args...)
	if err != nil {
		return nil, "", err
	}
	addr, err := p.listen("http")
	if err != nil {
		p.stop()
		return nil, "", err
	}
	return p, "http://" + addr + "/wechat", nil
}

func (e *env) tempDir(prefix string) string {
	d, _ := os.MkdirTemp(e.dir, prefix)
	return d
}

func (e *env) floor() (*setup, error) {
	p, url, err := e.ingress([]string{"-no-bus"})
	if err != nil {
		return nil, err
	}
	return &setup{url: url, procs: []*proc{p}}, nil
}

func (e *env) standalone() (*setup, error) {
	p, url, err := e.ingress([]string{"-standalone", "-nats-listen", ""})
	if err != nil {
		return nil, err
	}
	return &setup{url: url, procs: []*proc{p}}, nil
}

var natsListenRE = regexp.MustCompile(`Listening for client connections on (\S+)`)

func (e *env) natsServer() (*proc, string, error) {
	p, err := startProc("nats-server", filepath.Join(e.bin, "nats-server"), nil,
		"-a", "127.0.0.1", "-p", "-1", "-js", "-sd", e.tempDir("nats"))
	if err != nil {
		return nil, "", err
	}
	m, err := p.waitLine(natsListenRE)
	if err != nil {
		p.stop()
		return nil, "", err
	}
	return p, "nats://" + m[1], nil
}

func (e *env) distributed(workers int) (*setup, error) {
	s := &setup{}
	ns, url, err := e.natsServer()
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, ns)
	s.natsURL = url
	for i := 0; i < workers; i++ {
		w, err := e.worker(fmt.Sprintf("worker%d", i+1), url)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.procs = append(s.procs, w)
	}
	in, u, err := e.ingress(nil, "NATS_URL="+url)
	if err != nil {
		s.stop()
		return nil, err
	}
	s.procs = append(s.procs, in)
	if _, err := in.waitLine(regexp.MustCompile(`"msg":"nats connected"`)); err != nil {
		s.stop()
		return nil, err
	}
	s.url = u
	return s, nil
}

// measure warms s up, then loads it closed loop (rate 0) or at rate.
func (e *env) measure(ctx context.Context, name string, s *setup, rate float64, d time.Duration) (result, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: e.o.Connections, DisableCompression: true}}
	// The warm-up sends messages of its own: request i of a run is the
	// same message each time, and the measurement's would otherwise be
	// retries of the warm-up's (a different, rarer path).
	if e.o.Warmup > 0 {
		warm := sim.DefaultMix.Requests(wechat.Sender{Token: token}, client, s.url, e.o.Scenes)
		if _, err := loadgen.Run(ctx, loadgen.Options{Concurrency: e.o.Connections, Duration: e.o.Warmup, Do: warm}); err != nil {
			return result{}, err
		}
	}
	do := sim.DefaultMix.Requests(wechat.Sender{Token: token}, client, s.url, e.o.Scenes)
	before := make([]usage, len(s.procs))
	for i, p := range s.procs {
		before[i] = p.usage()
	}
	selfBefore := selfUsage()
	r, err := loadgen.Run(ctx, loadgen.Options{Concurrency: e.o.Connections, Rate: rate, Duration: d, Do: do})
	if err != nil {
		return result{}, err
	}
	res := result{name: name, report: r}
	var spent time.Duration
	for i, p := range s.procs {
		u := p.usage()
		spent += u.cpu - before[i].cpu
		res.procs = append(res.procs, procUsage{name: p.name, rssKB: u.rssKB, cpu: (u.cpu - before[i].cpu).Seconds() / r.Elapsed.Seconds()})
	}
	if answered := r.Sent - r.Err; answered > 0 {
		res.cpuPer = spent / time.Duration(answered)
	}
	self := selfUsage()
	res.procs = append(res.procs, procUsage{name: "loadgen", rssKB: self.rssKB, cpu: (self.cpu - selfBefore.cpu).Seconds() / r.Elapsed.Seconds()})
	return res, nil
}

func printTable(w io.Writer, rs []result) {
	fmt.Fprintf(w, "%-32s %10s %9s %9s %9s %7s %9s %9s  %s\n", "configuration", "req/s", "p50", "p99", "p99.9", "errors", "fallbacks", "CPU/req", "processes: RSS MiB, CPU (1.0 = one core)")
	for _, r := range rs {
		var ps []string
		for _, p := range r.procs {
			ps = append(ps, fmt.Sprintf("%s %.1f MiB %.2f", p.name, float64(p.rssKB)/1024, p.cpu))
		}
		fmt.Fprintf(w, "%-32s %10.0f %9s %9s %9s %7d %9d %7.0fµs  %s\n", r.name, r.report.Throughput(),
			dur(r.report.Percentile(50)), dur(r.report.Percentile(99)), dur(r.report.Percentile(99.9)),
			r.report.Err, r.report.Fallbacks, float64(r.cpuPer)/float64(time.Microsecond), strings.Join(ps, "; "))
	}
}

func dur(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + "ms"
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func machine() string {
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%s, %d CPUs%s", cpu, numCPU(), mem)
}
