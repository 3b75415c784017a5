package sidebyside

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/wxsim/sim"
)

// accountsEnv lets a process keep accounts: ACCOUNTS_SECRET_KEY, and room
// for max of them.
func accountsEnv(max int) []string {
	return []string{"ACCOUNTS_SECRET_KEY=" + base64.StdEncoding.EncodeToString([]byte("wxgate-benchmark-accounts-key-32")),
		fmt.Sprintf("MAX_ACCOUNTS=%d", max+1)}
}

// accountToken is every benchmark account's token (WeChat's rule: letters
// and digits).
const accountToken = "BenchAccount1"

// makeAccounts creates n accounts (sim.AccountID) through admin's
// /api/accounts, plain mode, and waits until the ingress at url serves the
// last of them.
func makeAccounts(ctx context.Context, admin, url string, n int) error {
	for i := range n {
		body := fmt.Sprintf(`{"id":%q,"token":%q,"mode":"plain"}`, sim.AccountID(i), accountToken)
		resp, err := http.Post("http://"+admin+"/api/accounts", "application/json", strings.NewReader(body))
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("POST /api/accounts %s: %d %s", sim.AccountID(i), resp.StatusCode, b)
		}
	}
	s := wechat.Sender{Token: accountToken}
	last := url + "/" + sim.AccountID(n-1)
	return wait.ForErr(time.Minute, 10*time.Millisecond, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		code, _, err := s.Post(http.DefaultClient, last, []byte("<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>VIEW</Event></xml>"), time.Now(), "ready")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("%s answered %d", last, code)
		}
		return err
	})
}

// spread is the targets of the mix over n accounts.
func spread(url string, n int) []sim.Target {
	ts := make([]sim.Target, n)
	for i := range ts {
		ts[i] = sim.Target{Sender: wechat.Sender{Token: accountToken}, URL: url + "/" + sim.AccountID(i)}
	}
	return ts
}

// accounts measures the mix spread over n accounts against the same
// configuration with the default account alone, (b) and (c), closed loop,
// and prints the throughput ratio (the goal: at least 0.95).
func (e *env) accounts(ctx context.Context, n int) ([]Measurement, error) {
	fmt.Fprintf(e.o.Out, "\naccounts: the mix over %d accounts (made through /api/accounts) against the default account alone:\n", n)
	var configs []config
	for _, c := range []struct {
		name  string
		start func(...string) (*setup, error)
	}{{"(b)", e.standaloneWith}, {"(c)", func(env ...string) (*setup, error) { return e.distributedWith(e.o.Workers, env...) }}} {
		configs = append(configs,
			config{c.name + " 1 account", func() (*setup, error) { return c.start(accountsEnv(n)...) }},
			config{fmt.Sprintf("%s %d accounts", c.name, n), func() (*setup, error) {
				s, err := c.start(accountsEnv(n)...)
				if err != nil {
					return nil, err
				}
				if err := makeAccounts(ctx, s.admin, s.url, n); err != nil {
					s.stop()
					return nil, err
				}
				s.targets = spread(s.url, n)
				return s, nil
			}})
	}
	ms, err := e.measureEach(ctx, configs, []float64{0}, e.o.Duration)
	if err != nil {
		return ms, err
	}
	for i := 0; i+1 < len(ms); i += 2 {
		fmt.Fprintf(e.o.Out, "ratio %s: throughput %.3f, p99 %.2f\n", ms[i+1].Name,
			ms[i+1].Report.Throughput()/ms[i].Report.Throughput(), ratio(ms[i+1].Report.Percentile(99), ms[i].Report.Percentile(99)))
	}
	return ms, nil
}

// accountsMemory is what n configured accounts cost a standalone process:
// its RSS with the default alone, then with n accounts made (idle), then
// once each has had a callback; and its /metrics then.
func (e *env) accountsMemory(ctx context.Context, n int) error {
	s, err := e.standaloneWith(accountsEnv(n)...)
	if err != nil {
		return err
	}
	defer s.stop()
	p := s.procs[0]
	settle := func() usage { // the collector's and the page cache's noise
		select {
		case <-time.After(3 * time.Second):
		case <-ctx.Done():
		}
		return p.usage()
	}
	none := settle()
	if err := makeAccounts(ctx, s.admin, s.url, n); err != nil {
		return err
	}
	idle := settle()
	for _, t := range spread(s.url, n) {
		code, _, err := t.Sender.Post(http.DefaultClient, t.URL, []byte("<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>"), time.Now(), "m")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("%s: %d %v", t.URL, code, err)
		}
	}
	used := settle()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		return err
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	series := bytes.Count(metrics, []byte("\n")) - bytes.Count(metrics, []byte("\n#"))
	per := func(u usage) float64 { return float64(u.rssKB-none.rssKB) * 1024 / float64(n) }
	fmt.Fprintf(e.o.Out, "\naccounts memory, standalone: RSS %.1f MiB with the default alone; %.1f MiB with %d accounts (%.1f KiB each), %.1f MiB once each had a callback (%.1f KiB each); /metrics %d series, %.1f MiB\n",
		float64(none.rssKB)/1024, float64(idle.rssKB)/1024, n, per(idle)/1024, float64(used.rssKB)/1024, per(used)/1024, series, float64(len(metrics))/(1<<20))
	return nil
}
