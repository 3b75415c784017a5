package analytics

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/bits"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/wechat"
)

var (
	descScans = prometheus.NewDesc("wechat_scene_scans_total",
		"Deduplicated scans of parametric QR codes, by account, scene and kind (subscribe: not yet a follower; scan: a follower).",
		[]string{"account", "scene", "kind"}, nil)
	descFollowers = prometheus.NewDesc("wechat_scene_new_followers_total",
		"People who followed the account through the scene's QR code.", []string{"account", "scene"}, nil)
	descUnique = prometheus.NewDesc("wechat_scene_unique_people_total",
		"Distinct people who scanned the scene's QR code.", []string{"account", "scene"}, nil)
	descUnfollows = prometheus.NewDesc("wechat_scene_unfollows_total",
		"Unfollows by people who had followed through the scene's QR code.", []string{"account", "scene"}, nil)

	// Scenes past the label bound are summed here, never under a scene
	// label: every real scene, whatever its name, keeps its own series.
	descScansOverflow = prometheus.NewDesc("wechat_scene_scans_overflow_total",
		"Scans of the account's scenes past the label bound (ANALYTICS_MAX_SCENES), by kind.", []string{"account", "kind"}, nil)
	descFollowersOverflow = prometheus.NewDesc("wechat_scene_new_followers_overflow_total",
		"New followers through the account's scenes past the label bound.", []string{"account"}, nil)
	descUniqueOverflow = prometheus.NewDesc("wechat_scene_unique_people_overflow_total",
		"Unique people of the account's scenes past the label bound, summed over those scenes.", []string{"account"}, nil)
	descUnfollowsOverflow = prometheus.NewDesc("wechat_scene_unfollows_overflow_total",
		"Attributed unfollows of the account's scenes past the label bound.", []string{"account"}, nil)
	descOverflow = prometheus.NewDesc("wechat_scene_label_overflow_scenes",
		"The account's scenes past the label bound, counted in the wechat_scene_*_overflow_total series.", []string{"account"}, nil)
	descScenes = prometheus.NewDesc("wechat_scene_scenes",
		"The account's scenes with recorded scans.", []string{"account"}, nil)
)

func describeScenes(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descScans, descFollowers, descUnique, descUnfollows,
		descScansOverflow, descFollowersOverflow, descUniqueOverflow, descUnfollowsOverflow, descOverflow, descScenes} {
		ch <- d
	}
}

// Exporter exports the durable per-scene totals as Prometheus metrics. It
// mirrors the totals bucket through a KV watch, so every process that runs
// one exports the same values, and a restarted process starts from the
// stored totals, not from zero. Dashboards take max() across instances.
//
// At most MaxScenes scenes per account get their own label values: the
// busiest, by their scans rounded down to a power of two (then the first
// seen): the same in every process, and a scene displaces another only
// when its scans double, not at every scan of two scenes neck and neck
// (each change moves the overflow series back, which Prometheus reads as
// a counter reset). The rest are summed in the wechat_scene_*_overflow_total
// series of the account.
type Exporter struct {
	maxScenes int
	mu        sync.RWMutex
	scenes    map[string]scene // by KV key
	watcher   jetstream.KeyWatcher
	cancel    context.CancelFunc
	lost      chan struct{} // closed when the watch ends
}

type scene struct {
	account string
	stats.Totals
}

// NewExporter starts mirroring the store's totals.
func NewExporter(ctx context.Context, s *stats.Store, maxScenes int, logger *slog.Logger) (*Exporter, error) {
	wctx, cancel := context.WithCancel(context.Background())
	w, err := s.KV.Watch(wctx, "s.*.*") // an older version's s.<scene> are a rebuild's to replace
	if err != nil {
		cancel()
		return nil, err
	}
	e := &Exporter{maxScenes: maxScenes, scenes: map[string]scene{}, watcher: w, cancel: cancel, lost: make(chan struct{})}
	initial := make(chan struct{})
	go e.mirror(initial, logger)
	select {
	case <-initial:
	case <-e.lost:
		return nil, errors.New("scene totals watch ended before the initial values")
	case <-ctx.Done():
		e.Stop()
		return nil, ctx.Err()
	}
	return e, nil
}

func (e *Exporter) mirror(initial chan struct{}, logger *slog.Logger) {
	defer close(e.lost)
	for entry := range e.watcher.Updates() {
		if entry == nil {
			close(initial)
			continue
		}
		account, _, _ := strings.Cut(strings.TrimPrefix(entry.Key(), "s."), ".")
		e.mu.Lock()
		if entry.Operation() == jetstream.KeyValuePut && accounts.ValidID(account) {
			var d stats.SceneDoc
			if err := json.Unmarshal(entry.Value(), &d); err != nil {
				logger.Error("scene totals: corrupt value", "key", entry.Key(), "err", err)
			} else if wechat.SceneProblem(d.Scene) == "" {
				e.scenes[entry.Key()] = scene{account, d.Totals}
			}
		} else {
			delete(e.scenes, entry.Key())
		}
		e.mu.Unlock()
	}
}

// Lost is closed when the watch ended; after Stop, or by itself.
func (e *Exporter) Lost() <-chan struct{} { return e.lost }

// Stop ends the mirror.
func (e *Exporter) Stop() {
	_ = e.watcher.Stop()
	e.cancel()
}

// Describe implements prometheus.Collector.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) { describeScenes(ch) }

// Collect implements prometheus.Collector.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	e.mu.RLock()
	// The default account's series exist from the start, so that rate()
	// over them never starts from a gap.
	byAccount := map[string][]stats.Totals{accounts.DefaultID: nil}
	for _, s := range e.scenes {
		byAccount[s.account] = append(byAccount[s.account], s.Totals)
	}
	e.mu.RUnlock()
	for account, all := range byAccount {
		slices.SortFunc(all, func(a, b stats.Totals) int {
			return cmp.Or(-cmp.Compare(bits.Len64(uint64(a.Scans)), bits.Len64(uint64(b.Scans))),
				cmp.Compare(a.FirstSeq, b.FirstSeq), strings.Compare(a.Scene, b.Scene))
		})
		var other stats.Totals
		overflow := 0
		for i, t := range all {
			if i >= e.maxScenes {
				other.SubscribeScans += t.SubscribeScans
				other.ScanScans += t.ScanScans
				other.NewFollowers += t.NewFollowers
				other.UniquePeople += t.UniquePeople
				other.Unfollows += t.Unfollows
				overflow++
				continue
			}
			ch <- prometheus.MustNewConstMetric(descScans, prometheus.CounterValue, float64(t.SubscribeScans), account, t.Scene, KindSubscribe)
			ch <- prometheus.MustNewConstMetric(descScans, prometheus.CounterValue, float64(t.ScanScans), account, t.Scene, KindScan)
			ch <- prometheus.MustNewConstMetric(descFollowers, prometheus.CounterValue, float64(t.NewFollowers), account, t.Scene)
			ch <- prometheus.MustNewConstMetric(descUnique, prometheus.CounterValue, float64(t.UniquePeople), account, t.Scene)
			ch <- prometheus.MustNewConstMetric(descUnfollows, prometheus.CounterValue, float64(t.Unfollows), account, t.Scene)
		}
		// The overflow series exist whenever the account does.
		ch <- prometheus.MustNewConstMetric(descScansOverflow, prometheus.CounterValue, float64(other.SubscribeScans), account, KindSubscribe)
		ch <- prometheus.MustNewConstMetric(descScansOverflow, prometheus.CounterValue, float64(other.ScanScans), account, KindScan)
		ch <- prometheus.MustNewConstMetric(descFollowersOverflow, prometheus.CounterValue, float64(other.NewFollowers), account)
		ch <- prometheus.MustNewConstMetric(descUniqueOverflow, prometheus.CounterValue, float64(other.UniquePeople), account)
		ch <- prometheus.MustNewConstMetric(descUnfollowsOverflow, prometheus.CounterValue, float64(other.Unfollows), account)
		ch <- prometheus.MustNewConstMetric(descOverflow, prometheus.GaugeValue, float64(overflow), account)
		ch <- prometheus.MustNewConstMetric(descScenes, prometheus.GaugeValue, float64(len(all)), account)
	}
}
