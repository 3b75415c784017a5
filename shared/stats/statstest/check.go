package statstest

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/stats"
)

// Get fetches an API path (JSON into v), failing the test on any answer
// but 200.
func Get(t testing.TB, base, path string, v any) {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// CSV fetches a CSV answer and checks its type and byte-order mark.
func CSV(t testing.TB, base, path string) [][]string {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" || !bytes.HasPrefix(b, []byte("\uFEFF")) {
		t.Fatalf("GET %s: %d %s %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), b[:min(len(b), 20)])
	}
	rows, err := csv.NewReader(bytes.NewReader(b[3:])).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// Strings are the counts as a CSV row has them.
func Strings(c stats.Counts) []string {
	var out []string
	for _, n := range []int64{c.Scans, c.SubscribeScans, c.ScanScans, c.NewFollowers, c.UniquePeople, c.Unfollows, c.NetFollowers} {
		out = append(out, strconv.FormatInt(n, 10))
	}
	return out
}

// Check compares, through the API at base, with the model: every point
// of every series (days and hours) of every scene and account on first..
// last, the all-time totals (and labels), periods with the period before,
// and the groups.
func Check(t testing.TB, base string, m *Model, accounts []string, first, last stats.Date, label func(account, scene string) string) {
	t.Helper()
	for _, account := range accounts {
		q := "&account=" + account
		unis := map[string]string{"/api/series?": stats.AccountUID}
		for _, scene := range m.Scenes(account) {
			unis["/api/scenes/"+url.PathEscape(scene)+"/series?"] = stats.SceneUID(scene)
		}
		for path, uid := range unis {
			var page stats.SeriesPage
			Get(t, base, path+"step=day&from="+first.String()+"&to="+last.String()+q, &page)
			if len(page.Points) != int(last-first+1) {
				t.Fatalf("%s: %d points", path, len(page.Points))
			}
			for i, p := range page.Points {
				d := first + stats.Date(i)
				if want := m.Period(account, uid, d, d); p.Counts != want || p.Start != d.Start(m.Zone).Format(time.RFC3339) {
					t.Fatalf("%s%s day %s: %s %+v, want %+v", path, account, d, p.Start, p.Counts, want)
				}
			}
			for from := first; from <= last; from += stats.MaxHourDays {
				to := min(from+stats.MaxHourDays-1, last)
				Get(t, base, path+"step=hour&from="+from.String()+"&to="+to.String()+q, &page)
				i := 0
				for d := from; d <= to; d++ {
					for h := range d.Hours(m.Zone) {
						if want := m.Hour(account, uid, d, h); i >= len(page.Points) || page.Points[i].Counts != want {
							t.Fatalf("%s%s %s hour %d: %v, want %+v", path, account, d, h, page.Points[min(i, len(page.Points)-1)], want)
						}
						i++
					}
				}
			}
		}
		var all stats.ScenesPage
		Get(t, base, "/api/scenes?limit=1000"+q, &all)
		for _, s := range all.Scenes {
			if want := m.All(account, stats.SceneUID(s.Scene)); s.Counts() != want || s.Label != label(account, s.Scene) {
				t.Errorf("%s all time %s: %+v %q, want %+v %q", account, s.Scene, s.Counts(), s.Label, want, label(account, s.Scene))
			}
		}
		n := last - first
		for _, p := range [][2]stats.Date{{first, last}, {last - 6, last}, {first + n/3, last - n/4}, {last, last}, {first + 3, first + n/2}} {
			from, to := p[0], p[1]
			pf, pt := from-(to-from+1), from-1
			var page stats.ScenesPage
			Get(t, base, "/api/scenes?limit=1000&compare=previous&from="+from.String()+"&to="+to.String()+q, &page)
			if len(page.Scenes) < len(m.Scenes(account)) {
				t.Fatalf("%s %s..%s: %d scenes listed", account, from, to, len(page.Scenes))
			}
			for _, s := range page.Scenes {
				uid := stats.SceneUID(s.Scene)
				if want, prev := m.Period(account, uid, from, to), m.Period(account, uid, pf, pt); s.Counts() != want || s.Previous == nil || *s.Previous != prev {
					t.Fatalf("%s %s..%s %s: %+v (previous %+v), want %+v (previous %+v)", account, from, to, s.Scene, s.Counts(), s.Previous, want, prev)
				}
			}
			var groups stats.GroupsPage
			Get(t, base, "/api/groups?compare=previous&from="+from.String()+"&to="+to.String()+q, &groups)
			var scans int64
			for _, g := range groups.Groups {
				uid := stats.GroupUID(g.Group)
				if want, prev := m.Period(account, uid, from, to), m.Period(account, uid, pf, pt); g.Counts != want || *g.Previous != prev {
					t.Fatalf("%s %s..%s group %q: %+v, want %+v", account, from, to, g.Group, g.Counts, want)
				}
				scans += g.Scans
			}
			if want := m.Period(account, stats.AccountUID, from, to).Scans; scans != want {
				t.Fatalf("%s %s..%s: the groups have %d scans, the account %d", account, from, to, scans, want)
			}
		}
	}
}

// CheckCSV compares the CSV of a period's scenes (with the one before) and
// of a scene's hours with their JSON.
func CheckCSV(t testing.TB, base, account, scene string, from, to stats.Date) {
	t.Helper()
	period := "&account=" + account + "&from=" + from.String() + "&to=" + to.String()
	var page stats.ScenesPage
	Get(t, base, "/api/scenes?compare=previous"+period, &page)
	rows := CSV(t, base, "/api/scenes?compare=previous&format=csv"+period)
	if len(rows) != len(page.Scenes)+1 || rows[0][0] != "scene" || rows[0][3] != "scans" || rows[0][10] != "previous_scans" {
		t.Fatalf("csv: %v", rows)
	}
	for i, s := range page.Scenes {
		want := append([]string{s.Scene, s.Label, s.Group}, Strings(s.Counts())...)
		want = append(want, Strings(*s.Previous)...)
		if !slices.Equal(rows[i+1], want) {
			t.Errorf("csv row %d: %v, want %v", i+1, rows[i+1], want)
		}
	}
	var series stats.SeriesPage
	path := "/api/scenes/" + url.PathEscape(scene) + "/series?step=hour" + period
	Get(t, base, path, &series)
	rows = CSV(t, base, path+"&format=csv")
	if len(rows) != len(series.Points)+1 {
		t.Fatalf("series csv: %d rows for %d points", len(rows), len(series.Points))
	}
	for i, p := range series.Points {
		if want := append([]string{p.Start}, Strings(p.Counts)...); !slices.Equal(rows[i+1], want) {
			t.Fatalf("series csv row %d: %v, want %v", i+1, rows[i+1], want)
		}
	}
}
