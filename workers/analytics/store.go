package analytics

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Totals are the durable counts of one scene.
type Totals struct {
	Scene          string `json:"scene"`
	Scans          int64  `json:"scans"`           // subscribe + scan
	SubscribeScans int64  `json:"subscribe_scans"` // scans by people not yet following
	ScanScans      int64  `json:"scan_scans"`      // scans by followers
	NewFollowers   int64  `json:"new_followers"`   // follows through this scene
	UniquePeople   int64  `json:"unique_people"`   // distinct OpenIDs that scanned it
	Unfollows      int64  `json:"unfollows"`       // unfollows of people who followed through it
	// FirstSeq is the stream sequence of the scene's first record; it orders
	// scenes the same way in every process (the metrics label bound).
	FirstSeq  uint64    `json:"first_seq"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// sceneDoc is the stored value: the totals plus the stream sequences
// applied to them that may still be redelivered. A redelivered record whose
// sequence is listed has been counted already.
type sceneDoc struct {
	Totals
	Applied []uint64 `json:"applied,omitempty"`
}

// Store keeps the totals in a JetStream KV bucket:
//
//	s.<scene>           the scene's sceneDoc
//	u.<scene>.<person>  a person seen on a scene (value: the claiming sequence)
//	f.<person>          the scene a current follower followed through
//
// Scenes are base64url-encoded and people are hashed, so keys stay valid
// and carry no OpenID in the clear.
type Store struct {
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	prefix  string    // the bucket's subject prefix, for pipelined writes
	created time.Time // when the bucket's stream was created, to notice a new one
}

// OpenStore creates or opens the totals bucket: for the analytics consumer,
// which owns it.
func OpenStore(ctx context.Context, js jetstream.JetStream, o StreamOptions) (*Store, error) {
	o = o.withDefaults()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketName,
		Description: "wxgate per-scene totals",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", BucketName, err)
	}
	return newStore(ctx, js, kv)
}

// OpenExistingStore opens the totals bucket without creating or changing
// it: for processes that only read the totals (the ingress's API), so that
// their settings (replicas) never override the consumer's.
func OpenExistingStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, BucketName)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", BucketName, err)
	}
	return newStore(ctx, js, kv)
}

func newStore(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (*Store, error) {
	s := &Store{kv: kv, js: js, prefix: "$KV." + BucketName + "."}
	created, err := s.bucketCreated(ctx)
	if err != nil {
		return nil, err
	}
	s.created = created
	return s, nil
}

func (s *Store) bucketCreated(ctx context.Context) (time.Time, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("kv %s: %w", BucketName, err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		return bs.StreamInfo().Created, nil
	}
	return time.Time{}, nil
}

// errBucketReplaced means the totals bucket was deleted and made again
// since the store opened it: watches of the old one see nothing new.
var errBucketReplaced = errors.New("totals bucket replaced")

// checkBucket reports whether the bucket the store opened is still there.
func (s *Store) checkBucket(ctx context.Context) error {
	created, err := s.bucketCreated(ctx)
	if err != nil {
		return err
	}
	if !created.Equal(s.created) {
		return errBucketReplaced
	}
	return nil
}

func sceneKey(scene string) string { return "s." + base64.RawURLEncoding.EncodeToString([]byte(scene)) }

func person(account, openid string) string {
	h := sha256.Sum256([]byte(account + "\x00" + openid))
	return hex.EncodeToString(h[:16])
}

// Apply folds the record with stream sequence seq into the totals, exactly
// once however often it is redelivered. ackFloor is the consumer's ack
// floor: sequences at or below it can never come again, so they are
// forgotten. It reports what the record changed, for metrics.
func (s *Store) Apply(ctx context.Context, seq uint64, r Record, ackFloor uint64) (applied bool, err error) {
	switch r.Kind {
	case KindSubscribe, KindScan:
		if r.Scene == "" {
			return false, errors.New("scan record without scene")
		}
		first, err := s.claimPerson(ctx, r, seq)
		if err != nil {
			return false, err
		}
		applied, err = s.updateSync(ctx, r.Scene, []item{{seq: seq, rec: r}}, []int{0}, []bool{first}, ackFloor)
		if err != nil {
			return false, err
		}
		if r.Kind == KindSubscribe {
			// Idempotent, so it is safe to redo after a crash.
			if _, err := s.kv.Put(ctx, "f."+person(r.Account, r.OpenID), []byte(r.Scene)); err != nil {
				return applied, fmt.Errorf("follow: %w", err)
			}
		}
		return applied, nil
	case KindUnsubscribe:
		fkey := "f." + person(r.Account, r.OpenID)
		e, err := s.kv.Get(ctx, fkey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, nil // followed without a scene, or counted already
		}
		if err != nil {
			return false, fmt.Errorf("follow: %w", err)
		}
		applied, err = s.updateSync(ctx, string(e.Value()), []item{{seq: seq, rec: r}}, []int{0}, []bool{false}, ackFloor)
		if err != nil {
			return false, err
		}
		// Forget the follow only after counting it, and only if no newer
		// follow replaced it meanwhile.
		if err := s.kv.Delete(ctx, fkey, jetstream.LastRevision(e.Revision())); err != nil && !isConflict(err) {
			return applied, fmt.Errorf("unfollow: %w", err)
		}
		return applied, nil
	}
	return false, fmt.Errorf("unknown record kind %q", r.Kind)
}

// claimPerson reports whether this record is the first of its person on its
// scene. The claim stores the claiming sequence, so a redelivery of the
// claiming record still sees itself as first.
func (s *Store) claimPerson(ctx context.Context, r Record, seq uint64) (bool, error) {
	key := claimKey(r)
	val := strconv.FormatUint(seq, 10)
	_, err := s.kv.Create(ctx, key, []byte(val))
	if err == nil {
		return true, nil
	}
	if !isConflict(err) {
		return false, fmt.Errorf("claim person: %w", err)
	}
	e, err := s.kv.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("claim person: %w", err)
	}
	return string(e.Value()) == val, nil
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// Scenes reads every scene's totals from the bucket.
func (s *Store) Scenes(ctx context.Context) ([]Totals, error) {
	w, err := s.kv.Watch(ctx, "s.>", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read totals: %w", err)
	}
	defer w.Stop()
	var out []Totals
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // all current values delivered
				return out, nil
			}
			var d sceneDoc
			if err := json.Unmarshal(e.Value(), &d); err != nil {
				return nil, fmt.Errorf("read totals %s: %w", e.Key(), err)
			}
			out = append(out, d.Totals)
		case <-ctx.Done():
			return nil, fmt.Errorf("read totals: %w", ctx.Err())
		}
	}
}

// Scene reads one scene's totals; ok is false when it has none.
func (s *Store) Scene(ctx context.Context, scene string) (t Totals, ok bool, err error) {
	e, err := s.kv.Get(ctx, sceneKey(scene))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Totals{}, false, nil
	}
	if err != nil {
		return Totals{}, false, fmt.Errorf("read totals: %w", err)
	}
	var d sceneDoc
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return Totals{}, false, fmt.Errorf("read totals: %w", err)
	}
	return d.Totals, true, nil
}
