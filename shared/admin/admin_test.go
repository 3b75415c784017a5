package admin

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestEndpoints(t *testing.T) {
	var readyErr error
	reg := NewRegistry()
	srv := httptest.NewServer(NewMux(Options{Gatherer: reg, Ready: func() error { return readyErr }}))
	defer srv.Close()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d while ready", code)
	}
	readyErr = errors.New("nats: RECONNECTING")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "RECONNECTING") {
		t.Errorf("/readyz = %d %q while not ready", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
		t.Errorf("/metrics = %d, missing runtime or process metrics", code)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestProbe(t *testing.T) {
	var readyErr error
	srv := httptest.NewServer(NewMux(Options{Gatherer: NewRegistry(), Ready: func() error { return readyErr }}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if err := Probe(addr, time.Second); err != nil {
		t.Errorf("ready process: %v", err)
	}
	readyErr = errors.New("nats: CLOSED")
	if err := Probe(addr, time.Second); err == nil || !strings.Contains(err.Error(), "CLOSED") {
		t.Errorf("unready process: %v", err)
	}
	srv.Close()
	if err := Probe(addr, time.Second); err == nil {
		t.Error("closed port probed healthy")
	}
	if err := Probe("nonsense", time.Second); err == nil {
		t.Error("bad address accepted")
	}
}

func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		srv := httptest.NewServer(NewMux(Options{Gatherer: NewRegistry(), Pprof: on}))
		resp, err := http.Get(srv.URL + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if (resp.StatusCode == 200) != on {
			t.Errorf("pprof=%v: /debug/pprof/ = %d", on, resp.StatusCode)
		}
		srv.Close()
	}
}

func TestRequireTokenOrSession(t *testing.T) {
	h := RequireTokenOrSession("s3cret", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	cookie := &http.Cookie{Name: SessionCookie, Value: SessionValue("s3cret")}
	tests := []struct {
		name, method string
		bearer       string
		cookie       *http.Cookie
		want         int
	}{
		{"bearer", "POST", "s3cret", nil, 204},
		{"cookie on GET", "GET", "", cookie, 204},
		{"cookie on POST", "POST", "", cookie, 401},
		{"wrong cookie", "GET", "", &http.Cookie{Name: SessionCookie, Value: SessionValue("other")}, 401},
		{"the token as cookie", "GET", "", &http.Cookie{Name: SessionCookie, Value: "s3cret"}, 401},
		{"nothing", "GET", "", nil, 401},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, "/api/qrcodes", nil)
		if tt.bearer != "" {
			r.Header.Set("Authorization", "Bearer "+tt.bearer)
		}
		if tt.cookie != nil {
			r.AddCookie(tt.cookie)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, w.Code, tt.want)
		}
	}
	if strings.Contains(SessionValue("s3cret"), "s3cret") {
		t.Error("the session value holds the token")
	}
}
