package wechatapitest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, base, path string) map[string]any {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Two apps keep apart their tokens, codes, windows and counts: one app's
// token is refused by the other's secret, its codes and sends are its own,
// and /wxsim/calls says per AppID.
func TestSeveralApps(t *testing.T) {
	s, base, _ := newFake(t, Options{Apps: map[string]string{"wx2": "secret2"}})
	if ids := s.AppIDs(); !slices.Equal(ids, []string{"wx1", "wx2"}) {
		t.Fatalf("apps %v", ids)
	}
	tok1, _ := getToken(t, base)
	m := call(t, base, "/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wx2", "secret": "secret2"})
	tok2, _ := m["access_token"].(string)
	if tok2 == "" || tok2 == tok1 {
		t.Fatalf("wx2's token %v", m)
	}
	if m := call(t, base, "/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wx2", "secret": "secret1"}); errcode(m) != 40125 {
		t.Errorf("wx2 with wx1's secret: %v", m)
	}
	qr(t, base, tok1, tempCode)
	qr(t, base, tok2, tempCode)
	qr(t, base, tok2, tempCode)
	_ = s.AppInteraction("wx2", "o1", KindMessage, time.Time{})
	if got := sendText(t, base, tok1, "o1"); got != 45015 {
		t.Errorf("wx1 to a person who wrote to wx2: %d", got)
	}
	if got := sendText(t, base, tok2, "o1"); got != 0 {
		t.Errorf("wx2: %d", got)
	}
	// A fault for one app leaves the other alone.
	_ = s.Inject(Fault{AppID: "wx2", API: QRCodeCreate, Errcode: 45009, Count: 5})
	if m := qr(t, base, tok1, tempCode); errcode(m) != 0 {
		t.Errorf("wx1 under wx2's fault: %v", m)
	}
	if m := qr(t, base, tok2, tempCode); errcode(m) != 45009 {
		t.Errorf("wx2: %v", m)
	}
	var c Calls
	resp, err := http.Get(base + "/wxsim/calls")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if c.Calls[QRCodeCreate] != 5 || c.Apps["wx1"].Calls[QRCodeCreate] != 2 || c.Apps["wx2"].Calls[QRCodeCreate] != 3 ||
		c.Apps["wx2"].Errcodes[QRCodeCreate]["45009"] != 1 || c.Apps["wx1"].Errcodes[QRCodeCreate] != nil ||
		c.Apps["wx1"].Tokens != 1 || c.Apps["wx2"].Interactions[KindMessage] != 1 || c.Apps["wx1"].Interactions[KindMessage] != 0 {
		t.Errorf("calls = %+v", c)
	}
	if len(c.QRCodes) != 4 || c.QRCodes[0].AppID != "wx1" || c.QRCodes[2].AppID != "wx2" || c.QRCodes[3].AppID != "wx1" || len(c.Messages) != 1 || c.Messages[0].AppID != "wx2" {
		t.Errorf("codes %+v messages %+v", c.QRCodes, c.Messages)
	}
	if err := s.Inject(Fault{AppID: "wx9", Errcode: 1}); err == nil {
		t.Error("a fault for an unknown app was taken")
	}
}

func TestParsePairs(t *testing.T) {
	if m, err := ParsePairs("a:s1, b:s:2", ":"); err != nil || len(m) != 2 || m["b"] != "s:2" {
		t.Errorf("= %v %v", m, err)
	}
	for _, bad := range []string{"a", "a:", ":S3CR3T", "a:S3CR3T,a:S3CR3T", "a:S3CR3T,,b:S3CR3T"} {
		if _, err := ParsePairs(bad, ":"); err == nil {
			t.Errorf("%q accepted", bad)
		} else if strings.Contains(err.Error(), "S3CR3T") {
			t.Errorf("%q: the error echoes a secret: %v", bad, err)
		}
	}
}

// The datacube answers the figures set, day by day, within WeChat's spans
// (7 days, 30 days), nothing for today, yesterday only after 08:00 Beijing
// time, and 48001 with the permission off.
func TestDatacube(t *testing.T) {
	s, base, clk := newFake(t, Options{})
	tok, _ := getToken(t, base)
	// The fake's clock: 2027-01-15 08:00 UTC = 16:00 in Beijing.
	clk.Add(time.Date(2027, 1, 15, 8, 0, 0, 0, time.UTC).Sub(clk.Now()))
	if err := s.SetDatacube(DatacubeFigures{Users: []UserRow{{RefDate: "2027-01-10", UserSource: SourceQRCode, NewUser: 7, CancelUser: 2}, {RefDate: "2027-01-10", UserSource: 0, NewUser: 1}},
		Callbacks: []InterfaceRow{{RefDate: "2027-01-14", CallbackCount: 100, FailCount: 3, TotalTimeCost: 5000, MaxTimeCost: 900}}}); err != nil {
		t.Fatal(err)
	}
	users := func(b, e string) map[string]any {
		return call(t, base, "/datacube/getusersummary?access_token="+tok, map[string]string{"begin_date": b, "end_date": e})
	}
	m := users("2027-01-08", "2027-01-14")
	list, _ := m["list"].([]any)
	if len(list) != 8 { // 6 zero days, and the 10th's two sources
		t.Fatalf("7 days: %v", m)
	}
	var got []string
	for _, r := range list {
		r := r.(map[string]any)
		got = append(got, fmt.Sprint(r["ref_date"], "/", r["user_source"], "/", r["new_user"], "/", r["cancel_user"]))
	}
	if !slices.Contains(got, "2027-01-10/30/7/2") || !slices.Contains(got, "2027-01-10/0/1/0") || !slices.Contains(got, "2027-01-14/0/0/0") {
		t.Errorf("rows %v", got)
	}
	for _, tt := range []struct{ b, e string }{
		{"2027-01-07", "2027-01-14"}, // 8 days
		{"2027-01-14", "2027-01-13"}, // out of order
		{"2027-01-14", "2027-01-15"}, // today
	} {
		if m := users(tt.b, tt.e); errcode(m) != 61501 {
			t.Errorf("%s..%s: %v, want 61501", tt.b, tt.e, m)
		}
	}
	if m := users("2027/01/08", "2027-01-14"); errcode(m) != 61500 {
		t.Errorf("bad date: %v", m)
	}
	cb := call(t, base, "/datacube/getinterfacesummary?access_token="+tok, map[string]string{"begin_date": "2026-12-16", "end_date": "2027-01-14"})
	if l, _ := cb["list"].([]any); len(l) != 30 || l[29].(map[string]any)["callback_count"] != 100.0 || l[29].(map[string]any)["max_time_cost"] != 900.0 {
		t.Errorf("30 days of callbacks: %v", cb)
	}
	// Before 08:00 in Beijing, yesterday is not published yet.
	clk.Add(time.Date(2027, 1, 14, 23, 0, 0, 0, time.UTC).Sub(clk.Now())) // 07:00 on the 15th in Beijing
	if l, _ := users("2027-01-13", "2027-01-14")["list"].([]any); len(l) != 1 || l[0].(map[string]any)["ref_date"] != "2027-01-13" {
		t.Errorf("before 08:00: %v", l)
	}
	off := true
	_ = s.SetDatacube(DatacubeFigures{Unauthorized: &off})
	if m := users("2027-01-10", "2027-01-10"); errcode(m) != 48001 {
		t.Errorf("no permission: %v", m)
	}
}

// Tags as WeChat limits them: names of 30 bytes, no duplicates, 100 per
// account, at most 50 OpenIDs a call, a known tag, 20 tags per person.
func TestTags(t *testing.T) {
	s, base, _ := newFake(t, Options{})
	tok, _ := getToken(t, base)
	create := func(name string) map[string]any {
		return call(t, base, "/cgi-bin/tags/create?access_token="+tok, map[string]any{"tag": map[string]string{"name": name}})
	}
	tagging := func(tag int, openids ...string) int {
		return errcode(call(t, base, "/cgi-bin/tags/members/batchtagging?access_token="+tok, map[string]any{"openid_list": openids, "tagid": tag}))
	}
	m := create("门店")
	tag := int(m["tag"].(map[string]any)["id"].(float64))
	if tag != FirstTagID || m["tag"].(map[string]any)["name"] != "门店" {
		t.Fatalf("create: %v", m)
	}
	if m := create("门店"); errcode(m) != 45157 {
		t.Errorf("duplicate: %v", m)
	}
	if m := create(strings.Repeat("码", 11)); errcode(m) != 45158 { // 33 bytes
		t.Errorf("31 bytes: %v", m)
	}
	if got := tagging(tag, "o1", "o2"); got != 0 {
		t.Errorf("tagging: %d", got)
	}
	many := make([]string, 51)
	for i := range many {
		many[i] = fmt.Sprint("p", i)
	}
	for name, got := range map[string]int{
		"51 OpenIDs": tagging(tag, many...), "none": tagging(tag), "unknown tag": tagging(999, "o1"), "bad openid": tagging(tag, ""),
	} {
		if want := map[string]int{"51 OpenIDs": 40032, "none": 40032, "unknown tag": 45159, "bad openid": 40003}[name]; got != want {
			t.Errorf("%s: %d, want %d", name, got, want)
		}
	}
	if got := tagging(tag, many[:50]...); got != 0 {
		t.Errorf("50 OpenIDs: %d", got)
	}
	// o1 gets 19 more tags (20), then a 21st is refused for the whole call.
	for i := 0; i < 19; i++ {
		id := int(create(fmt.Sprint("t", i))["tag"].(map[string]any)["id"].(float64))
		if got := tagging(id, "o1"); got != 0 {
			t.Fatalf("tag %d: %d", i, got)
		}
	}
	extra := int(create("extra")["tag"].(map[string]any)["id"].(float64))
	if got := tagging(extra, "o2", "o1"); got != 45059 {
		t.Errorf("a 21st tag: %d", got)
	}
	if got := s.TagsOf("", "o2"); !slices.Equal(got, []int{tag}) {
		t.Errorf("o2 tagged although the call was refused: %v", got)
	}
	if got := tagging(tag, "o1"); got != 0 {
		t.Errorf("again the same tag at 20: %d", got)
	}
	ids := call(t, base, "/cgi-bin/tags/getidlist?access_token="+tok, map[string]string{"openid": "o1"})
	if l, _ := ids["tagid_list"].([]any); len(l) != 20 || l[0] != float64(tag) {
		t.Errorf("getidlist: %v", ids)
	}
	tags := get(t, base, "/cgi-bin/tags/get?access_token="+tok)
	if l, _ := tags["tags"].([]any); len(l) != 21 || l[0].(map[string]any)["count"] != 52.0 {
		t.Errorf("tags/get: %v", tags)
	}
	for i := len(tags["tags"].([]any)); i < MaxTags; i++ {
		create(fmt.Sprint("fill", i))
	}
	if m := create("one too many"); errcode(m) != 45056 {
		t.Errorf("101st tag: %v", m)
	}
	// The first N calls can be refused, as WeChat does at random (45159)
	// or when the quota is spent (45009).
	_ = s.Inject(Fault{API: TagsBatchTagging, Errcode: 45159, Count: 2})
	if a, b, c := tagging(tag, "o9"), tagging(tag, "o9"), tagging(tag, "o9"); a != 45159 || b != 45159 || c != 0 {
		t.Errorf("fault: %d %d %d", a, b, c)
	}
	// What a tagger's test reads: the calls that tagged, the longest list
	// (the refused 51 included), the one OpenID tagged again (o1 at 20),
	// and the people per tag.
	var calls Calls
	resp, err := http.Get(base + "/wxsim/calls")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&calls)
	resp.Body.Close()
	if tg := calls.Apps["wx1"].Tagging; tg == nil || tg.Calls != 23 || tg.MaxBatch != 51 || tg.Retagged != 1 || tg.People["门店"] != 53 || tg.People["extra"] != 0 {
		t.Errorf("tagging in /wxsim/calls: %+v", tg)
	}
	if m := call(t, base, "/cgi-bin/tags/get?access_token="+tok, nil); errcode(m) != 43001 {
		t.Errorf("POST tags/get: %v", m)
	}
}

func TestAutoreply(t *testing.T) {
	_, base, _ := newFake(t, Options{})
	tok, _ := getToken(t, base)
	if m := get(t, base, "/cgi-bin/get_current_autoreply_info?access_token="+tok); m["is_autoreply_open"] != 0.0 {
		t.Errorf("unset: %v", m)
	}
	info := `{"is_add_friend_reply_open":1,"is_autoreply_open":1,"add_friend_autoreply_info":{"type":"text","content":"欢迎"},` +
		`"keyword_autoreply_info":{"list":[{"rule_name":"r","reply_mode":"reply_all","keyword_list_info":[{"type":"text","match_mode":"contain","content":"价格"}],"reply_list_info":[{"type":"text","content":"99元"}]}]}}`
	resp, err := http.Post(base+"/wxsim/autoreply", "application/json", strings.NewReader(`{"info":`+info+`}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("set: %v %v", resp, err)
	}
	resp.Body.Close()
	m := get(t, base, "/cgi-bin/get_current_autoreply_info?access_token="+tok)
	if m["add_friend_autoreply_info"].(map[string]any)["content"] != "欢迎" {
		t.Errorf("set: %v", m)
	}
	for _, bad := range []string{`{"info":[1]}`, `{"appid":"nope","info":{}}`, `{"inf":{}}`} {
		resp, _ := http.Post(base+"/wxsim/autoreply", "application/json", strings.NewReader(bad))
		if resp.Body.Close(); resp.StatusCode != 400 {
			t.Errorf("%s: %d", bad, resp.StatusCode)
		}
	}
}
