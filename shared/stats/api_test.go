package stats

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/testutil/natstest"
)

// apiServer serves the API over real buckets on an embedded NATS; known
// accounts are default and second.
func apiServer(t *testing.T) (string, *Store) {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServer(t)))
	if err != nil {
		t.Fatal(err)
	}
	store, err := OpenStore(context.Background(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	h, err := API(APIOptions{Store: func(context.Context) (*Store, error) { return store, nil },
		Known: func(id string) bool { return id == "default" || id == "second" }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL, store
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Bad input is a 400 that names the problem; an unknown account, or an id
// that is a path trick, a 404 that never reaches a key.
func TestAPIBadInput(t *testing.T) {
	base, _ := apiServer(t)
	for _, c := range []struct {
		path string
		code int
		says string
	}{
		{"/api/scenes?from=2025-03-02&to=2025-03-01", 400, "from is after to"},
		{"/api/scenes?from=2025-3-1&to=2025-03-02", 400, `from: \"2025-3-1\" is not a date (YYYY-MM-DD)`},
		{"/api/scenes?from=2025-02-30&to=2025-03-02", 400, "is not a date"},
		{"/api/scenes?from=2025-03-01", 400, "from and to go together"},
		{"/api/scenes?from=2023-01-01&to=2025-01-01", 400, "the period spans 732 days; at most 731"},
		{"/api/scenes?from=2023-01-02&to=2025-01-01", 200, ""},
		{"/api/scenes?compare=previous", 400, "compare needs a period"},
		{"/api/scenes?from=2025-03-01&to=2025-03-02&compare=next", 400, "compare must be previous"},
		{"/api/scenes?sort=label", 400, "sort must be"},
		{"/api/scenes?format=xlsx", 400, "format must be json or csv"},
		{"/api/series?from=2025-03-01&to=2025-03-31&step=hour", 200, ""},
		{"/api/series?from=2025-03-01&to=2025-04-01&step=hour", 400, "step=hour spans at most 31 days; this period has 32"},
		{"/api/series?from=2025-03-01&to=2025-04-01&step=week", 400, "step must be day or hour"},
		{"/api/series", 400, "from and to are required"},
		{"/api/series?from=2025-03-01&to=2025-03-02&compare=previous", 400, "compare is for"},
		{"/api/scenes/" + strings.Repeat("z", 65) + "/series?from=2025-03-01&to=2025-03-02", 400, "scene must be 1 to 64 characters"},
		{"/api/groups", 400, "from and to are required"},
		{"/api/groups?from=2025-03-01&to=2025-03-02&format=csv", 200, "group,scans"},
		{"/api/scenes?account=other", 404, "no such account"},
		{"/api/scenes?account=..", 404, "no such account"},
		{"/api/scenes?account=a%2Fb", 404, "no such account"},
		{"/api/scenes?account=" + strings.Repeat("a", 33), 404, "no such account"},
		{"/api/scenes?account=Default", 404, "no such account"},
		{"/api/analytics?account=x.y", 404, "no such account"},
		{"/api/scenes?account=second", 200, `"scenes":[]`},
	} {
		code, body := get(t, base+c.path)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("GET %s = %d %s, want %d saying %q", c.path, code, body, c.code, c.says)
		}
	}
}

// The series of a scene never scanned are zeros, one point per step; a
// day of 25 hours (New York, the end of summer time) has 25 hour points,
// each starting at its own offset.
func TestSeriesPoints(t *testing.T) {
	base, store := apiServer(t)
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skip(err)
	}
	h, _ := API(APIOptions{Store: func(context.Context) (*Store, error) { return store, nil }, Zone: ny, Logger: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(h)
	defer srv.Close()
	var page SeriesPage
	code, body := get(t, srv.URL+"/api/series?from=2024-11-03&to=2024-11-03&step=hour")
	if err := json.Unmarshal([]byte(body), &page); code != 200 || err != nil || len(page.Points) != 25 {
		t.Fatalf("%d %s", code, body)
	}
	if page.Points[1].Start != "2024-11-03T01:00:00-04:00" || page.Points[2].Start != "2024-11-03T01:00:00-05:00" || page.TimeZone != "America/New_York" {
		t.Errorf("points %v %v", page.Points[1], page.Points[2])
	}
	code, body = get(t, base+"/api/scenes/never/series?from=2025-03-01&to=2025-03-03")
	if err := json.Unmarshal([]byte(body), &page); code != 200 || err != nil || len(page.Points) != 3 || page.Points[0].Start != "2025-03-01T00:00:00+08:00" {
		t.Fatalf("%d %s", code, body)
	}
}

// The new followers of each day, beside WeChat's (reconcile.Followers),
// are the account's day values', zero where it has none.
func TestFollowersPerDay(t *testing.T) {
	_, store := apiServer(t)
	ctx := context.Background()
	first, _ := ParseDate("2025-03-01")
	for i, n := range []int64{3, 0, 5} {
		if n == 0 {
			continue
		}
		d := &Day{Subscribe: n, Scan: 9}
		if _, err := store.Series.Put(ctx, DayKey("second", first+Date(i), AccountUID), d.Append(nil)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Followers(func(context.Context) (*Store, error) { return store, nil }).NewFollowers(ctx, "second", "2025-03-01", "2025-03-04")
	if err != nil || len(got) != 4 || got[0] != 3 || got[1] != 0 || got[2] != 5 || got[3] != 0 {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := Followers(func(context.Context) (*Store, error) { return store, nil }).NewFollowers(ctx, "second", "2025-03-04", "2025-03-01"); err == nil {
		t.Error("a period backwards was read")
	}
}
