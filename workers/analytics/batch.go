package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// item is one record of a batch with its stream sequence and how often it
// has been delivered (more than once: an earlier attempt may have written
// some of its effects already).
type item struct {
	seq       uint64
	delivered uint64
	rec       Record
}

// sceneCache remembers the last value and revision this process wrote for
// each scene, so that a batch updates a scene with one pipelined
// compare-and-set instead of a read and a write. A stale entry (another
// replica wrote since) fails the compare and is read again: the store stays
// the only truth.
type sceneCache struct {
	docs map[string]cachedDoc
	// claimed holds person claims known to exist in the store. Claims are
	// never deleted, so a first delivery whose claim is here is not the
	// person's first scan, with no write needed. Redeliveries always ask
	// the store: the claim may be their own from an earlier attempt.
	claimed map[string]struct{}
}

const maxClaimsCached = 500_000

func (c *sceneCache) knownClaim(key string) bool {
	_, ok := c.claimed[key]
	return ok
}

func (c *sceneCache) addClaim(key string) {
	if c.claimed == nil || len(c.claimed) >= maxClaimsCached {
		c.claimed = make(map[string]struct{})
	}
	c.claimed[key] = struct{}{}
}

type cachedDoc struct {
	doc sceneDoc
	rev uint64
}

const maxCachedScenes = 100_000

func (c *sceneCache) get(scene string) (cachedDoc, bool) {
	d, ok := c.docs[scene]
	return d, ok
}

func (c *sceneCache) put(scene string, d cachedDoc) {
	if c.docs == nil || len(c.docs) >= maxCachedScenes {
		c.docs = make(map[string]cachedDoc)
	}
	c.docs[scene] = d
}

// applyBatch applies records exactly once, like Apply, but pipelines the
// KV writes: the person claims, then one compare-and-set per scene, then
// the follow records. An unsubscribe ends a segment: it is applied, alone,
// after the follows before it and before any after it, so that a person
// who follows, unfollows and follows again within one batch (a backlog
// drained) is attributed in order. The batch is in stream order.
// It returns how many unsubscribes had no follow to attribute.
func (s *Store) applyBatch(ctx context.Context, items []item, ackFloor uint64, cache *sceneCache) (unattributed int, err error) {
	for len(items) > 0 {
		n := slices.IndexFunc(items, func(it item) bool { return it.rec.Kind == KindUnsubscribe })
		scans := items
		if n >= 0 {
			scans = items[:n]
		}
		if err := s.applyScans(ctx, scans, ackFloor, cache); err != nil {
			return unattributed, err
		}
		if n < 0 {
			break
		}
		it := items[n]
		applied, err := s.Apply(ctx, it.seq, it.rec, ackFloor)
		if err != nil {
			return unattributed, err
		}
		if !applied && it.delivered == 1 {
			unattributed++
		}
		items = items[n+1:]
	}
	return unattributed, nil
}

// applyScans applies subscribe and scan records, pipelined.
func (s *Store) applyScans(ctx context.Context, items []item, ackFloor uint64, cache *sceneCache) error {
	if len(items) == 0 {
		return nil
	}
	first, err := s.claimBatch(ctx, items, cache)
	if err != nil {
		return err
	}
	if err := s.updateScenes(ctx, items, first, ackFloor, cache); err != nil {
		return err
	}
	// Follow records, idempotent: safe to write again after a crash.
	var puts []jetstream.PubAckFuture
	for _, it := range items {
		if it.rec.Kind == KindSubscribe {
			f, err := s.js.PublishMsgAsync(&nats.Msg{Subject: s.prefix + "f." + person(it.rec.Account, it.rec.OpenID), Data: []byte(it.rec.Scene)})
			if err != nil {
				return fmt.Errorf("follow: %w", err)
			}
			puts = append(puts, f)
		}
	}
	_, errs, err := waitAll(ctx, puts)
	if err == nil {
		err = firstErr(errs)
	}
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	return nil
}

// claimBatch claims each (scene, person) of the batch's scans and reports
// which records are the person's first on their scene.
func (s *Store) claimBatch(ctx context.Context, items []item, cache *sceneCache) ([]bool, error) {
	first := make([]bool, len(items))
	type claim struct {
		idx int
		key string
	}
	var claims []claim
	var futs []jetstream.PubAckFuture
	seen := map[string]bool{}
	for i, it := range items {
		if it.rec.Kind != KindScan && it.rec.Kind != KindSubscribe {
			continue
		}
		if it.rec.Scene == "" {
			return nil, fmt.Errorf("scan record %d without scene", it.seq)
		}
		key := claimKey(it.rec)
		if seen[key] {
			continue // the same person again in this batch: the earlier record claims
		}
		seen[key] = true
		if it.delivered == 1 && cache.knownClaim(key) {
			continue
		}
		f, err := s.js.PublishMsgAsync(&nats.Msg{Subject: s.prefix + key, Data: []byte(strconv.FormatUint(it.seq, 10))},
			jetstream.WithExpectLastSequencePerSubject(0))
		if err != nil {
			return nil, fmt.Errorf("claim person: %w", err)
		}
		claims = append(claims, claim{i, key})
		futs = append(futs, f)
	}
	_, errs, err := waitAll(ctx, futs)
	if err != nil {
		return nil, fmt.Errorf("claim person: %w", err)
	}
	for n, c := range claims {
		if errs[n] == nil || isWrongLastSequence(errs[n]) {
			cache.addClaim(c.key)
		}
		switch err := errs[n]; {
		case err == nil:
			first[c.idx] = true
		case !isWrongLastSequence(err):
			return nil, fmt.Errorf("claim person: %w", err)
		case items[c.idx].delivered > 1:
			// Claimed before: by this very record in an earlier attempt?
			e, err := s.kv.Get(ctx, c.key)
			if err != nil {
				return nil, fmt.Errorf("claim person: %w", err)
			}
			first[c.idx] = string(e.Value()) == strconv.FormatUint(items[c.idx].seq, 10)
		}
	}
	return first, nil
}

// updateScenes folds the batch's scans into their scenes' totals.
func (s *Store) updateScenes(ctx context.Context, items []item, first []bool, ackFloor uint64, cache *sceneCache) error {
	byScene := map[string][]int{}
	var order []string
	for i, it := range items {
		if it.rec.Kind != KindScan && it.rec.Kind != KindSubscribe {
			continue
		}
		if _, ok := byScene[it.rec.Scene]; !ok {
			order = append(order, it.rec.Scene)
		}
		byScene[it.rec.Scene] = append(byScene[it.rec.Scene], i)
	}
	type write struct {
		scene string
		doc   sceneDoc
	}
	var writes []write
	var futs []jetstream.PubAckFuture
	for _, scene := range order {
		c, ok := cache.get(scene)
		if !ok {
			e, err := s.kv.Get(ctx, sceneKey(scene))
			switch {
			case err == nil:
				if err := json.Unmarshal(e.Value(), &c.doc); err != nil {
					return fmt.Errorf("scene %q: corrupt totals: %w", scene, err)
				}
				c.rev = e.Revision()
			case !errors.Is(err, jetstream.ErrKeyNotFound):
				return fmt.Errorf("scene totals: %w", err)
			}
		}
		d := c.doc
		d.Applied = slices.Clone(d.Applied)
		if !fold(&d, scene, c.rev == 0, items, byScene[scene], first, ackFloor) {
			continue
		}
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		f, err := s.js.PublishMsgAsync(&nats.Msg{Subject: s.prefix + sceneKey(scene), Data: b}, jetstream.WithExpectLastSequencePerSubject(c.rev))
		if err != nil {
			return fmt.Errorf("scene totals: %w", err)
		}
		writes = append(writes, write{scene, d})
		futs = append(futs, f)
	}
	acks, errs, err := waitAll(ctx, futs)
	if err != nil {
		return fmt.Errorf("scene totals: %w", err)
	}
	for n, w := range writes {
		if errs[n] == nil {
			cache.put(w.scene, cachedDoc{doc: w.doc, rev: acks[n].Sequence})
			continue
		}
		if !isWrongLastSequence(errs[n]) {
			return fmt.Errorf("scene totals: %w", errs[n])
		}
		// Someone else wrote the scene: read, fold and compare-and-set
		// until it takes.
		delete(cache.docs, w.scene)
		if _, err := s.updateSync(ctx, w.scene, items, byScene[w.scene], first, ackFloor); err != nil {
			return err
		}
	}
	return nil
}

// updateSync is the read-fold-write loop for one scene: compare-and-set
// until it takes, so concurrent consumers never lose an increment. It
// reports whether any record was new to the scene.
func (s *Store) updateSync(ctx context.Context, scene string, items []item, idx []int, first []bool, ackFloor uint64) (bool, error) {
	key := sceneKey(scene)
	for {
		var d sceneDoc
		var rev uint64
		e, err := s.kv.Get(ctx, key)
		switch {
		case err == nil:
			if err := json.Unmarshal(e.Value(), &d); err != nil {
				return false, fmt.Errorf("scene %q: corrupt totals: %w", scene, err)
			}
			rev = e.Revision()
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return false, fmt.Errorf("scene totals: %w", err)
		}
		if !fold(&d, scene, rev == 0, items, idx, first, ackFloor) {
			return false, nil
		}
		b, err := json.Marshal(d)
		if err != nil {
			return false, err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, b)
		} else {
			_, err = s.kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return true, nil
		}
		if !isConflict(err) {
			return false, fmt.Errorf("scene totals: %w", err)
		}
	}
}

// fold applies the records idx of items that d has not applied yet, and
// reports whether any was new.
func fold(d *sceneDoc, scene string, fresh bool, items []item, idx []int, first []bool, ackFloor uint64) bool {
	changed := false
	for _, i := range idx {
		it := items[i]
		if slices.Contains(d.Applied, it.seq) {
			continue
		}
		if !changed {
			d.Applied = slices.DeleteFunc(d.Applied, func(s uint64) bool { return s <= ackFloor })
		}
		changed = true
		if fresh && d.Scene == "" {
			d.Scene, d.FirstSeq, d.FirstSeen = scene, it.seq, it.rec.Received
		}
		if it.seq < d.FirstSeq {
			d.FirstSeq = it.seq
		}
		if it.rec.Received.Before(d.FirstSeen) {
			d.FirstSeen = it.rec.Received
		}
		if it.rec.Received.After(d.LastSeen) {
			d.LastSeen = it.rec.Received
		}
		switch it.rec.Kind {
		case KindUnsubscribe:
			d.Unfollows++
		case KindSubscribe:
			d.Scans++
			d.SubscribeScans++
			d.NewFollowers++
		default:
			d.Scans++
			d.ScanScans++
		}
		if first[i] {
			d.UniquePeople++
		}
		d.Applied = append(d.Applied, it.seq)
	}
	if over := len(d.Applied) - maxApplied; over > 0 {
		// Only a record stuck below all of these (never acked, never
		// quarantined) keeps the ack floor from pruning them; the list
		// must not grow past what one KV value can hold meanwhile.
		slices.Sort(d.Applied)
		d.Applied = slices.Delete(d.Applied, 0, over)
	}
	return changed
}

// maxApplied bounds a scene's list of applied sequences (about 10 bytes
// each in the stored JSON). The consumer holds at most 4 batches unacked,
// and quarantines records that keep failing, so the ack floor moves and
// the list normally holds a few hundred.
const maxApplied = 20_000

func claimKey(r Record) string {
	return "u." + sceneKey(r.Scene)[2:] + "." + person(r.Account, r.OpenID)
}

// waitAll waits for every publish and returns each one's ack or error; it
// fails only when ctx ends first.
func waitAll(ctx context.Context, futs []jetstream.PubAckFuture) ([]*jetstream.PubAck, []error, error) {
	acks := make([]*jetstream.PubAck, len(futs))
	errs := make([]error, len(futs))
	for i, f := range futs {
		select {
		case acks[i] = <-f.Ok():
		case errs[i] = <-f.Err():
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	return acks, errs, nil
}

// firstErr is the first non-nil error.
func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// isWrongLastSequence reports a failed compare: the key exists (create) or
// moved on (update). Replicated streams use another code for the same.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
