package sim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/loadgen"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Mix is a message mix: the share of each kind, in percent.
type Mix struct{ Text, Scan, Subscribe, Other int }

// DefaultMix is a QR campaign's shape: mostly chat, a fifth scans; other is
// an image.
var DefaultMix = Mix{Text: 60, Scan: 20, Subscribe: 15, Other: 5}

// ParseMix reads "text=60,scan=20,subscribe=15,other=5".
func ParseMix(s string) (Mix, error) {
	var m Mix
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 {
			return Mix{}, fmt.Errorf("mix %q: want kind=percent pairs", s)
		}
		switch k {
		case "text":
			m.Text = n
		case "scan":
			m.Scan = n
		case "subscribe":
			m.Subscribe = n
		case "other":
			m.Other = n
		default:
			return Mix{}, fmt.Errorf("mix: unknown kind %q (text, scan, subscribe, other)", k)
		}
	}
	if m.Text+m.Scan+m.Subscribe+m.Other == 0 {
		return Mix{}, fmt.Errorf("mix %q is empty", s)
	}
	return m, nil
}

// Message returns request i of a run: its kind follows the mix, and every
// message is distinct (own OpenID and MsgId), so none is a retry of another.
// Each kind is answered with a reply: "success" is a fallback.
func (m Mix) Message(run string, i, scenes int, now time.Time) *wechat.Message {
	total := m.Text + m.Scan + m.Subscribe + m.Other
	// Spread kinds evenly over consecutive requests.
	slot := int((uint64(i) * 2654435761) % uint64(total))
	msg := &wechat.Message{ToUserName: "gh_wxsim", FromUserName: "o_" + run + "_" + strconv.Itoa(i), CreateTime: now.Unix()}
	scene := "scene_" + strconv.Itoa(i%max(scenes, 1))
	switch {
	case slot < m.Text:
		msg.MsgType, msg.Content, msg.MsgID = wechat.MsgText, "load "+strconv.Itoa(i), strconv.Itoa(1_000_000_000+i)
	case slot < m.Text+m.Scan:
		msg.MsgType, msg.Event, msg.EventKey, msg.Ticket = wechat.MsgEvent, wechat.EventScan, scene, "load_ticket"
	case slot < m.Text+m.Scan+m.Subscribe:
		msg.MsgType, msg.Event, msg.EventKey, msg.Ticket = wechat.MsgEvent, wechat.EventSubscribe, wechat.ScenePrefix+scene, "load_ticket"
	default: // an image, answered with the default text
		msg.MsgType, msg.PicURL, msg.MediaID, msg.MsgID = wechat.MsgImage, "http://mmbiz.qpic.cn/load.jpg", "media_"+strconv.Itoa(i), strconv.Itoa(1_000_000_000+i)
	}
	return msg
}

// Target is where requests go: an account's callback URL and how its
// callbacks are signed.
type Target struct {
	Sender wechat.Sender
	URL    string
}

// Requests returns a loadgen request function: request i is message i of
// the mix, sent to url as WeChat would, its answer classified.
func (m Mix) Requests(s wechat.Sender, c *http.Client, url string, scenes int) func(context.Context, int) loadgen.Outcome {
	return m.RequestsTo([]Target{{s, url}}, c, scenes)
}

// RequestsTo is Requests spread over targets: request i goes to target i
// modulo their number.
func (m Mix) RequestsTo(targets []Target, c *http.Client, scenes int) func(context.Context, int) loadgen.Outcome {
	run := strconv.FormatUint(rand.Uint64()%1e8, 36) // distinct messages across runs too
	return func(_ context.Context, i int) loadgen.Outcome {
		t := targets[i%len(targets)]
		code, reply, err := t.Sender.Post(c, t.URL, m.Message(run, i, scenes, time.Now()).AppendXML(nil), time.Now(), strconv.Itoa(i))
		switch {
		case err != nil || code != http.StatusOK:
			return loadgen.Error
		case len(reply) > 0 && string(reply) != "success":
			return loadgen.Reply
		}
		return loadgen.Fallback
	}
}

type loadCmd struct {
	*client
	concurrency int
	rate        float64
	duration    time.Duration
	requests    int
	mix         string
	scenes      int
	accounts    int
}

func (l *loadCmd) flags(fs *flag.FlagSet) {
	fs.IntVar(&l.concurrency, "concurrency", 16, "connections (closed loop), or the most requests in flight at -rate")
	fs.Float64Var(&l.rate, "rate", 0, "requests per second, open loop (latency from each request's due time); 0: closed loop")
	fs.DurationVar(&l.duration, "duration", 10*time.Second, "how long to send")
	fs.IntVar(&l.requests, "requests", 0, "stop after this many requests (0: -duration alone)")
	fs.StringVar(&l.mix, "mix", "text=60,scan=20,subscribe=15,other=5", "message mix in percent")
	fs.IntVar(&l.scenes, "scenes", 10, "distinct QR scenes in the scans")
	fs.IntVar(&l.accounts, "accounts", 0, "spread the load over this many accounts, acct000, acct001, … (-url/<id>; each with its -tokens, -aeskeys, -appids, else the common ones); 0: -url (and -account) as given")
}

// AccountID is the id of load account i: acct000, acct001, …
func AccountID(i int) string { return fmt.Sprintf("acct%03d", i) }

// targets are where the load goes: -url, or each of -accounts.
func (l *loadCmd) targets() ([]Target, error) {
	if l.accounts <= 0 {
		return []Target{{l.sender, l.url}}, nil
	}
	if l.account != "" {
		return nil, errors.New("-accounts and -account: give one")
	}
	var out []Target
	for i := range l.accounts {
		id := AccountID(i)
		s, err := l.senderFor(id)
		if err != nil {
			return nil, err
		}
		out = append(out, Target{s, accountURL(l.url, id)})
	}
	return out, nil
}

func (l *loadCmd) run(ctx context.Context) error {
	mix, err := ParseMix(l.mix)
	if err != nil {
		return err
	}
	targets, err := l.targets()
	if err != nil {
		return err
	}
	if err := l.ready(ctx); err != nil {
		return err
	}
	l.http.Transport.(*http.Transport).MaxIdleConnsPerHost = l.concurrency
	report, err := loadgen.Run(ctx, loadgen.Options{
		Concurrency: l.concurrency, Rate: l.rate, Duration: l.duration, Requests: l.requests,
		Do: mix.RequestsTo(targets, l.http, l.scenes),
	})
	if err != nil {
		return err
	}
	report.Print(l.out)
	if report.Err > 0 {
		return fmt.Errorf("%d requests failed", report.Err)
	}
	return nil
}
