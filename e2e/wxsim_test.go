package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

const (
	simAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	simAppID  = "wx_e2e_sim"
)

// wxsim runs the simulator binary and returns what it printed and its exit code.
func wxsim(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "wxsim"), args...)
	cmd.Env = []string{} // flags only: no WECHAT_* from the environment
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("wxsim %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// wxsim against a real wxgate (standalone process with safe mode on, which
// also accepts plain-mode requests), in both modes.
func TestWxsim(t *testing.T) {
	p := start(t, "ingress", []string{"HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "DATA_DIR=" + t.TempDir(),
		// compat: this test sends both plain and encrypted callbacks.
		"WECHAT_TOKEN=sim-token", "WECHAT_ENCODING_AES_KEY=" + simAESKey, "WECHAT_APPID=" + simAppID, "WECHAT_MODE=compat"}, "-standalone", "-nats-listen", "")
	url := "http://" + p.listenAddr(t, "http") + "/wechat"
	admin := p.listenAddr(t, "admin")

	modes := map[string][]string{
		"plain": {"-url", url, "-token", "sim-token"},
		"safe":  {"-url", url, "-token", "sim-token", "-aeskey", simAESKey, "-appid", simAppID},
	}
	for mode, common := range modes {
		t.Run(mode, func(t *testing.T) {
			cases := []struct {
				args []string
				want []string
			}{
				{[]string{"verify"}, []string{"verify: ok"}},
				{[]string{"text", "-content", "你好 ]]> wxsim"}, []string{"reply: text: 你好 ]]> wxsim"}},
				{[]string{"voice", "-recognition", "腾讯"}, []string{"reply: text: 腾讯"}},
				{[]string{"voice"}, []string{"reply: text: 未识别"}},
				{[]string{"subscribe", "-scene", "sim_" + mode}, []string{"reply: text: 感谢您的关注！", "场景值:sim_" + mode}},
				{[]string{"subscribe"}, []string{"reply: text: 感谢您的关注！"}},
				{[]string{"unsubscribe"}, []string{"reply: success"}},
				// Three deliveries of one scan, as WeChat retries: each is answered, one is counted.
				{[]string{"scan", "-scene", "retried_" + mode, "-openid", "o_retry", "-retries", "2"},
					[]string{"attempt 3/3", "reply: text: 您扫描的场景值为：retried_" + mode}},
			}
			for _, c := range cases {
				out, code := wxsim(t, "", append(append([]string{c.args[0]}, common...), c.args[1:]...)...)
				if code != 0 {
					t.Errorf("wxsim %v exit %d:\n%s", c.args, code, out)
				}
				for _, w := range c.want {
					if !strings.Contains(out, w) {
						t.Errorf("wxsim %v: output lacks %q:\n%s", c.args, w, out)
					}
				}
				if strings.Count(out, "status: 200") < 1 {
					t.Errorf("wxsim %v: no status line:\n%s", c.args, out)
				}
			}
			raw := `<xml><ToUserName>gh</ToUserName><FromUserName>o_raw</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>raw stdin</Content><MsgId>99</MsgId></xml>`
			if out, code := wxsim(t, raw, append([]string{"raw"}, common...)...); code != 0 || !strings.Contains(out, "reply: text: raw stdin") {
				t.Errorf("wxsim raw = %d:\n%s", code, out)
			}
			out, code := wxsim(t, "", append([]string{"load"}, append(common, "-requests", "60", "-concurrency", "4", "-scenes", "3")...)...)
			if code != 0 || !strings.Contains(out, "requests: 60") || !strings.Contains(out, "errors: 0") || !strings.Contains(out, "fallbacks: 0") {
				t.Errorf("wxsim load = %d:\n%s", code, out)
			}
			if !regexp.MustCompile(`latency: p50 \S+\s+p90 \S+\s+p99 \S+\s+p99\.9 \S+`).MatchString(out) {
				t.Errorf("wxsim load prints no percentiles:\n%s", out)
			}
			wait.For(t, wait.Long, wait.Every, func() error {
				var tot struct {
					Scans int `json:"scans"`
				}
				if err := nettest.FetchJSON("http://"+admin+"/api/scenes/retried_"+mode, &tot); err != nil {
					return err
				}
				if tot.Scans > 1 {
					t.Fatalf("retried scan counted %d times", tot.Scans)
				}
				if tot.Scans != 1 {
					return fmt.Errorf("retried scan counted %d times, want once", tot.Scans)
				}
				return nil
			})
		})
	}

	// Refusals are reported and exit non-zero.
	out, code := wxsim(t, "", "text", "-url", url, "-token", "wrong-token")
	if code == 0 || !strings.Contains(out, "status: 403") {
		t.Errorf("wrong token: exit %d:\n%s", code, out)
	}
	if out, code := wxsim(t, "", "scan", "-url", url); code == 0 || !strings.Contains(out, "-scene") {
		t.Errorf("scan without -scene: exit %d:\n%s", code, out)
	}
}
