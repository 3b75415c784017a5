package wechatapitest

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func sendText(t *testing.T, base, tok, to string) int {
	t.Helper()
	return errcode(call(t, base, "/cgi-bin/message/custom/send?access_token="+tok,
		map[string]any{"touser": to, "msgtype": "text", "text": map[string]any{"content": "late"}}))
}

// Each scenario is a list of steps for the person o1 unless a step names
// another with @: "message" or "event" or "unsubscribe" tells an
// interaction, "+D" moves the clock by the Go duration D, "send=N" sends
// and expects errcode N.
func TestWindows(t *testing.T) {
	tests := []struct{ name, steps string }{
		{"no interaction", "send=45015"},
		{"another person's window", "message@o2 send=45015 send@o2=0"},
		{"a message allows 5", "message send=0 send=0 send=0 send=0 send=0 send=45047"},
		{"a message's window is 48h", "message +47h59m59s send=0 +1s send=45015"},
		{"an event allows 3", "event send=0 send=0 send=0 send=45047"},
		{"an event's window is 60s", "event +59s send=0 +1s send=45015"},
		{"a new event reopens", "event send=0 send=0 send=0 send=45047 event send=0 send=0 send=0 send=45047"},
		{"a message after the window closed", "event +2m send=45015 message send=0"},
		{"the latest interaction sets the terms", "message send=0 event send=0 send=0 send=0 send=45047 +1m send=0 send=0 send=0 send=0 send=45047"},
		{"a message after an event", "event message send=0 send=0 send=0 send=0 send=0 send=45047"},
		{"unsubscribe closes every window", "message event unsubscribe send=45015 event send=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, base, clk := newFake(t, Options{TokenTTL: 100 * time.Hour}) // one token for the whole scenario
			tok, _ := getToken(t, base)
			accepted, refused := 0, map[string]int{}
			for _, step := range strings.Fields(tt.steps) {
				step, want, _ := strings.Cut(step, "=")
				step, who, _ := strings.Cut(step, "@")
				if who == "" {
					who = "o1"
				}
				switch {
				case strings.HasPrefix(step, "+"):
					d, err := time.ParseDuration(step[1:])
					if err != nil {
						t.Fatal(err)
					}
					clk.Add(d)
				case step == "send":
					got := sendText(t, base, tok, who)
					if strconv.Itoa(got) != want {
						t.Fatalf("%s: step %s@%s = %d, want %s", tt.steps, step, who, got, want)
					}
					if got == 0 {
						accepted++
					} else {
						refused[want]++
					}
				default:
					if err := s.Interaction(who, step, time.Time{}); err != nil {
						t.Fatal(err)
					}
				}
			}
			c := s.Calls()
			if len(c.Messages) != accepted {
				t.Errorf("%d messages recorded, want %d", len(c.Messages), accepted)
			}
			for code, n := range refused {
				if c.Errcodes[CustomSend][code] != n {
					t.Errorf("errcodes %v, want %s %d times", c.Errcodes[CustomSend], code, n)
				}
			}
		})
	}
}

// Windows and counts are settable; NoWindows accepts anyone; SendCheck
// still refuses first, without using the window.
func TestWindowOptions(t *testing.T) {
	s, base, clk := newFake(t, Options{EventWindow: 10 * time.Second, EventQuota: 1, MessageWindow: time.Hour, MessageQuota: 2})
	tok, _ := getToken(t, base)
	_ = s.Interaction("o1", KindEvent, time.Time{})
	if a, b := sendText(t, base, tok, "o1"), sendText(t, base, tok, "o1"); a != 0 || b != 45047 {
		t.Errorf("event quota 1: %d %d", a, b)
	}
	_ = s.Interaction("o1", KindEvent, time.Time{})
	clk.Add(10 * time.Second)
	if got := sendText(t, base, tok, "o1"); got != 45015 {
		t.Errorf("after a 10s event window: %d", got)
	}
	_ = s.Interaction("o1", KindMessage, time.Time{})
	if a, b, c := sendText(t, base, tok, "o1"), sendText(t, base, tok, "o1"), sendText(t, base, tok, "o1"); a != 0 || b != 0 || c != 45047 {
		t.Errorf("message quota 2: %d %d %d", a, b, c)
	}

	_, base, _ = newFake(t, Options{NoWindows: true})
	tok, _ = getToken(t, base)
	if got := sendText(t, base, tok, "nobody"); got != 0 {
		t.Errorf("NoWindows: %d", got)
	}

	deny := true
	s, base, _ = newFake(t, Options{EventQuota: 1, SendCheck: func(Message) (int, string) {
		if deny {
			return 48001, "api unauthorized"
		}
		return 0, ""
	}})
	tok, _ = getToken(t, base)
	_ = s.Interaction("o1", KindEvent, time.Time{})
	if got := sendText(t, base, tok, "o1"); got != 48001 {
		t.Errorf("SendCheck: %d", got)
	}
	deny = false
	if got := sendText(t, base, tok, "o1"); got != 0 {
		t.Errorf("after SendCheck refused, the window's one message: %d", got)
	}
}

// The fake remembers MaxPeople people: the one told of least recently is
// forgotten first.
func TestMaxPeople(t *testing.T) {
	s, base, _ := newFake(t, Options{MaxPeople: 2})
	tok, _ := getToken(t, base)
	for _, who := range []string{"o1", "o2", "o1", "o3"} {
		_ = s.Interaction(who, KindMessage, time.Time{})
	}
	for who, want := range map[string]int{"o1": 0, "o2": 45015, "o3": 0} {
		if got := sendText(t, base, tok, who); got != want {
			t.Errorf("%s: %d, want %d", who, got, want)
		}
	}
	a := s.apps["wx1"]
	if n := len(a.people); n != 2 || a.lru.Len() != 2 {
		t.Errorf("%d people tracked, %d in the LRU", n, a.lru.Len())
	}
}

func TestInteractionEndpoint(t *testing.T) {
	s, base, clk := newFake(t, Options{})
	tok, _ := getToken(t, base)
	post := func(body string) int {
		t.Helper()
		resp, err := http.Post(base+"/wxsim/interaction", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tt := range []struct {
		body string
		want int
	}{
		{`{"openid":"o1","kind":"message"}`, 200},
		{`{"openid":"o2","kind":"event","at":"` + clk.Now().Add(-50*time.Second).Format(time.RFC3339) + `"}`, 200},
		{`{"openid":"o3","kind":"unsubscribe"}`, 200},
		{`{"openid":"o1","kind":"click"}`, 400},
		{`{"openid":"","kind":"message"}`, 400},
		{`{"openid":"` + strings.Repeat("o", 65) + `","kind":"message"}`, 400},
		{`{"open_id":"o1","kind":"message"}`, 400},
		{`{"openid":"o1","kind":"message","at":"yesterday"}`, 400},
		{`{"openid":"o1","kind":"message"} {}`, 400},
		{`openid=o1`, 400},
		{``, 400},
	} {
		if got := post(tt.body); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.body, got, tt.want)
		}
	}
	// o2's event was 50s ago: 10s are left.
	clk.Add(9 * time.Second)
	if got := sendText(t, base, tok, "o2"); got != 0 {
		t.Errorf("o2 inside the window opened at \"at\": %d", got)
	}
	clk.Add(time.Second)
	if got := sendText(t, base, tok, "o2"); got != 45015 {
		t.Errorf("o2 60s after \"at\": %d", got)
	}
	if c := s.Calls(); c.Interactions[KindMessage] != 1 || c.Interactions[KindEvent] != 1 || c.Interactions[KindUnsubscribe] != 1 {
		t.Errorf("interactions = %v", c.Interactions)
	}
}

// A time after now is taken as now, so the window does not open late.
func TestInteractionInTheFuture(t *testing.T) {
	s, base, clk := newFake(t, Options{})
	tok, _ := getToken(t, base)
	_ = s.Interaction("o1", KindEvent, clk.Now().Add(time.Hour))
	clk.Add(time.Minute)
	if got := sendText(t, base, tok, "o1"); got != 45015 {
		t.Errorf("a minute after an event told as an hour ahead: %d, want 45015", got)
	}
}

func TestInteractionKind(t *testing.T) {
	for _, tt := range []struct{ msgType, event, want string }{
		{"text", "", KindMessage},
		{"voice", "", KindMessage},
		{"image", "", KindMessage},
		{"event", "subscribe", KindEvent},
		{"event", "SCAN", KindEvent},
		{"event", "CLICK", KindEvent},
		{"event", "scancode_waitmsg", KindEvent},
		{"event", "unsubscribe", KindUnsubscribe},
		{"event", "VIEW", ""},
		{"event", "LOCATION", ""},
		{"", "", ""},
	} {
		if got := InteractionKind(tt.msgType, tt.event); got != tt.want {
			t.Errorf("%s/%s = %q, want %q", tt.msgType, tt.event, got, tt.want)
		}
	}
}

// Concurrent sends cannot take more than a window allows.
func TestWindowConcurrentSends(t *testing.T) {
	s, base, _ := newFake(t, Options{})
	tok, _ := getToken(t, base)
	_ = s.Interaction("o1", KindEvent, time.Time{})
	codes := make(chan int, 10)
	body := `{"touser":"o1","msgtype":"text","text":{"content":"x"}}`
	for range 10 {
		go func() {
			// Not call(): t.Fatal must not run outside the test's goroutine.
			resp, err := http.Post(base+"/cgi-bin/message/custom/send?access_token="+tok, "application/json", strings.NewReader(body))
			if err != nil {
				codes <- -999
				return
			}
			defer resp.Body.Close()
			var a errAnswer
			if json.NewDecoder(resp.Body).Decode(&a) != nil {
				a.Errcode = -998
			}
			codes <- a.Errcode
		}()
	}
	ok := 0
	for range 10 {
		switch code := <-codes; code {
		case 0:
			ok++
		case 45047:
		default:
			t.Errorf("errcode %d", code)
		}
	}
	if ok != 3 || len(s.Calls().Messages) != 3 {
		t.Errorf("%d accepted, %d recorded; want 3", ok, len(s.Calls().Messages))
	}
}

func FuzzParseInteraction(f *testing.F) {
	f.Add([]byte(`{"openid":"o1","kind":"message"}`))
	f.Add([]byte(`{"openid":"o1","kind":"event","at":"2026-01-02T15:04:05+08:00"}`))
	f.Add([]byte(`{"openid":"o1","kind":"unsubscribe"} x`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseInteraction(body)
		if err != nil {
			return
		}
		if req.OpenID == "" || len(req.OpenID) > maxOpenID || checkInteraction(req.OpenID, req.Kind) != nil {
			t.Errorf("accepted %+v", req)
		}
	})
}
