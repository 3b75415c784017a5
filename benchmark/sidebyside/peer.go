package sidebyside

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"time"
)

// buildPeer compiles the peer (benchmark/peer, its own module) into dir.
func buildPeer(ctx context.Context, dir string) error {
	_, here, _, ok := runtime.Caller(0)
	if !ok {
		return fmt.Errorf("peer: cannot find the benchmark's source")
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "peer"), ".")
	cmd.Dir = filepath.Join(filepath.Dir(here), "..", "peer")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build the peer: %w", err)
	}
	return nil
}

var peerListenRE = regexp.MustCompile(`peer listening on (\S+)`)

func (e *env) peer() (*setup, error) {
	p, err := startProc("peer", filepath.Join(e.bin, "peer"), nil, "-addr", "127.0.0.1:0", "-token", token)
	if err != nil {
		return nil, err
	}
	m, err := p.waitLine(peerListenRE)
	if err != nil {
		p.stop()
		return nil, err
	}
	return &setup{url: "http://" + m[1] + "/wechat", procs: []*proc{p}}, nil
}

// goal is one of the performance goals set against the peer (standalone at
// least its throughput and at most its p99; distributed at least 0.7 of its
// throughput; bounded server CPU per request), checked.
type goal struct {
	what      string
	got, want float64
	atMost    bool // met when got <= want, else when got >= want
	unit      string
}

func (g goal) met() bool {
	if g.atMost {
		return g.got <= g.want
	}
	return g.got >= g.want
}

// goalsOf checks the goals against the load generator's figures for (b)
// standalone, (c) distributed and (p) the peer.
func goalsOf(b, c, p Measurement) []goal {
	pr := p.Report.Throughput()
	return []goal{
		{"standalone throughput / peer's", b.Report.Throughput() / pr, 1.0, false, "x"},
		{"standalone p99 / peer's", ratio(b.Report.Percentile(99), p.Report.Percentile(99)), 1.0, true, "x"},
		{"distributed throughput / peer's", c.Report.Throughput() / pr, 0.7, false, "x"},
		{"standalone server CPU per request", micros(b.CPUPer), 70, true, "µs"},
		{"distributed server CPU per request", micros(c.CPUPer), 110, true, "µs"},
	}
}

func goalsOfWrk(b, c, p wrkResult) []goal {
	return []goal{
		{"standalone throughput / peer's", b.rate / p.rate, 1.0, false, "x"},
		{"standalone p99 / peer's", ratio(b.p99, p.p99), 1.0, true, "x"},
		{"distributed throughput / peer's", c.rate / p.rate, 0.7, false, "x"},
		{"standalone server CPU per request", micros(b.cpuPer), 70, true, "µs"},
		{"distributed server CPU per request", micros(c.cpuPer), 110, true, "µs"},
	}
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func printGoals(w io.Writer, by string, gs []goal) {
	fmt.Fprintf(w, "\ngoals (%s):\n", by)
	for _, g := range gs {
		verdict, op := "met", "≥"
		if g.atMost {
			op = "≤"
		}
		if !g.met() {
			verdict = "NOT MET"
		}
		fmt.Fprintf(w, "  %-36s %8.2f%s (goal %s %g%s)  %s\n", g.what, g.got, g.unit, op, g.want, g.unit, verdict)
	}
}
