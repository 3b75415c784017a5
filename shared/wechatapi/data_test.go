package wechatapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/clocktest"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// The datacube through the client: the figures the fake was given, the
// spans refused before WeChat is asked, WeChat's refusals as *Error.
func TestDatacube(t *testing.T) {
	clk := clocktest.New(time.Date(2027, 3, 10, 4, 0, 0, 0, time.UTC)) // 12:00 in Beijing
	e := newEnv(t, wechatapitest.Options{Now: clk.Now})
	p := e.process(t, "p", TokenOptions{Now: clk.Now})
	ctx := context.Background()
	_ = e.fake.SetDatacube(wechatapitest.DatacubeFigures{
		Users:     []wechatapitest.UserRow{{RefDate: "2027-03-08", UserSource: SourceQRCode, NewUser: 12, CancelUser: 3}},
		Callbacks: []wechatapitest.InterfaceRow{{RefDate: "2027-03-09", CallbackCount: 500, FailCount: 2, TotalTimeCost: 9000, MaxTimeCost: 1200}},
	})
	users, err := p.UserSummary(ctx, "2027-03-03", "2027-03-09")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(users, func(u UserSummary) bool { return u.Source == SourceQRCode })
	if len(users) != 7 || i < 0 || users[i] != (UserSummary{Date: "2027-03-08", Source: 30, NewUser: 12, CancelUser: 3}) {
		t.Errorf("users %+v", users)
	}
	calls, err := p.InterfaceSummary(ctx, "2027-02-08", "2027-03-09")
	if err != nil || len(calls) != 30 || calls[29] != (InterfaceSummary{Date: "2027-03-09", CallbackCount: 500, FailCount: 2, TotalTimeCost: 9000, MaxTimeCost: 1200}) {
		t.Errorf("callbacks %v %+v", err, calls)
	}
	before := e.calls(wechatapitest.UserSummary)
	for _, r := range [][2]string{{"2027-03-02", "2027-03-09"}, {"2027-03-09", "2027-03-08"}, {"20270301", "2027-03-02"}} {
		if _, err := p.UserSummary(ctx, r[0], r[1]); !errors.Is(err, ErrBadArgument) {
			t.Errorf("%v: %v", r, err)
		}
	}
	if _, err := p.InterfaceSummary(ctx, "2027-02-05", "2027-03-07"); !errors.Is(err, ErrBadArgument) {
		t.Errorf("31 days: %v", err)
	}
	if n := e.calls(wechatapitest.UserSummary); n != before {
		t.Errorf("WeChat asked %d times for ranges it refuses", n-before)
	}
	if _, err := p.UserSummary(ctx, "2027-03-09", "2027-03-10"); !isCode(err, CodeDateRange) {
		t.Errorf("today: %v", err)
	}
	off := true
	_ = e.fake.SetDatacube(wechatapitest.DatacubeFigures{Unauthorized: &off})
	_, err = p.UserSummary(ctx, "2027-03-09", "2027-03-09")
	var we *Error
	if !errors.As(err, &we) || we.Code != CodeUnauthorized || we.Hint() == "" {
		t.Errorf("no permission: %v", err)
	}
	if v, ok := metricstest.Lookup(p.reg, "wxgate_wechat_api_calls_total", map[string]string{"account": "default", "api": APIUserSummary, "outcome": "48001"}); !ok || v != 1 {
		t.Errorf("48001 counted %v", v)
	}
}

func isCode(err error, code int) bool {
	var we *Error
	return errors.As(err, &we) && we.Code == code
}

// Tags through the client, with the fake's limits.
func TestTags(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{})
	ctx := context.Background()
	tag, err := p.CreateTag(ctx, "门店顾客")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateTag(ctx, "门店顾客"); !isCode(err, CodeTagNameInvalid) {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := p.CreateTag(ctx, "一二三四五六七八九十一"); !errors.Is(err, ErrBadArgument) { // 33 bytes
		t.Errorf("too long: %v", err)
	}
	people := make([]string, 51)
	for i := range people {
		people[i] = fmt.Sprint("o_", i)
	}
	if err := p.TagUsers(ctx, tag.ID, people); !errors.Is(err, ErrBadArgument) {
		t.Errorf("51 people: %v", err)
	}
	if err := p.TagUsers(ctx, tag.ID, people[:50]); err != nil {
		t.Fatal(err)
	}
	if err := p.TagUsers(ctx, 9999, people[:1]); !isCode(err, CodeInvalidTagID) {
		t.Errorf("unknown tag: %v", err)
	}
	ids, err := p.UserTags(ctx, "o_7")
	if err != nil || !slices.Equal(ids, []int{tag.ID}) {
		t.Errorf("o_7's tags: %v %v", ids, err)
	}
	tags, err := p.Tags(ctx)
	if err != nil || len(tags) != 1 || tags[0].Count != 50 || tags[0].Name != "门店顾客" {
		t.Errorf("tags %+v %v", tags, err)
	}
}

// The console's auto-replies, read as WeChat writes them.
func TestAutoreplyInfo(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{})
	info := `{"is_add_friend_reply_open":1,"is_autoreply_open":1,"add_friend_autoreply_info":{"type":"text","content":"欢迎关注"},` +
		`"message_default_autoreply_info":{"type":"text","content":"稍后回复"},"keyword_autoreply_info":{"list":[` +
		`{"rule_name":"价格","create_time":1423028166,"reply_mode":"reply_all","keyword_list_info":[{"type":"text","match_mode":"contain","content":"价格"},{"type":"text","match_mode":"equal","content":"多少钱"}],` +
		`"reply_list_info":[{"type":"text","content":"99元"},{"type":"news","news_info":{"list":[{"title":"价目表","digest":"d","show_cover":1,"cover_url":"http://mmbiz.qpic.cn/x","content_url":"http://mp.weixin.qq.com/s?x","source_url":""}]}}]}]}}`
	if err := e.fake.SetAutoreply("", []byte(info)); err != nil {
		t.Fatal(err)
	}
	a, err := p.AutoreplyInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rules := a.KeywordAutoreply.List
	if a.FollowReply == nil || a.FollowReply.Content != "欢迎关注" || a.DefaultReply.Content != "稍后回复" || len(rules) != 1 ||
		rules[0].Keywords[1].MatchMode != "equal" || rules[0].Replies[1].NewsInfo.List[0].Title != "价目表" {
		t.Errorf("autoreply %+v", a)
	}
}
