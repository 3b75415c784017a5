// Package tags gives people WeChat user tags, the action of a rule
// ({"tag":"<name>"}), once per account, tag and person, across WeChat's
// refusals, replicas and kill -9.
//
// Enqueue stores a request in the stream WXGATE_ACTIONS (work-queue
// retention; Nats-Msg-Id a digest of account, tag and person, so repeats
// within the duplicate window are stored once) and returns when JetStream
// has it: the reply path never waits on WeChat. Every worker with the
// replies role takes requests from the durable consumer wxgate-tags,
// groups them by account and tag, and tags at most 50 people a call
// (tags/members/batchtagging), with the tag's id from tags/get (kept in
// memory) or made by tags/create.
//
// Exactly once: each (account, tag, person) has a record in the KV bucket
// wxgate_tags, keyed by the account and the digest (no OpenID in a key).
// It is taken as a bus.Lease ("sending") before the call and finished
// "tagged" after it. A person whose record says tagged is acknowledged
// without a call (already). A record a dead worker left "sending" is taken
// over once its lease is stale and settled by asking WeChat whether the
// person has the tag (tags/getidlist), never by calling again blindly; so
// is a call that got no answer.
package tags

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// The NATS resources of tagging.
const (
	Stream        = "WXGATE_ACTIONS"
	SubjectPrefix = "wxgate.actions." // + <account>.tag
	Consumer      = "wxgate-tags"
	Bucket        = "wxgate_tags"
	// Duplicates is the stream's duplicate window: the scans of one
	// campaign by one person are one request.
	Duplicates = 10 * time.Minute
	// MaxAge bounds how long a request waits (for the quota, for WeChat
	// to answer) before the stream drops it.
	MaxAge = 7 * 24 * time.Hour
)

// Outcomes of a request, the outcome label of wxgate_tagging_total.
const (
	Tagged  = "tagged"  // WeChat tagged the person (or had, when a record was settled by asking)
	Already = "already" // the record said tagged: no call
	Limit   = "limit"   // the person has 20 tags (45059): not retried
	Retried = "retried" // refused or unanswered, tried again after a back-off
	Quota   = "quota"   // the account's daily quota is spent (45009): waits
	Failed  = "failed"  // given up: no AppSecret, refused every attempt, not enqueued
)

var outcomes = []string{Tagged, Already, Limit, Retried, Quota, Failed}

// Options configure a Tagger. Conn, WeChat, Logger and Registerer are
// required; the rest have defaults.
type Options struct {
	Conn       *nats.Conn
	WeChat     *wechatapi.Clients
	Replicas   int // of the stream and the bucket when this process creates them
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Linger is how long a fetch waits to fill its batches. Default 1s.
	Linger time.Duration
	// AckWait is how long a request may be held, unreported, before
	// another worker gets it. Default 10s.
	AckWait time.Duration
	// Lease is how long a record may go unrenewed before another worker
	// takes it over; a call runs at most half of it. Default 15s.
	Lease time.Duration
	// RetryBase is the first wait after a refusal; it doubles up to 5
	// minutes. After 45009 the waits are 60 times as long, up to 30
	// minutes. Default 1s.
	RetryBase time.Duration
}

func (o *Options) setDefaults() {
	if o.Linger <= 0 {
		o.Linger = time.Second
	}
	if o.AckWait <= 0 {
		o.AckWait = 10 * time.Second
	}
	if o.Lease <= 0 {
		o.Lease = 15 * time.Second
	}
	if o.RetryBase <= 0 {
		o.RetryBase = time.Second
	}
	o.Replicas = max(o.Replicas, 1)
}

func (o *Options) validate() error {
	if o.Conn == nil || o.WeChat == nil || o.Logger == nil || o.Registerer == nil {
		return errors.New("tags: Options.Conn, WeChat, Logger and Registerer are required")
	}
	return nil
}

// Tagger takes tag requests and works them off.
type Tagger struct {
	o        Options
	js       jetstream.JetStream
	sending  []byte // this process's record while it calls
	outcomes *prometheus.CounterVec

	mu   sync.Mutex
	down error
	ids  map[string]int // tag ids by account and name (idKey)

	stop   context.CancelFunc // stops fetching
	work   context.Context    // the calls and records; cut when Stop runs out of time
	cut    context.CancelFunc
	done   chan struct{}
	settle sync.WaitGroup
}

// Start starts a tagger: it sets its stream, bucket and consumer up in the
// background, and again while JetStream is away.
func Start(o Options) (*Tagger, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("tags: %w", err)
	}
	t := &Tagger{o: o, js: js, down: errors.New("not set up yet"), ids: map[string]int{}, done: make(chan struct{})}
	t.sending, _ = json.Marshal(record{State: stateSending, By: bus.InstanceID(o.Conn)})
	t.outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxgate_tagging_total",
		Help: "Tag requests (a rule's tag action) by account and outcome: tagged, already (no call), limit (the person has 20 tags), retried, quota (45009, waiting), failed (given up).",
	}, []string{"account", "outcome"})
	if err := o.Registerer.Register(t.outcomes); err != nil {
		return nil, fmt.Errorf("tags: metrics: %w", err)
	}
	for _, out := range outcomes {
		t.outcomes.WithLabelValues(accounts.DefaultID, out)
	}
	var ctx context.Context
	ctx, t.stop = context.WithCancel(context.Background())
	t.work, t.cut = context.WithCancel(context.Background())
	go t.run(ctx)
	return t, nil
}

// request is a stored tag request.
type request struct {
	Account string `json:"account"`
	Tag     string `json:"tag"`
	OpenID  string `json:"openid"`
}

// record is a person's record in the bucket.
type record struct {
	State string `json:"state"`
	By    string `json:"by,omitempty"` // the holder, while sending
}

const (
	stateSending = "sending"
	stateTagged  = "tagged"
)

var taggedRecord = []byte(`{"state":"tagged"}`)

func isTagged(v []byte) bool {
	var r record
	return json.Unmarshal(v, &r) == nil && r.State == stateTagged
}

// ErrBadRequest wraps a request Enqueue refuses as malformed.
var ErrBadRequest = errors.New("bad tag request")

// openIDPattern is an OpenID's form: WeChat's are 28 characters.
var openIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Enqueue asks for the person openid of account to get the tag. It returns
// once the request is stored (nil): the person will be tagged once, or
// counted why not. It never waits on WeChat; ctx bounds the wait for
// JetStream. An account without an AppSecret, or unknown, is refused.
func (t *Tagger) Enqueue(ctx context.Context, account, openid, tag string) error {
	if err := (request{account, tag, openid}).check(); err != nil {
		return err
	}
	if _, err := t.o.WeChat.For(account); err != nil {
		if !errors.Is(err, wechatapi.ErrUnknownAccount) {
			t.outcomes.WithLabelValues(account, Failed).Inc()
		}
		return fmt.Errorf("tag %q: %w", tag, err)
	}
	if _, err := t.js.PublishMsg(ctx, Request(account, openid, tag)); err != nil {
		t.outcomes.WithLabelValues(account, Failed).Inc()
		return fmt.Errorf("tag %q: enqueue: %w", tag, err)
	}
	return nil
}

func (r request) check() error {
	switch {
	case !accounts.ValidID(r.Account):
		return fmt.Errorf("%w: account %q", ErrBadRequest, r.Account)
	case !openIDPattern.MatchString(r.OpenID):
		return fmt.Errorf("%w: the OpenID is not 1 to 64 letters, digits, _ or -", ErrBadRequest)
	case r.Tag == "" || len(r.Tag) > wechatapi.MaxTagNameBytes || !utf8.ValidString(r.Tag):
		return fmt.Errorf("%w: a tag name is 1 to %d bytes of UTF-8", ErrBadRequest, wechatapi.MaxTagNameBytes)
	}
	return nil
}

// Request is the message Enqueue stores, for a tool or a test that asks
// for a tag without a Tagger; its arguments are not checked.
func Request(account, openid, tag string) *nats.Msg {
	m := nats.NewMsg(SubjectPrefix + account + ".tag")
	m.Data, _ = json.Marshal(request{Account: account, Tag: tag, OpenID: openid})
	m.Header.Set(jetstream.MsgIDHeader, digest(account, tag, openid))
	return m
}

// digest names a (account, tag, person) without the OpenID.
func digest(account, tag, openid string) string {
	h := sha256.Sum256([]byte(account + "\x00" + tag + "\x00" + openid))
	return hex.EncodeToString(h[:16])
}

// Check reports whether the tagger takes requests.
func (t *Tagger) Check() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.down != nil {
		return fmt.Errorf("tagging not running: %w", t.down)
	}
	return nil
}

func (t *Tagger) setDown(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.down = err
}

// Stop stops taking requests; the calls in progress finish, or are cut
// when ctx ends (their records are settled by asking, later).
func (t *Tagger) Stop(ctx context.Context) error {
	t.stop()
	done := make(chan struct{})
	go func() { <-t.done; t.settle.Wait(); close(done) }()
	defer t.cut()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tags stop: %w", ctx.Err())
	}
}

// fetchSize bounds the requests taken at once, by this worker.
const fetchSize = 500

// run sets the resources up and takes requests until ctx ends; again
// after NATS was away (the server may have come back without its data).
func (t *Tagger) run(ctx context.Context) {
	defer close(t.done)
	for up := true; ctx.Err() == nil; {
		var kv jetstream.KeyValue
		var cons jetstream.Consumer
		// Not tried while disconnected: a request made then would wait
		// out its timeout after NATS is back.
		err := bus.Ready(t.o.Conn)
		if err == nil {
			kv, cons, err = t.setup(ctx)
		}
		for err == nil && ctx.Err() == nil {
			t.setDown(nil)
			up = true
			if err = t.fetch(kv, cons); err == nil {
				err = bus.Ready(t.o.Conn)
			}
		}
		if ctx.Err() != nil {
			return
		}
		if up {
			t.o.Logger.Warn("tagging waits for JetStream", "err", err)
			up = false
		}
		t.setDown(err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// fetch takes the requests that come within Linger and works them off.
// (FetchContext would end a wait at once on a stop, but its deadline drops
// what arrives after it, delivered and unread until the ack wait.)
func (t *Tagger) fetch(kv jetstream.KeyValue, cons jetstream.Consumer) error {
	batch, err := cons.Fetch(fetchSize, jetstream.FetchMaxWait(t.o.Linger))
	if err != nil {
		return err
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	t.process(kv, msgs)
	return batch.Error() // the consumer or the stream gone
}

func (t *Tagger) setup(ctx context.Context) (jetstream.KeyValue, jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := t.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "wxgate: actions to do for people (user tags), each once; removed when done",
		Subjects:    []string{SubjectPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.o.Replicas,
		Duplicates:  Duplicates,
		MaxAge:      MaxAge,
	}); err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", Stream, err)
	}
	kv, err := bus.NewBucket(t.o.Conn, Bucket, "wxgate: who has which user tag (<account>.<digest of tag and person>): sending or tagged",
		t.o.Replicas).KV(ctx)
	if err != nil {
		return nil, nil, err
	}
	cons, err := t.js.CreateOrUpdateConsumer(ctx, Stream, jetstream.ConsumerConfig{
		Durable:     Consumer,
		Description: "wxgate tagging",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     t.o.AckWait,
		MaxDeliver:  -1,
		// Requests waiting for an account's quota stay pending: room for
		// them beside the others' work.
		MaxAckPending: 20 * fetchSize,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("consumer %s: %w", Consumer, err)
	}
	return kv, cons, nil
}

// item is one request in hand.
type item struct {
	msg  jetstream.Msg
	req  request
	key  string    // the record's
	held *bus.Held // the record, while this process calls
}

// process works off one fetch: the requests grouped by account and tag,
// the groups side by side (a few at a time: each waits on WeChat).
func (t *Tagger) process(kv jetstream.KeyValue, msgs []jetstream.Msg) {
	groups := map[[2]string][]*item{}
	for _, m := range msgs {
		var r request
		err := json.Unmarshal(m.Data(), &r)
		if err == nil {
			err = r.check()
		}
		if err != nil {
			t.o.Logger.Error("tagging: a request that is not one; dropped", "subject", m.Subject(), "err", err)
			_ = m.Term()
			continue
		}
		k := [2]string{r.Account, r.Tag}
		groups[k] = append(groups[k], &item{msg: m, req: r, key: r.Account + "." + digest(r.Account, r.Tag, r.OpenID)})
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for k, items := range groups {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			stop := t.inProgress(items)
			defer stop()
			t.group(kv, k[0], k[1], items)
		}()
	}
	wg.Wait()
}

// group tags the people of one account and tag: those whose record is
// free, in calls of at most 50; the others are acknowledged (tagged
// already) or settled on their own.
func (t *Tagger) group(kv jetstream.KeyValue, account, tag string, items []*item) {
	api, err := t.o.WeChat.For(account)
	if err != nil {
		t.o.Logger.Warn("tagging: no WeChat client for the account; requests dropped", "account", account, "err", err, "requests", len(items))
		t.fail(items)
		return
	}
	id, err := t.tagID(api, account, tag)
	if err != nil {
		t.o.Logger.Warn("tagging: the tag's id not found or made", "account", account, "tag", tag, "err", err)
		t.again(items, err)
		return
	}
	var claimed []*item
	for _, it := range items {
		l := t.lease(kv, it.key)
		h, err := l.Create(t.work, t.sending)
		if err == nil {
			it.held = h
			claimed = append(claimed, it)
			continue
		}
		if !errors.Is(err, bus.ErrLeaseHeld) {
			t.o.Logger.Warn("tagging: record not written", "account", account, "err", err)
			t.nak(it, Retried, t.backoff(it, t.o.RetryBase, 5*time.Minute))
			continue
		}
		if e, err := kv.Get(t.work, it.key); err == nil && isTagged(e.Value()) {
			t.count(it, Already)
			_ = it.msg.Ack()
			continue
		}
		t.settle.Add(1)
		go func() {
			defer t.settle.Done()
			t.settleHeld(l, api, id, it)
		}()
	}
	for chunk := range slices.Chunk(claimed, wechatapi.MaxTagBatch) {
		t.call(api, id, chunk)
	}
}

// lease is the record of key as a lease.
func (t *Tagger) lease(kv jetstream.KeyValue, key string) bus.Lease {
	return bus.Lease{KV: kv, Key: key, TTL: t.o.Lease}
}

// settleHeld waits for a record another holds: it ends tagged (already),
// is deleted (the request comes back, to be claimed), or goes stale (its
// holder died): then it is taken over and settled by asking WeChat.
func (t *Tagger) settleHeld(l bus.Lease, api *wechatapi.Client, tagID int, it *item) {
	stop := t.inProgress([]*item{it})
	defer stop()
	e, state, err := l.Await(t.work, func(e jetstream.KeyValueEntry) bool { return isTagged(e.Value()) })
	switch {
	case err == nil && state == bus.Final:
		t.count(it, Already)
		_ = it.msg.Ack()
		return
	case err == nil && state == bus.Stale:
		if it.held, err = l.TakeOver(t.work, t.sending, e.Revision()); err == nil {
			t.o.Logger.Info("tagging: a record left by a worker that stopped; asking WeChat", "account", it.req.Account, "key", it.key)
			if missing := t.ask(api, tagID, []*item{it}); len(missing) > 0 {
				t.call(api, tagID, missing)
			}
			return
		}
	}
	_ = it.msg.NakWithDelay(t.o.RetryBase) // free, or taken by another meanwhile: claimed anew
}

// call tags chunk (1 to 50 people whose records this process holds) and
// settles each by WeChat's answer.
func (t *Tagger) call(api *wechatapi.Client, tagID int, chunk []*item) {
	openids := make([]string, len(chunk))
	for i, it := range chunk {
		openids[i] = it.req.OpenID
	}
	// The records are this process's while the call runs: another takes a
	// record over only after it has not moved for the lease's TTL.
	ctx, cancel := context.WithTimeout(t.work, t.o.Lease/2)
	err := api.TagUsers(ctx, tagID, openids)
	cancel()
	var we *wechatapi.Error
	isAnswer := errors.As(err, &we)
	switch {
	case err == nil:
		for _, it := range chunk {
			t.tagged(it)
		}
	case isAnswer && (we.Code == wechatapi.CodePersonTagLimit || we.Code == codeInvalidOpenID) && len(chunk) > 1:
		// WeChat refuses the whole call for one person: halves, until
		// the call is theirs alone and the others are tagged.
		t.call(api, tagID, chunk[:len(chunk)/2])
		t.call(api, tagID, chunk[len(chunk)/2:])
	case isAnswer && we.Code == wechatapi.CodePersonTagLimit:
		t.o.Logger.Info("tagging: the person has 20 tags, WeChat's most; not tagged", "account", chunk[0].req.Account, "tag", chunk[0].req.Tag)
		t.release(chunk)
		t.count(chunk[0], Limit)
		_ = chunk[0].msg.Ack()
	case isAnswer && we.Code == codeInvalidOpenID:
		t.o.Logger.Warn("tagging: WeChat does not know the OpenID for the account; not tagged", "account", chunk[0].req.Account)
		t.release(chunk)
		t.fail(chunk)
	case isAnswer || errors.Is(err, wechatapi.ErrNotSent):
		// Refused whole, or never sent: nobody was tagged.
		if isAnswer && we.Code == wechatapi.CodeInvalidTagID {
			t.forget(chunk[0].req.Account, chunk[0].req.Tag) // deleted in the console, or WeChat's hiccup: read it again
		}
		t.o.Logger.Warn("tagging: call refused; will try again", "account", chunk[0].req.Account, "tag", chunk[0].req.Tag, "people", len(chunk), "err", err)
		t.release(chunk)
		t.again(chunk, err)
	default:
		// No answer: WeChat may have tagged them. Ask before anything.
		t.o.Logger.Warn("tagging: call unanswered; asking WeChat who has the tag", "account", chunk[0].req.Account, "tag", chunk[0].req.Tag, "people", len(chunk), "err", err)
		missing := t.ask(api, tagID, chunk)
		t.release(missing)
		t.again(missing, err)
	}
}

// codeInvalidOpenID is WeChat's refusal of an OpenID that is not the
// account's: the whole call is refused, as for 45059.
const codeInvalidOpenID = 40003

// ask settles records whose call may have happened by asking WeChat
// (tags/getidlist): those who have the tag are tagged; those who have not
// are returned, their records still held. One WeChat cannot answer for
// keeps its record "sending", no longer renewed: whoever takes the
// request next asks again, once the lease is stale.
func (t *Tagger) ask(api *wechatapi.Client, tagID int, items []*item) (missing []*item) {
	for _, it := range items {
		ctx, cancel := context.WithTimeout(t.work, t.o.Lease/2)
		ids, err := api.UserTags(ctx, it.req.OpenID)
		cancel()
		switch {
		case err != nil:
			_, _ = it.held.Finish(t.work, t.sending) // stops renewing; the record stays as it was
			t.nak(it, Retried, max(t.o.Lease, t.backoff(it, t.o.RetryBase, 5*time.Minute)))
		case slices.Contains(ids, tagID):
			t.tagged(it)
		default:
			missing = append(missing, it)
		}
	}
	return missing
}

func (t *Tagger) tagged(it *item) {
	if _, err := it.held.Finish(t.work, taggedRecord); err != nil {
		// Tagged all the same: a request for the person asks WeChat
		// before calling, once the record is stale.
		t.o.Logger.Warn("tagging: record not marked tagged", "account", it.req.Account, "key", it.key, "err", err)
	}
	t.count(it, Tagged)
	_ = it.msg.Ack()
}

// release deletes the records of people nobody tagged.
func (t *Tagger) release(items []*item) {
	for _, it := range items {
		if err := it.held.Release(t.work); err != nil {
			t.o.Logger.Warn("tagging: record not released; it will be settled by asking", "account", it.req.Account, "key", it.key, "err", err)
		}
		it.held = nil
	}
}

// maxAttempts bounds the deliveries of a request WeChat refuses with an
// errcode that does not pass by waiting (45159 included: it comes and
// goes): then it is failed. 45009, -1 and no answer are waited out.
const maxAttempts = 10

// again sends requests nobody was tagged for back to the queue after a
// back-off, or fails them after maxAttempts.
func (t *Tagger) again(items []*item, err error) {
	var we *wechatapi.Error
	isAnswer := errors.As(err, &we)
	for _, it := range items {
		switch {
		case isAnswer && we.Code == wechatapi.CodeDailyQuota:
			t.nak(it, Quota, t.backoff(it, 60*t.o.RetryBase, 30*time.Minute))
		case isAnswer && we.Code != wechatapi.CodeSystemBusy && deliveries(it.msg) >= maxAttempts:
			t.o.Logger.Warn("tagging: refused every attempt; given up", "account", it.req.Account, "tag", it.req.Tag, "attempts", maxAttempts, "err", err)
			t.fail([]*item{it})
		default:
			t.nak(it, Retried, t.backoff(it, t.o.RetryBase, 5*time.Minute))
		}
	}
}

func (t *Tagger) fail(items []*item) {
	for _, it := range items {
		t.count(it, Failed)
		_ = it.msg.Term()
	}
}

func (t *Tagger) nak(it *item, outcome string, wait time.Duration) {
	t.count(it, outcome)
	_ = it.msg.NakWithDelay(wait)
}

func (t *Tagger) count(it *item, outcome string) {
	t.outcomes.WithLabelValues(it.req.Account, outcome).Inc()
}

// backoff is the wait after the request's delivery n: base doubling, at
// most ceiling.
func (t *Tagger) backoff(it *item, base, ceiling time.Duration) time.Duration {
	return min(base<<min(deliveries(it.msg)-1, 16), ceiling)
}

func deliveries(m jetstream.Msg) int {
	if md, err := m.Metadata(); err == nil && md.NumDelivered > 0 {
		return int(md.NumDelivered)
	}
	return 1
}

// inProgress keeps the requests from going to another worker while this
// one works on them.
func (t *Tagger) inProgress(items []*item) (stop func()) {
	done := make(chan struct{})
	go func() {
		tk := time.NewTicker(t.o.AckWait / 3)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				for _, it := range items {
					_ = it.msg.InProgress() // an acknowledged one refuses, locally
				}
			}
		}
	}()
	return func() { close(done) }
}

func idKey(account, tag string) string { return account + "\x00" + tag }

// tagID is the id of the account's tag: from memory, else from tags/get,
// else made by tags/create (45157: another process made it meanwhile,
// read again).
func (t *Tagger) tagID(api *wechatapi.Client, account, tag string) (int, error) {
	t.mu.Lock()
	id, ok := t.ids[idKey(account, tag)]
	t.mu.Unlock()
	if ok {
		return id, nil
	}
	ctx, cancel := context.WithTimeout(t.work, 10*time.Second)
	defer cancel()
	if id, ok, err := t.readTags(ctx, api, account, tag); ok || err != nil {
		return id, err
	}
	created, err := api.CreateTag(ctx, tag)
	var we *wechatapi.Error
	if errors.As(err, &we) && we.Code == wechatapi.CodeTagNameInvalid {
		if id, ok, err := t.readTags(ctx, api, account, tag); ok || err != nil {
			return id, err
		}
	}
	if err != nil {
		return 0, err
	}
	t.o.Logger.Info("tagging: tag created", "account", account, "tag", tag, "tag_id", created.ID)
	t.mu.Lock()
	t.ids[idKey(account, tag)] = created.ID
	t.mu.Unlock()
	return created.ID, nil
}

// readTags keeps every tag of the account that tags/get lists, and says
// whether tag is among them.
func (t *Tagger) readTags(ctx context.Context, api *wechatapi.Client, account, tag string) (int, bool, error) {
	list, err := api.Tags(ctx)
	if err != nil {
		return 0, false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tg := range list {
		t.ids[idKey(account, tg.Name)] = tg.ID
	}
	id, ok := t.ids[idKey(account, tag)]
	return id, ok, nil
}

func (t *Tagger) forget(account, tag string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.ids, idKey(account, tag))
}
