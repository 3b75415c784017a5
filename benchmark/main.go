// Command benchmark runs wxgate's side-by-side load benchmark: the floor (no
// bus), standalone and distributed, on loopback, in one run.
//
//	go run ./benchmark                  # the full run the README reports
//	go run ./benchmark -duration 2s -rates '' -scaling '' -records 2000   # a quick look
//	go run ./benchmark -duration 0 -rates '' -scaling '' -record-scenes '' -peer=false -growth 100000   # the growth mode alone
//	go run ./benchmark -rules 1000 -rates '' -scaling '' -record-scenes '' -peer=false -wrk=false   # the closed loop with 1 000 rules
//	go run ./benchmark -accounts 100 -rates '' -scaling '' -record-scenes '' -peer=false -wrk=false   # the closed loop, then accounts
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wxgate/wxgate/benchmark/sidebyside"
)

func main() {
	o := sidebyside.Options{Out: os.Stdout}
	var rates, scaling, sets, env string
	flag.IntVar(&o.Connections, "connections", 64, "closed-loop connections")
	flag.DurationVar(&o.Duration, "duration", 15*time.Second, "each closed-loop measurement")
	flag.DurationVar(&o.Warmup, "warmup", 2*time.Second, "load before each measurement")
	flag.StringVar(&rates, "rates", "1000,3000", "open-loop rates, requests/s (empty: skip)")
	flag.DurationVar(&o.RateTime, "rate-duration", 10*time.Second, "each open-loop measurement")
	flag.IntVar(&o.Workers, "workers", 2, "worker processes in (c)")
	flag.StringVar(&scaling, "scaling", "1,2,4", "worker counts for the scaling curve (empty: skip)")
	flag.IntVar(&o.Scenes, "scenes", 100, "QR scenes in the traffic")
	flag.IntVar(&o.Records, "records", 200000, "analytics: records pre-filled in the stream")
	flag.StringVar(&sets, "record-scenes", "100,10000", "analytics: scene counts to drain with (empty: skip)")
	flag.DurationVar(&o.Soak, "soak", 0, "run (c) this long at -soak-rate and compare memory at start and end (0: skip)")
	flag.Float64Var(&o.SoakRate, "soak-rate", 1000, "soak rate, requests/s")
	flag.DurationVar(&o.SoakKill, "soak-kill", 0, "during the soak, kill a worker -9 this often and start a replacement (0: never)")
	flag.StringVar(&env, "env", "", "KEY=value,... added to every wxgate process's environment, to compare settings")
	flag.BoolVar(&o.Peer, "peer", true, "measure the peer too: a silenceper/wechat server (benchmark/peer), and check the goals against it")
	flag.BoolVar(&o.Wrk, "wrk", true, "measure every configuration with wrk as well (when installed)")
	flag.IntVar(&o.Accounts, "accounts", 0, "measure the mix spread over this many accounts (made through /api/accounts) against one, and the memory of so many configured accounts (0: skip)")
	flag.IntVar(&o.Rules, "rules", 0, "store this many rules (a tenth of them regexes, none matching the mix) ahead of the default account's defaults in (b) and (c) before measuring them (0: none)")
	flag.IntVar(&o.Growth, "growth", 0, "growth mode: this many people a day, stored with past Wx-Received, for -growth-days over -growth-scenes; memory, disk per person-day and the API's latency (0: skip)")
	flag.IntVar(&o.GrowthDays, "growth-days", 30, "growth: days of history")
	flag.IntVar(&o.GrowthScenes, "growth-scenes", 1000, "growth: scenes")
	flag.StringVar(&o.GrowthModel, "growth-model", "", "growth: same (the same people every day), new (new people each day), or both (empty)")
	flag.DurationVar(&o.GrowthSettle, "growth-settle", 40*time.Second, "growth: how long to wait after the last day before the settled figures (a snapshot is written every 30s)")
	flag.Parse()
	o.Env = strings.FieldsFunc(env, func(r rune) bool { return r == ',' })
	var err error
	if o.Rates, err = list[float64](rates); err == nil {
		if o.Scaling, err = list[int](scaling); err == nil {
			o.RecordSets, err = list[int](sets)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchmark:", err)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if _, err := sidebyside.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "benchmark:", err)
		os.Exit(1)
	}
}

// list reads comma-separated positive numbers (whole ones for an int).
func list[T int | float64](s string) ([]T, error) {
	var out []T
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' }) {
		n, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || n <= 0 || float64(T(n)) != n {
			return nil, fmt.Errorf("%q: want positive numbers (whole ones where counted)", s)
		}
		out = append(out, T(n))
	}
	return out, nil
}
