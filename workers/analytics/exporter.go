package analytics

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// OtherScene is the label value for scenes past the label bound.
const OtherScene = "_other"

var (
	descScans = prometheus.NewDesc("wechat_scene_scans_total",
		"Deduplicated scans of parametric QR codes, by scene and kind (subscribe: not yet a follower; scan: a follower).",
		[]string{"scene", "kind"}, nil)
	descFollowers = prometheus.NewDesc("wechat_scene_new_followers_total",
		"People who followed the account through the scene's QR code.", []string{"scene"}, nil)
	descUnique = prometheus.NewDesc("wechat_scene_unique_people_total",
		"Distinct people who scanned the scene's QR code.", []string{"scene"}, nil)
	descUnfollows = prometheus.NewDesc("wechat_scene_unfollows_total",
		"Unfollows by people who had followed through the scene's QR code.", []string{"scene"}, nil)
	descOverflow = prometheus.NewDesc("wechat_scene_label_overflow_scenes",
		"Scenes past the label bound, counted under scene=\"_other\".", nil, nil)
	descScenes = prometheus.NewDesc("wechat_scene_scenes",
		"Scenes with recorded scans.", nil, nil)
)

// Exporter exports the durable per-scene totals as Prometheus metrics. It
// mirrors the totals bucket through a KV watch, so every process that runs
// one exports the same values, and a restarted process starts from the
// stored totals, not from zero. Dashboards take max() across instances.
//
// At most MaxScenes scene label values are exported: the scenes seen first
// (lowest first stream sequence), the same in every process. The rest are
// summed under scene="_other".
type Exporter struct {
	maxScenes int
	mu        sync.RWMutex
	scenes    map[string]Totals // by KV key
	watcher   jetstream.KeyWatcher
	cancel    context.CancelFunc
}

// NewExporter starts mirroring the store's totals.
func NewExporter(ctx context.Context, s *Store, maxScenes int, logger *slog.Logger) (*Exporter, error) {
	wctx, cancel := context.WithCancel(context.Background())
	w, err := s.kv.Watch(wctx, "s.>")
	if err != nil {
		cancel()
		return nil, err
	}
	e := &Exporter{maxScenes: maxScenes, scenes: map[string]Totals{}, watcher: w, cancel: cancel}
	initial := make(chan struct{})
	go e.mirror(initial, logger)
	select {
	case <-initial:
	case <-ctx.Done():
		e.Stop()
		return nil, ctx.Err()
	}
	return e, nil
}

func (e *Exporter) mirror(initial chan struct{}, logger *slog.Logger) {
	for entry := range e.watcher.Updates() {
		if entry == nil {
			close(initial)
			continue
		}
		e.mu.Lock()
		if entry.Operation() == jetstream.KeyValuePut {
			var d sceneDoc
			if err := json.Unmarshal(entry.Value(), &d); err != nil {
				logger.Error("scene totals: corrupt value", "key", entry.Key(), "err", err)
			} else {
				e.scenes[entry.Key()] = d.Totals
			}
		} else {
			delete(e.scenes, entry.Key())
		}
		e.mu.Unlock()
	}
}

// Stop ends the mirror.
func (e *Exporter) Stop() {
	_ = e.watcher.Stop()
	e.cancel()
}

// Describe implements prometheus.Collector.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descScans, descFollowers, descUnique, descUnfollows, descOverflow, descScenes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	e.mu.RLock()
	all := make([]Totals, 0, len(e.scenes))
	for _, t := range e.scenes {
		all = append(all, t)
	}
	e.mu.RUnlock()
	sort.Slice(all, func(i, j int) bool {
		if all[i].FirstSeq != all[j].FirstSeq {
			return all[i].FirstSeq < all[j].FirstSeq
		}
		return all[i].Scene < all[j].Scene
	})
	var other Totals
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
		emit(ch, t.Scene, t)
	}
	// _other always exists, so rate() over it never starts from a gap.
	emit(ch, OtherScene, other)
	ch <- prometheus.MustNewConstMetric(descOverflow, prometheus.GaugeValue, float64(overflow))
	ch <- prometheus.MustNewConstMetric(descScenes, prometheus.GaugeValue, float64(len(all)))
}

func emit(ch chan<- prometheus.Metric, scene string, t Totals) {
	ch <- prometheus.MustNewConstMetric(descScans, prometheus.CounterValue, float64(t.SubscribeScans), scene, KindSubscribe)
	ch <- prometheus.MustNewConstMetric(descScans, prometheus.CounterValue, float64(t.ScanScans), scene, KindScan)
	ch <- prometheus.MustNewConstMetric(descFollowers, prometheus.CounterValue, float64(t.NewFollowers), scene)
	ch <- prometheus.MustNewConstMetric(descUnique, prometheus.CounterValue, float64(t.UniquePeople), scene)
	ch <- prometheus.MustNewConstMetric(descUnfollows, prometheus.CounterValue, float64(t.Unfollows), scene)
}
