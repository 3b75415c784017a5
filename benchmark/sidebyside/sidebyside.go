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
	// Accounts, when set, measures the mix spread over this many accounts
	// against the default account alone, and what so many configured
	// accounts cost a standalone process's memory.
	Accounts int
	// Rules, when set, stores this many rules (a tenth of them regexes)
	// ahead of the default account's defaults in every configuration with
	// a bus, before it is measured: the replies stay the seed's.
	Rules int
	// Growth, when set, is the growth mode: this many people a day for
	// GrowthDays days over GrowthScenes scenes, stored with past
	// Wx-Received, for each population model (GrowthModel "same", "new",
	// or "" for both); memory, disk and the API's latency, settled
	// GrowthSettle after the last day.
	Growth, GrowthDays, GrowthScenes int
	GrowthModel                      string
	GrowthSettle                     time.Duration
	Out                              io.Writer
}

const token = "bench-token"

type env struct {
	bin     string
	dir     string
	o       Options
	wrkRuns int // wrk invocations so far: each sends its own messages
}

// Result is what a run measured, for callers that check it; the report
// is written to Options.Out as the run goes.
type Result struct {
	Closed  []Measurement // (a), (b), (c) and, with Peer, (p): closed loop
	Open    []Measurement // (a), (b) and (c) at each rate
	Scaling []Measurement // (c) with each worker count
	Drains  []Drain       // the analytics applying a pre-filled stream, per scene count
	Soak    *Measurement  // (c) at SoakRate, when Soak is set
	Growth  []Growth      // the growth mode, per population model
	// Accounts are (b) and (c), each with the default account alone, then
	// with the mix over Options.Accounts accounts.
	Accounts []Measurement
}

// Measurement is one closed- or open-loop measurement.
type Measurement struct {
	Name   string
	Report loadgen.Report
	Procs  []Proc        // the configuration's processes, then the load generator
	CPUPer time.Duration // server CPU (all its processes, not the load generator) per request
}

// Proc is what one process used over a measurement.
type Proc struct {
	Name  string
	RSSKB int64
	CPU   float64 // share of one core over the measurement
}

// Drain is the analytics applying Records scans over Scenes scenes.
type Drain struct {
	Records, Scenes int
	Elapsed         time.Duration
	Exact           bool // every count came out as sent
}

// Run does the whole comparison and prints it.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	dir, err := os.MkdirTemp("", "wxgate-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	e := &env{bin: filepath.Join(dir, "bin"), dir: dir, o: o}
	fmt.Fprintf(o.Out, "building binaries...\n")
	if err := build(ctx, e.bin); err != nil {
		return res, err
	}
	fmt.Fprintf(o.Out, "machine: %s\n", machine())
	if o.Duration > 0 { // -duration 0: no closed loop (the growth mode alone, say)
		if err := e.closedAndWrk(ctx, &res); err != nil {
			return res, err
		}
	}
	if res.Open, err = e.openLoop(ctx); err != nil {
		return res, err
	}
	if res.Scaling, err = e.scaling(ctx); err != nil {
		return res, err
	}
	for _, scenes := range o.RecordSets {
		d, err := e.analytics(ctx, o.Records, scenes)
		res.Drains = append(res.Drains, d)
		if err != nil {
			return res, err
		}
	}
	if o.Soak > 0 {
		if res.Soak, err = e.soak(ctx); err != nil {
			return res, err
		}
	}
	if o.Accounts > 0 {
		if res.Accounts, err = e.accounts(ctx, o.Accounts); err != nil {
			return res, err
		}
		if err := e.accountsMemory(ctx, o.Accounts); err != nil {
			return res, err
		}
	}
	if o.Growth > 0 {
		if res.Growth, err = e.growth(ctx); err != nil {
			return res, err
		}
	}
	return res, nil
}

// closedAndWrk measures (a), (b), (c) and the peer closed loop, and with
// wrk.
func (e *env) closedAndWrk(ctx context.Context, res *Result) error {
	o := e.o
	fmt.Fprintf(o.Out, "closed loop: %d connections, %s each, mix %s, %d scenes, load generator in this process\n\n",
		o.Connections, o.Duration, "text=60,scan=20,subscribe=15,other=5", o.Scenes)
	configs := []config{
		{"(a) floor: no bus", e.floor},
		{"(b) standalone", e.standalone},
		{fmt.Sprintf("(c) distributed, %d workers", o.Workers), func() (*setup, error) { return e.distributed(o.Workers) }},
	}
	if o.Peer {
		if err := buildPeer(ctx, e.bin); err != nil {
			return err
		}
		configs = append(configs, config{"(p) peer: silenceper/wechat", e.peer})
	}
	var err error
	if res.Closed, err = e.closedLoop(ctx, configs); err != nil {
		return err
	}
	if o.Wrk {
		return e.wrkAll(ctx, configs)
	}
	return nil
}

// config is a configuration under test, started afresh for each
// measurement.
type config struct {
	name  string
	start func() (*setup, error)
}

// closedLoop measures each configuration closed loop, and prints them with
// the ratios to the floor and, with the peer, the goals.
func (e *env) closedLoop(ctx context.Context, configs []config) ([]Measurement, error) {
	ms, err := e.measureEach(ctx, configs, []float64{0}, e.o.Duration)
	if err != nil {
		return ms, err
	}
	a, b, c := ms[0].Report, ms[1].Report, ms[2].Report
	fmt.Fprintf(e.o.Out, "\nratios: throughput b/a %.2f  c/a %.2f;  p99 b/a %.2f  c/a %.2f\n",
		b.Throughput()/a.Throughput(), c.Throughput()/a.Throughput(),
		ratio(b.Percentile(99), a.Percentile(99)), ratio(c.Percentile(99), a.Percentile(99)))
	if e.o.Peer {
		printGoals(e.o.Out, "load generator", goalsOf(ms[1], ms[2], ms[3]))
	}
	return ms, nil
}

// wrkAll measures each configuration with wrk, when it is installed.
func (e *env) wrkAll(ctx context.Context, configs []config) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		fmt.Fprintf(e.o.Out, "\nwrk: not installed, skipped (apt-get install wrk)\n")
		return nil
	}
	fmt.Fprintf(e.o.Out, "\nwrk -t2 -c%d -d%s, the same mix (server CPU per request: all its processes):\n", e.o.Connections, e.o.Duration)
	var wrs []wrkResult
	for _, cfg := range configs {
		s, err := cfg.start()
		if err != nil {
			return fmt.Errorf("%s: %w", cfg.name, err)
		}
		r, err := e.wrk(ctx, cfg.name, s, e.o.Duration)
		s.stop()
		if err != nil {
			return err
		}
		wrs = append(wrs, r)
	}
	printWrk(e.o.Out, wrs)
	if e.o.Peer {
		printGoals(e.o.Out, "wrk", goalsOfWrk(wrs[1], wrs[2], wrs[3]))
	}
	return nil
}

// openLoop measures (a), (b) and (c) at each of the rates.
func (e *env) openLoop(ctx context.Context) ([]Measurement, error) {
	if len(e.o.Rates) == 0 {
		return nil, nil
	}
	fmt.Fprintf(e.o.Out, "\nopen loop (latency from each request's due time), %s per rate:\n", e.o.RateTime)
	return e.measureEach(ctx, []config{
		{"(a)", e.floor},
		{"(b)", e.standalone},
		{"(c)", func() (*setup, error) { return e.distributed(e.o.Workers) }},
	}, e.o.Rates, e.o.RateTime)
}

// scaling measures (c) closed loop with each worker count.
func (e *env) scaling(ctx context.Context) ([]Measurement, error) {
	if len(e.o.Scaling) == 0 {
		return nil, nil
	}
	fmt.Fprintf(e.o.Out, "\nscaling of (c) with worker processes:\n")
	var configs []config
	for _, n := range e.o.Scaling {
		configs = append(configs, config{fmt.Sprintf("(c) %d workers", n), func() (*setup, error) { return e.distributed(n) }})
	}
	return e.measureEach(ctx, configs, []float64{0}, e.o.Duration)
}

// measureEach starts each configuration afresh, measures it for d at each
// rate (0: closed loop; a measurement at a rate is named so), and prints
// the measurements.
func (e *env) measureEach(ctx context.Context, configs []config, rates []float64, d time.Duration) ([]Measurement, error) {
	var ms []Measurement
	for _, cfg := range configs {
		s, err := cfg.start()
		if err != nil {
			return ms, fmt.Errorf("%s: %w", cfg.name, err)
		}
		if e.o.Rules > 0 && s.admin != "" { // the floor and the peer have no rules
			if err := storeRules(ctx, s, e.o.Rules); err != nil {
				s.stop()
				return ms, fmt.Errorf("%s: %d rules: %w", cfg.name, e.o.Rules, err)
			}
		}
		for _, rate := range rates {
			name := cfg.name
			if rate > 0 {
				name = fmt.Sprintf("%s at %.0f/s", cfg.name, rate)
			}
			m, err := e.measure(ctx, name, s, rate, d)
			if err != nil {
				s.stop()
				return ms, err
			}
			ms = append(ms, m)
		}
		s.stop()
	}
	printTable(e.o.Out, ms)
	return ms, nil
}

// setup is a running configuration: its URL and its processes.
type setup struct {
	url     string
	admin   string // the ingress's admin listener
	natsURL string // distributed only
	procs   []*proc
	// targets are where the mix goes; nil: url, the default account.
	targets []sim.Target
}

// worker starts a workers process and waits until it serves.
func (e *env) worker(name, natsURL string, envs ...string) (*proc, error) {
	w, err := startProc(name, filepath.Join(e.bin, "workers"), append(append([]string{"NATS_URL=" + natsURL, "ADMIN_ADDR=127.0.0.1:0"}, envs...), e.o.Env...))
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

func (e *env) standalone() (*setup, error) { return e.standaloneWith() }

func (e *env) standaloneWith(envs ...string) (*setup, error) {
	p, url, err := e.ingress([]string{"-standalone", "-nats-listen", ""}, envs...)
	if err != nil {
		return nil, err
	}
	admin, err := p.listen("admin")
	if err != nil {
		p.stop()
		return nil, err
	}
	return &setup{url: url, admin: admin, procs: []*proc{p}}, nil
}

var natsListenRE = regexp.MustCompile(`Listening for client connections on (\S+)`)

func (e *env) natsServer() (*proc, string, error) { return e.natsServerAt(e.tempDir("nats")) }

func (e *env) natsServerAt(storeDir string) (*proc, string, error) {
	p, err := startProc("nats-server", filepath.Join(e.bin, "nats-server"), nil,
		"-a", "127.0.0.1", "-p", "-1", "-js", "-sd", storeDir)
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

func (e *env) distributed(workers int) (*setup, error) { return e.distributedWith(workers) }

// distributedWith is distributed with envs added to every wxgate
// process's environment.
func (e *env) distributedWith(workers int, envs ...string) (*setup, error) {
	s := &setup{}
	ns, url, err := e.natsServer()
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, ns)
	s.natsURL = url
	for i := 0; i < workers; i++ {
		w, err := e.worker(fmt.Sprintf("worker%d", i+1), url, envs...)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.procs = append(s.procs, w)
	}
	in, u, err := e.ingress(nil, append([]string{"NATS_URL=" + url}, envs...)...)
	if err != nil {
		s.stop()
		return nil, err
	}
	s.procs = append(s.procs, in)
	if _, err := in.waitLine(regexp.MustCompile(`"msg":"nats connected"`)); err != nil {
		s.stop()
		return nil, err
	}
	if s.admin, err = in.listen("admin"); err != nil {
		s.stop()
		return nil, err
	}
	s.url = u
	return s, nil
}

// measure warms s up, then loads it closed loop (rate 0) or at rate.
func (e *env) measure(ctx context.Context, name string, s *setup, rate float64, d time.Duration) (Measurement, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: e.o.Connections, DisableCompression: true}}
	// The warm-up sends messages of its own: request i of a run is the
	// same message each time, and the measurement's would otherwise be
	// retries of the warm-up's (a different, rarer path).
	targets := s.targets
	if targets == nil {
		targets = []sim.Target{{Sender: wechat.Sender{Token: token}, URL: s.url}}
	}
	if e.o.Warmup > 0 {
		warm := sim.DefaultMix.RequestsTo(targets, client, e.o.Scenes)
		if _, err := loadgen.Run(ctx, loadgen.Options{Concurrency: e.o.Connections, Duration: e.o.Warmup, Do: warm}); err != nil {
			return Measurement{}, err
		}
	}
	do := sim.DefaultMix.RequestsTo(targets, client, e.o.Scenes)
	before := make([]usage, len(s.procs))
	for i, p := range s.procs {
		before[i] = p.usage()
	}
	selfBefore := selfUsage()
	r, err := loadgen.Run(ctx, loadgen.Options{Concurrency: e.o.Connections, Rate: rate, Duration: d, Do: do})
	if err != nil {
		return Measurement{}, err
	}
	m := Measurement{Name: name, Report: r}
	var spent time.Duration
	for i, p := range s.procs {
		u := p.usage()
		spent += u.cpu - before[i].cpu
		m.Procs = append(m.Procs, Proc{Name: p.name, RSSKB: u.rssKB, CPU: (u.cpu - before[i].cpu).Seconds() / r.Elapsed.Seconds()})
	}
	if answered := r.Sent - r.Err; answered > 0 {
		m.CPUPer = spent / time.Duration(answered)
	}
	self := selfUsage()
	m.Procs = append(m.Procs, Proc{Name: "loadgen", RSSKB: self.rssKB, CPU: (self.cpu - selfBefore.cpu).Seconds() / r.Elapsed.Seconds()})
	return m, nil
}

func printTable(w io.Writer, ms []Measurement) {
	fmt.Fprintf(w, "%-32s %10s %9s %9s %9s %7s %9s %9s  %s\n", "configuration", "req/s", "p50", "p99", "p99.9", "errors", "fallbacks", "CPU/req", "processes: RSS MiB, CPU (1.0 = one core)")
	for _, m := range ms {
		var ps []string
		for _, p := range m.Procs {
			ps = append(ps, fmt.Sprintf("%s %.1f MiB %.2f", p.Name, float64(p.RSSKB)/1024, p.CPU))
		}
		r := m.Report
		fmt.Fprintf(w, "%-32s %10.0f %9s %9s %9s %7d %9d %7.0fµs  %s\n", m.Name, r.Throughput(),
			dur(r.Percentile(50)), dur(r.Percentile(99)), dur(r.Percentile(99.9)),
			r.Err, r.Fallbacks, float64(m.CPUPer)/float64(time.Microsecond), strings.Join(ps, "; "))
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
