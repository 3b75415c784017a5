package sidebyside

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// benchRules are n rules none of the mix's messages match, ahead of the
// default rules, so that every reply is still the seed's: scenes, menu
// keys, exact and contains keywords, and every tenth a regex (half of
// them with no literal to look for first, tried on every text).
func benchRules(n int) []rules.Rule {
	out := make([]rules.Rule, 0, n)
	text := rules.Reply{Type: rules.ReplyText, Content: "rule"}
	for i := range n {
		s := strconv.Itoa(i)
		w := rules.When{}
		switch {
		case i%20 == 0:
			w.Keyword, w.Match = ptr(`(?i)^(help|帮助)\s*`+s+`$`), rules.MatchRegex
		case i%10 == 0:
			w.Keyword, w.Match = ptr(`^订单\d{6}-`+s+`$`), rules.MatchRegex
		case i%10 < 4:
			w.Scene = ptr("bench_store_" + s)
		case i%10 < 6:
			w.Keyword = ptr("关键词" + s)
		case i%10 < 8:
			w.Keyword, w.Match = ptr("包含"+s), rules.MatchContains
		default:
			w.Key = ptr("BENCH_MENU_" + s)
		}
		out = append(out, rules.Rule{Name: "bench " + s, When: w, Reply: text})
	}
	// The probe: answered only once a worker has the rules.
	out[len(out)-1] = rules.Rule{Name: "probe", When: rules.When{Keyword: ptr("bench-probe")}, Reply: rules.Reply{Type: rules.ReplyText, Content: "probe"}}
	return out
}

func ptr(s string) *string { return &s }

// storeRules puts n rules ahead of the default account's defaults through
// s's admin listener, and waits until its workers answer by them.
func storeRules(ctx context.Context, s *setup, n int) error {
	resp, err := http.Get("http://" + s.admin + "/api/rules")
	if err != nil {
		return err
	}
	var cur struct {
		Revision uint64       `json:"revision"`
		Rules    []rules.Rule `json:"rules"`
	}
	err = json.NewDecoder(resp.Body).Decode(&cur)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("GET /api/rules: %w", err)
	}
	b, _ := json.Marshal(map[string]any{"rules": append(benchRules(n), cur.Rules...)})
	req, _ := http.NewRequestWithContext(ctx, "PUT", "http://"+s.admin+"/api/rules", strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("If-Match", strconv.FormatUint(cur.Revision, 10))
	if resp, err = http.DefaultClient.Do(req); err != nil {
		return err
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("PUT /api/rules: %d %s", resp.StatusCode, msg)
	}
	// Every worker answers by them: twenty probes in a row, spread over
	// the queue group, all answered by the probe rule.
	sender, streak := wechat.Sender{Token: token}, 0
	return wait.ForErr(time.Minute, 10*time.Millisecond, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		m := &wechat.Message{ToUserName: "gh", FromUserName: "o_probe", CreateTime: time.Now().Unix(), MsgType: "text", Content: "bench-probe",
			MsgID: strconv.FormatInt(time.Now().UnixNano(), 10)}
		_, body, err := sender.Post(http.DefaultClient, s.url, m.AppendXML(nil), time.Now(), "probe"+m.MsgID)
		if err == nil && !strings.Contains(string(body), "probe") {
			err = fmt.Errorf("a worker answers without the rules: %q", body)
		}
		if err != nil {
			streak = 0
			return err
		}
		if streak++; streak < 20 {
			return fmt.Errorf("%d probes answered by the rules", streak)
		}
		return nil
	})
}
